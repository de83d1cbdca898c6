"""The shipped weights/: every checkpoint verifies against the manifest, loads and samples; damage is refused."""

import shutil

import numpy as np
import pytest

import cli
from bidm_ref.diffusion.generate import SampleConfig
from bidm_ref.loading.load import load_model
from bidm_ref.loading.packed import is_packed
from bidm_ref.loading.sampling import draw_images
from bidm_ref.storage.hashing import file_sha256
from bidm_ref.loading.shipped import MANIFEST, SHIPPED, SHIPPED_FILES, WEIGHTS_DIR, read_manifest, shipped_weights
from bidm_ref.storage.checkpoint import load_checkpoint


def test_manifest_lists_exactly_the_shipped_files():
    listed = read_manifest(WEIGHTS_DIR)
    assert sorted(listed) == sorted(SHIPPED_FILES)
    assert sorted(p.name for p in WEIGHTS_DIR.glob("*.h5") if p.name != "inception_fid.h5") == sorted(listed)
    for name, entry in listed.items():
        assert file_sha256(WEIGHTS_DIR / name) == entry["sha256"]
        assert (WEIGHTS_DIR / name).stat().st_size == entry["bytes"]


@pytest.mark.parametrize("method", sorted(SHIPPED))
def test_shipped_checkpoint_loads_and_samples(method):
    path = shipped_weights(method)
    assert is_packed(load_checkpoint(str(path))) == (method != "fp")
    model, config = load_model(str(path))
    images = draw_images(model, config, SampleConfig(n=2, steps=3, seed=0, batch_size=2), progress=False)
    assert images.shape == (2, 1, 32, 32)  # Fashion-MNIST images (the latent models' decoded by weights/ae_f4.h5)
    assert np.isfinite(images).all()
    assert images.std() > 0.05  # a real model output, not a constant


def test_damaged_shipped_file_is_refused(tmp_path):
    folder = tmp_path / "weights"
    shutil.copytree(WEIGHTS_DIR, folder, ignore=shutil.ignore_patterns("inception_fid.h5"))
    damaged = folder / SHIPPED["bidm"]
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=f"does not match .*{MANIFEST}.*git checkout"):
        load_model(str(damaged))


def test_cli_sample_defaults_to_the_packed_bidm_student(tmp_path, capsys):
    out = tmp_path / "samples.png"
    assert cli.main(["sample", "--n", "2", "--steps", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert SHIPPED["bidm"] in printed and str(out) in printed
    assert out.stat().st_size > 0


def test_cli_sample_refuses_weights_and_method_together(tmp_path, capsys):
    assert cli.main(["sample", "--weights", "x.h5", "--method", "fp", "--out", str(tmp_path / "a.png")]) == 2
    assert "either --weights" in capsys.readouterr().err
