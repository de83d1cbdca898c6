"""The FD-clf classifier: FD-checked backward, learns a separable fixture, FD-clf and score behave."""

from __future__ import annotations

import numpy as np
import pytest

from bidm_ref.metrics.classifier import (ClassifierConfig, FeatureClassifier, accuracy, classifier_outputs,
                                         classifier_score, confident_share, cross_entropy, fd_clf, load_classifier,
                                         outlier_shares, save_classifier, train_classifier, uniform_cross_entropy)
from bidm_ref.metrics.outliers import BLOB_SIZES, KINDS, outlier_images, synthetic_outliers
from fdcheck import assert_close, check_module, directional_fd


def test_classifier_backward_fd():
    rng = np.random.default_rng(0)
    model = FeatureClassifier(1, 3, rng=rng)
    check_module(model, [rng.standard_normal((2, 1, 8, 8))], model.forward, rng)


def test_cross_entropy_value_and_gradient():
    rng = np.random.default_rng(1)
    logits, labels = rng.standard_normal((4, 3)), np.array([0, 2, 1, 2])
    loss, grad = cross_entropy(logits, labels)
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert loss == pytest.approx(-np.mean(np.log(p[np.arange(4), labels])))
    v = rng.standard_normal(logits.shape)
    assert_close(directional_fd(lambda: cross_entropy(logits, labels)[0], logits, v, 1e-6), float((grad * v).sum()), "ce")


def test_uniform_cross_entropy_value_and_gradient():
    rng = np.random.default_rng(6)
    logits = rng.standard_normal((5, 4))
    loss, grad = uniform_cross_entropy(logits)
    log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    assert loss == pytest.approx(-log_p.mean())
    assert uniform_cross_entropy(np.zeros((3, 4)))[0] == pytest.approx(np.log(4))     # flat softmax: its minimum
    v = rng.standard_normal(logits.shape)
    assert_close(directional_fd(lambda: uniform_cross_entropy(logits)[0], logits, v, 1e-6), float((grad * v).sum()),
                 "uniform ce")


def test_synthetic_outliers_kinds_shares_blobs_and_determinism():
    x = synthetic_outliers(np.random.default_rng(0), 23, 2, 32)
    assert x.shape == (23, 2, 32, 32) and x.dtype == np.float32 and x.min() >= -1 and x.max() <= 1
    np.testing.assert_array_equal(x, synthetic_outliers(np.random.default_rng(0), 23, 2, 32))
    binary = outlier_images(np.random.default_rng(1), "binary", 4, 1, 32)
    assert set(np.unique(binary)) == {-1.0, 1.0}
    blobs = outlier_images(np.random.default_rng(2), "uniform blobs", 30, 1, 32)
    for image in blobs[:, 0]:                                                     # constant b x b blocks, b in 2, 4, 8
        sizes = [b for b in BLOB_SIZES if np.all(image == image[::b, ::b].repeat(b, 0).repeat(b, 1))]
        assert sizes and len(np.unique(image)) == (32 // max(sizes)) ** 2
    with pytest.raises(ValueError, match="divisible by 8"):
        synthetic_outliers(np.random.default_rng(0), 2, 1, 28)
    with pytest.raises(ValueError, match="unknown outlier kind"):
        outlier_images(np.random.default_rng(0), "pink", 2, 1, 32)
    assert len(KINDS) == 5


def test_outlier_exposure_makes_noise_unconfident_and_keeps_the_accuracy():
    images, labels = two_class_fixture(64, np.random.default_rng(2))
    test_images, test_labels = two_class_fixture(400, np.random.default_rng(3))
    noise = synthetic_outliers(np.random.default_rng(9), 200, 1, 32)
    top = {}
    for weight in (0.0, 0.5):
        cfg = ClassifierConfig(steps=60, batch_size=16, lr=3e-3, outlier_weight=weight)
        model, _ = train_classifier(images, labels, cfg, progress=False)
        assert accuracy(model, test_images, test_labels) > 0.9
        top[weight] = classifier_outputs(model, noise)[1].max(axis=1).mean()      # 0.5 is a flat softmax (K = 2)
    assert top[0.0] > 0.8 and top[0.5] < 0.6, top                                 # measured: 0.96 and 0.53
    assert set(outlier_shares(model, 1, 32, n=50)) == set(KINDS)


def two_class_fixture(n, rng):
    """Class 0: horizontal stripes, class 1: vertical stripes (random phase), plus noise."""
    labels = np.arange(n) % 2
    phase = rng.integers(0, 4, n)
    rows = (np.arange(32)[None, :] + phase[:, None]) % 4 < 2                    # [n, 32]
    stripes = np.where(labels[:, None, None] == 0, rows[:, :, None], rows[:, None, :])  # [n, 32, 32]
    images = np.where(stripes, 0.8, -0.8) + rng.normal(0, 0.1, (n, 32, 32))
    return images[:, None].astype(np.float32), labels


def test_save_and_load_round_trip(tmp_path):
    model = FeatureClassifier(1, 4, rng=np.random.default_rng(0))
    save_classifier(model, str(tmp_path / "clf.h5"), "fixture", 0.5)
    loaded = load_classifier(str(tmp_path / "clf.h5"))
    x = np.random.default_rng(1).standard_normal((2, 1, 32, 32)).astype(np.float32)
    np.testing.assert_array_equal(loaded.forward(x)[0], model.forward(x)[0])


def test_training_separates_classes_and_fd_clf_orders_sets():
    rng = np.random.default_rng(2)
    images, labels = two_class_fixture(64, rng)
    model, losses = train_classifier(images, labels, ClassifierConfig(steps=40, batch_size=16, lr=3e-3), progress=False)
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])
    test_images, test_labels = two_class_fixture(400, np.random.default_rng(3))
    assert accuracy(model, test_images, test_labels) > 0.9
    reference, other = test_images[:200], test_images[200:]
    more, more_labels = two_class_fixture(400, np.random.default_rng(4))
    one_class = more[more_labels == 0]
    noise = rng.uniform(-1, 1, reference.shape).astype(np.float32)
    fds = [fd_clf(model, reference, images) for images in (other, one_class, noise)]
    assert fds[0] < 0.01 * min(fds[1], fds[2]), fds
    assert classifier_score(model, reference) > classifier_score(model, one_class)


def test_confident_share_counts_images_above_the_threshold():
    rng = np.random.default_rng(5)
    model = FeatureClassifier(1, 10, rng=rng)
    images = rng.uniform(-1, 1, (6, 1, 32, 32)).astype(np.float32)
    model.head.params["weight"][...] = 0
    bias = model.head.params["bias"]
    bias[...] = 0                                                                 # p = 0.1 for every class
    assert confident_share(model, images) == 0.0
    bias[3] = np.log(0.9 * 9 / 0.1) + 0.01                                        # p(3) just above 0.9
    assert confident_share(model, images) == 1.0
    bias[3] = np.log(0.9 * 9 / 0.1) - 0.01                                        # just below
    assert confident_share(model, images) == 0.0
    assert confident_share(model, images, threshold=0.5) == 1.0
