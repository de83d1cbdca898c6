"""The FD-clf classifier: FD-checked backward, learns a separable fixture, FD-clf and score behave."""

from __future__ import annotations

import numpy as np
import pytest

from bidm_ref.metrics.classifier import (ClassifierConfig, FeatureClassifier, accuracy, classifier_score,
                                         confident_share, cross_entropy, fd_clf, load_classifier, save_classifier,
                                         train_classifier)
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
