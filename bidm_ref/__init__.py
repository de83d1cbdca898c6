"""bidm-ref: BiDM (fully binarized W1A1 diffusion models) in NumPy and Numba.

Importing the package sets the OpenMP environment default of `runtime.prepare_environment`
(before any subpackage loads NumPy); `runtime.configure` sets the thread counts.
"""

from .runtime import prepare_environment

prepare_environment()
