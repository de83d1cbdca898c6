"""Install bidm-ref: `pip install -e .[test]` (see README.md)."""
from setuptools import find_packages, setup

setup(
    name="bidm-ref",
    version="0.1.0",
    description="Reference implementation of BiDM (fully binarized W1A1 diffusion models) in NumPy and Numba",
    packages=find_packages(include=["bidm_ref", "bidm_ref.*"]),
    python_requires=">=3.10",
    install_requires=[
        "numpy>=1.26",
        "numba>=0.59",
        "scipy>=1.11",
        "pillow>=10",
        "h5py>=3.9",
        "tqdm>=4.60",
        "threadpoolctl>=3.1",
        "matplotlib>=3.7",
    ],
    extras_require={
        "test": ["pytest>=7", "hypothesis>=6.80", "dask[distributed]>=2024.1"],  # tests/test_dask.py runs a LocalCluster
        "dist": ["dask[distributed]>=2024.1"],  # cli.py sample|eval --workers K | --scheduler ADDRESS
        "torch": ["torch==2.13.0"],
    },
)
