"""`cli.py eval`: score a sample batch (.npz or image folder) against a reference set.

Dimensions: N samples, M reference images, H, W, C image (uint8 outside).

References: "<dataset>-test" / "<dataset>-train" (first `--ref-limit` images of a dataset
split, e.g. fashion-mnist-test) or an ADM-style .npz batch. Metrics: fid, sfid, pr, is (FID
Inception, evaluate.py; needs `cli.py fetch-inception` once) and fdclf (FD-clf, the classifier
score and the confident share of samples and reference, with an in-domain classifier checkpoint;
classifier.py). Both sets go through the networks in shards of evaluate.EVAL_SHARD images by `shard_map`
(this process, or Dask workers for `cli.py eval --workers K`: scaleout/); the classifier's outputs of
the shards are concatenated in shard order. Unknown metric names and samples whose channel count C differs from the
reference's are refused before any metric runs.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..data.datasets import DataConfig, channels_of, read_uint8
from ..data.images import from_uint8, load_image_folder_uint8, load_npz_batch
from .classifier import FeatureClassifier, classifier_outputs, features_frechet, load_classifier, share_above
from .evaluate import METRICS, Reference, ShardMap, compute_metrics, image_shards, npz_reference, serial_map
from .inception_score import inception_score

METRIC_NAMES = (*METRICS, "fdclf")


def load_samples(path: str) -> np.ndarray:
    """uint8 [N, H, W, C] from an .npz batch or an image folder."""
    return load_image_folder_uint8(path) if os.path.isdir(path) else load_npz_batch(path)


def dataset_reference(ref: str, data_dir: str | None, limit: int) -> Reference:
    """'<dataset>-<split>' -> a Reference of the split's first `limit` images (uint8 NHWC)."""
    name, _, split = ref.rpartition("-")
    cfg = DataConfig(name=name, data_dir=data_dir, split=split, limit=limit)
    return Reference(f"{ref}-{limit}", lambda: read_uint8(cfg, with_labels=False)[0].transpose(0, 2, 3, 1))


def reference_channels(ref: str) -> int:
    """Channels C of a reference: its data set's, or those of its .npz batch."""
    return int(load_npz_batch(ref).shape[3]) if ref.endswith(".npz") else channels_of(ref.rpartition("-")[0])


def uint8_classifier_outputs(images: np.ndarray, model: FeatureClassifier) -> tuple[np.ndarray, np.ndarray]:
    """classifier.classifier_outputs (features [n, F], probabilities [n, K]) of uint8 images [n, H, W, C]."""
    return classifier_outputs(model, from_uint8(images.transpose(0, 3, 1, 2)))   # images as [n, C, H, W]


def classifier_metrics(model: FeatureClassifier, real: np.ndarray, fake: np.ndarray, shard_map: ShardMap) -> dict:
    """FD-clf, the classifier score and the confident shares of uint8 samples `fake` [N, H, W, C] and `real` [M, ...]."""
    def outputs(images: np.ndarray, desc: str) -> tuple[np.ndarray, np.ndarray]:
        parts = shard_map(uint8_classifier_outputs, image_shards(images), (model,), desc)
        return np.concatenate([f for f, _ in parts]), np.concatenate([p for _, p in parts])  # [N, F], [N, K]

    real_features, real_probs = outputs(real, "classifier, reference")
    fake_features, fake_probs = outputs(fake, "classifier, samples")
    return {"fd_clf": features_frechet(real_features, fake_features), "clf_score": inception_score(fake_probs, splits=1)[0],
            "clf_confident": share_above(fake_probs), "clf_confident_reference": share_above(real_probs)}


def evaluate(samples_path: str, ref: str, metrics: list[str], inception: str, classifier: str | None,
             data_dir: str | None = None, ref_limit: int = 10000, cache_dir: str | None = None,
             shard_map: ShardMap = serial_map) -> dict:
    """All requested metrics as a JSON-ready dict."""
    unknown = sorted(set(metrics) - set(METRIC_NAMES))
    if unknown:
        raise ValueError(f"unknown metrics {unknown} in --metrics: choose from {', '.join(METRIC_NAMES)}")
    samples = load_samples(samples_path)                                         # [N, H, W, C]
    channels, ref_channels = int(samples.shape[3]), reference_channels(ref)
    if channels != ref_channels:
        raise ValueError(f"samples {samples_path} have {channels} channels, the reference {ref} has {ref_channels}: "
                         "pass samples and a --ref with the same channel count")
    reference = npz_reference(ref) if ref.endswith(".npz") else dataset_reference(ref, data_dir, ref_limit)
    inception_metrics = tuple(m for m in metrics if m != "fdclf")
    result: dict = {"samples": samples_path, "n_samples": int(samples.shape[0])}
    if inception_metrics:
        if not Path(inception).is_file():
            raise FileNotFoundError(f"Inception weights {inception} not found: run `python cli.py fetch-inception` "
                                    "or drop fid/sfid/pr/is from --metrics")
        result.update(compute_metrics(samples, reference, inception_metrics, inception, cache_dir, progress=True,
                                      shard_map=shard_map))
    if "fdclf" in metrics:
        if not classifier or not Path(classifier).is_file():
            raise FileNotFoundError(f"FD-clf classifier {classifier} not found: `cli.py ablate` trains one into "
                                    "OUT/classifier.h5; pass it with --classifier")
        result.update(classifier_metrics(load_classifier(classifier), reference.load(), samples, shard_map))
    return result
