"""A small in-domain classifier whose features give "FD-clf", a fast CI-sized stand-in for FID.

Dimensions: N batch, C image channels, 32x32 images, F = 64 feature size, K = 10 classes.

    x [N, C, 32, 32] -> conv3x3(C->32) GN SiLU avgpool2 -> conv3x3(32->64) GN SiLU avgpool2
      -> conv3x3(64->64) GN SiLU -> global mean over H, W = features [N, F] -> linear -> logits [N, K]
    loss = mean_N cross-entropy(softmax(logits), label)                       d logits = (softmax - onehot) / N
         + lambda * mean_M cross-entropy(uniform, softmax(logits of outliers)) d logits = lambda (softmax - 1/K) / M
    (Outlier Exposure, Hendrycks et al. 2019, eq. 1; M = N synthetic noise images per batch, metrics/outliers.py,
    lambda = ClassifierConfig.outlier_weight: a noise image then gets a flat softmax, not a confident class)

FD-clf is the Frechet distance between the features of two image sets; the "classifier score"
is exp(E_x KL(p(y|x) || p(y))) with this classifier's softmax (Inception Score's formula on an
in-domain classifier); the "confident share" is the fraction of images with max_k p(k|x) > 0.9
(read it beside the real images' share). Trained on the real images alone, this classifier was confident
on most noise (96% of +-1 noise), so it is trained with Outlier Exposure on synthetic noise (above):
`fit_classifier` records the confident share on held-out noise of each kind next to the test accuracy.
None of them is FID or IS: they are only comparable with each other, for the same classifier
weights (whose sha256 is reported with them).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from ..data.batches import BatchSampler
from ..data.datasets import DataConfig, load_labeled
from ..nn.attention import softmax
from ..nn.conv import Conv2d
from ..nn.groupnorm import GroupNorm
from ..nn.linear import Linear
from ..nn.module import Module
from ..nn.resample import avg_pool2x, avg_pool2x_backward
from ..storage.checkpoint import load_checkpoint, save_checkpoint
from ..train.adam import Adam, AdamConfig
from .frechet import frechet_distance
from .inception_score import inception_score
from .outliers import KINDS, outlier_images, synthetic_outliers

FEATURES = 64


class FeatureClassifier(Module):
    """Children conv1..3, norm1..3, head; forward(x) -> (logits, cache); `features(x)` for FD-clf."""

    def __init__(self, in_channels: int, num_classes: int = 10, *, rng: np.random.Generator) -> None:
        super().__init__()
        widths = [(in_channels, 32), (32, 64), (64, FEATURES)]
        self.convs = [self.add_child(f"conv{i + 1}", Conv2d(ci, co, 3, 1, 1, rng=rng)) for i, (ci, co) in enumerate(widths)]
        self.norms = [self.add_child(f"norm{i + 1}", GroupNorm(8, co)) for i, (_, co) in enumerate(widths)]
        self.head = self.add_child("head", Linear(FEATURES, num_classes, rng=rng))

    def trunk(self, x: np.ndarray) -> tuple[np.ndarray, list]:
        """x [N, C, 32, 32] -> features [N, F] and the caches of every stage."""
        caches = []
        h = x
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            h, c_conv = conv.forward(h)                                           # [N, Co, H, W]
            h, c_norm = norm.forward(h, silu=True)                                # [N, Co, H, W] SiLU(norm(h))
            pooled = i < len(self.convs) - 1
            shape = h.shape
            h = avg_pool2x(h) if pooled else h                                    # [N, Co, H/2, W/2]
            caches.append((c_conv, c_norm, pooled, shape))
        return h.mean(axis=(2, 3)), caches + [h.shape]                            # [N, F]

    def features(self, x: np.ndarray) -> np.ndarray:
        return self.trunk(x)[0]

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, tuple]:
        feats, c_trunk = self.trunk(x)                                            # [N, F]
        logits, c_head = self.head.forward(feats)                                 # [N, K]
        return logits, (c_trunk, c_head)

    def backward(self, dlogits: np.ndarray, cache: tuple) -> np.ndarray:
        c_trunk, c_head = cache
        *stages, last_shape = c_trunk
        dfeats = self.head.backward(dlogits, c_head)                              # [N, F]
        N, F, H, W = last_shape
        dh = np.broadcast_to(dfeats[:, :, None, None] / (H * W), last_shape).copy()  # [N, F, H, W]
        for (conv, norm), (c_conv, c_norm, pooled, shape) in zip(
            reversed(list(zip(self.convs, self.norms))), reversed(stages)
        ):
            dh = avg_pool2x_backward(dh, shape) if pooled else dh                 # [N, Co, H, W]
            dh = norm.backward(dh, c_norm)
            dh = conv.backward(dh, c_conv)                                        # [N, Ci, H, W]
        return dh


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """mean_N -log softmax(logits)[label] and d/d logits [N, K]."""
    p = softmax(logits.astype(np.float64))                                        # [N, K]
    n = logits.shape[0]
    loss = float(-np.mean(np.log(p[np.arange(n), labels] + 1e-300)))
    p[np.arange(n), labels] -= 1.0
    return loss, (p / n).astype(logits.dtype)                                     # [N, K]


def uniform_cross_entropy(logits: np.ndarray) -> tuple[float, np.ndarray]:
    """mean_M cross-entropy of softmax(logits) [M, K] against the uniform distribution, -mean_M mean_k log p_k,
    and d/d logits = (softmax - 1/K) / M."""
    p = softmax(logits.astype(np.float64))                                        # [M, K]
    m, k = logits.shape
    loss = float(-np.mean(np.log(p + 1e-300)))
    return loss, ((p - 1.0 / k) / m).astype(logits.dtype)                         # [M, K]


@dataclass(frozen=True)
class ClassifierConfig:
    steps: int = 1500
    batch_size: int = 64
    lr: float = 2e-3
    seed: int = 0
    outlier_weight: float = 0.5  # lambda of Outlier Exposure (the paper's 0.5); 0: the real images alone


def train_classifier(
    images: np.ndarray, labels: np.ndarray, cfg: ClassifierConfig, progress: bool = True
) -> tuple[FeatureClassifier, list[float]]:
    """Train on images [N, C, 32, 32] in [-1, 1] with int labels [N]; returns the model and the loss curve."""
    model = FeatureClassifier(images.shape[1], int(labels.max()) + 1, rng=np.random.default_rng([cfg.seed, 0]))
    sampler = BatchSampler(images, cfg.batch_size, cfg.seed)
    outlier_rng = np.random.default_rng([cfg.seed, 1])
    adam = Adam(AdamConfig(lr=cfg.lr))
    params, grads = dict(model.named_parameters()), dict(model.named_grads())
    losses = []
    for step in tqdm(range(cfg.steps), disable=not progress, unit="step"):
        idx = sampler.indices(step)                                               # [B]
        batch = images[idx]                                                       # [B, C, S, S]
        if cfg.outlier_weight:
            outliers = synthetic_outliers(outlier_rng, len(idx), images.shape[1], images.shape[2])  # [B, C, S, S]
            batch = np.concatenate([batch, outliers])                             # [2B, C, S, S]
        model.zero_grad()
        logits, cache = model.forward(batch)                                      # [B or 2B, K]
        loss, dlogits = cross_entropy(logits[: len(idx)], labels[idx])            # [B, K]
        if cfg.outlier_weight:
            loss_out, dlogits_out = uniform_cross_entropy(logits[len(idx):])      # [B, K]
            loss += cfg.outlier_weight * loss_out
            dlogits = np.concatenate([dlogits, cfg.outlier_weight * dlogits_out])  # [2B, K]
        model.backward(dlogits, cache)
        adam.step(params, grads)
        losses.append(loss)
    return model, losses


def outlier_shares(model: FeatureClassifier, channels: int, size: int, n: int = 1000, seed: int = 12345) -> dict:
    """The confident share on n held-out outliers of each kind (a seed training never uses): the validation of
    Outlier Exposure, {kind: share}."""
    rng = np.random.default_rng([seed, 2])
    return {kind: confident_share(model, outlier_images(rng, kind, n, channels, size)) for kind in KINDS}


def classifier_outputs(model: FeatureClassifier, images: np.ndarray, batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(features [N, F] float64, softmax probabilities [N, K]) of images [N, C, 32, 32] in [-1, 1]."""
    feats, probs = [], []
    for start in range(0, len(images), batch):
        f, _ = model.trunk(images[start : start + batch])                         # [b, F]
        logits, _ = model.head.forward(f)                                         # [b, K]
        feats.append(f.astype(np.float64))
        probs.append(softmax(logits.astype(np.float64)))
    return np.concatenate(feats), np.concatenate(probs)


def share_above(probs: np.ndarray, threshold: float = 0.9) -> float:
    """The fraction of rows of softmax probabilities [N, K] whose top probability exceeds `threshold`."""
    return float(np.mean(probs.max(axis=1) > threshold))


def confident_share(model: FeatureClassifier, images: np.ndarray, threshold: float = 0.9) -> float:
    """The fraction of images [N, C, 32, 32] whose top softmax probability exceeds `threshold`."""
    return share_above(classifier_outputs(model, images)[1], threshold)


def accuracy(model: FeatureClassifier, images: np.ndarray, labels: np.ndarray) -> float:
    _, probs = classifier_outputs(model, images)
    return float(np.mean(probs.argmax(axis=1) == labels))


def fd_clf(model: FeatureClassifier, images_a: np.ndarray, images_b: np.ndarray) -> float:
    """Frechet distance between the classifier features of two image sets ([N, C, 32, 32] in [-1, 1])."""
    return features_frechet(classifier_outputs(model, images_a)[0], classifier_outputs(model, images_b)[0])


def features_frechet(fa: np.ndarray, fb: np.ndarray) -> float:
    """Frechet distance between the Gaussians (mean, np.cov) of two feature sets [Na, F] and [Nb, F]."""
    return frechet_distance(fa.mean(0), np.cov(fa, rowvar=False), fb.mean(0), np.cov(fb, rowvar=False))


def classifier_score(model: FeatureClassifier, images: np.ndarray, splits: int = 1) -> float:
    """exp(E KL(p(y|x) || p(y))) with this classifier (Inception Score's formula; not IS)."""
    _, probs = classifier_outputs(model, images)
    return inception_score(probs, splits)[0]


def save_classifier(model: FeatureClassifier, path: str, dataset: str, accuracy_test: float,
                    validation: dict | None = None) -> None:
    """Write the classifier as a bidm-ckpt file (config names the dataset, test accuracy and `validation`)."""
    in_channels = model.convs[0].params["weight"].shape[1]
    num_classes = model.head.params["weight"].shape[0]
    config = {"classifier": {"in_channels": in_channels, "num_classes": num_classes, "dataset": dataset,
                             "test_accuracy": accuracy_test, **(validation or {})}}
    save_checkpoint(path, params=model.state_dict(), config=config)


def fit_classifier(data: DataConfig, cfg: ClassifierConfig, path: str, test_images: int | None = None,
                   progress: bool = True) -> dict:
    """Train on `data`'s labelled training split, validate on the first `test_images` of its test split (all
    with None) and on held-out outliers, save the classifier to `path`; returns the validation: test_accuracy,
    test_confident (the real images' confident share), outlier_confident {kind: share}, outlier_weight."""
    images, labels = load_labeled(data)
    if labels is None:
        raise ValueError(f"dataset {data.name} has no labels: the FD-clf classifier needs a labelled dataset")
    model, _ = train_classifier(images, labels, cfg, progress)
    test, test_labels = load_labeled(DataConfig(name=data.name, data_dir=data.data_dir, split="test", limit=test_images))
    validation = {"test_confident": confident_share(model, test),
                  "outlier_confident": outlier_shares(model, images.shape[1], images.shape[2]),
                  "outlier_weight": cfg.outlier_weight}
    accuracy_test = accuracy(model, test, test_labels)
    save_classifier(model, path, data.name, accuracy_test, validation)
    return {"test_accuracy": accuracy_test, **validation}


def load_classifier(path: str) -> FeatureClassifier:
    ckpt = load_checkpoint(path)
    if "classifier" not in ckpt.config:
        raise ValueError(f"{path} is not an FD-clf classifier checkpoint")
    cfg = ckpt.config["classifier"]
    model = FeatureClassifier(cfg["in_channels"], cfg["num_classes"], rng=np.random.default_rng(0))
    model.load_state_dict(ckpt.params)
    return model
