"""cli eval wiring: FD-clf on npz batches, dataset references, clear errors for missing weights."""

from __future__ import annotations

import numpy as np
import pytest

from bidm_ref.data.images import save_npz_batch
from bidm_ref.metrics.classifier import FeatureClassifier, save_classifier
from bidm_ref.metrics.run_eval import dataset_reference, evaluate
from test_trainer import write_idx_dataset


def test_fdclf_of_identical_batches_is_zero_and_noise_is_far(tmp_path):
    rng = np.random.default_rng(0)
    real = np.clip(rng.normal(0, 0.3, (80, 1, 32, 32)), -1, 1).astype(np.float32)
    save_npz_batch(real, tmp_path / "real.npz")
    save_npz_batch(rng.uniform(-1, 1, real.shape).astype(np.float32), tmp_path / "noise.npz")
    save_classifier(FeatureClassifier(1, 10, rng=rng), str(tmp_path / "clf.h5"), "fixture", 0.0)
    same = evaluate(str(tmp_path / "real.npz"), str(tmp_path / "real.npz"), ["fdclf"], "none.h5", str(tmp_path / "clf.h5"))
    noise = evaluate(str(tmp_path / "noise.npz"), str(tmp_path / "real.npz"), ["fdclf"], "none.h5", str(tmp_path / "clf.h5"))
    assert same["fd_clf"] == pytest.approx(0, abs=1e-6) and noise["fd_clf"] > 1e-3
    assert same["n_samples"] == 80


def test_dataset_reference_and_missing_weights(tmp_path):
    write_idx_dataset(tmp_path, n=12, split="t10k")
    ref = dataset_reference("fashion-mnist-test", str(tmp_path), 5)
    assert ref.load().shape == (5, 32, 32, 1) and ref.name == "fashion-mnist-test-5"
    save_npz_batch(np.zeros((2, 1, 32, 32), np.float32), tmp_path / "s.npz")
    with pytest.raises(FileNotFoundError, match="fetch-inception"):
        evaluate(str(tmp_path / "s.npz"), "fashion-mnist-test", ["fid"], str(tmp_path / "missing.h5"), None, str(tmp_path))
    with pytest.raises(FileNotFoundError, match="--classifier"):
        evaluate(str(tmp_path / "s.npz"), "fashion-mnist-test", ["fdclf"], "x", None, str(tmp_path))


def test_fid_on_fewer_than_1000_samples_carries_a_warning():
    from bidm_ref.metrics.evaluate import MIN_FID_SAMPLES, small_sample_warning

    assert "large small-sample bias" in small_sample_warning(64, ("fid", "pr"))
    assert "fid/sfid on 999 samples" in small_sample_warning(MIN_FID_SAMPLES - 1, ("fid", "sfid"))
    assert small_sample_warning(MIN_FID_SAMPLES, ("fid", "sfid")) is None
    assert small_sample_warning(8, ("pr", "is")) is None                          # no Frechet distance asked
