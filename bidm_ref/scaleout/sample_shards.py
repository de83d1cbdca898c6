"""`cli.py sample --workers K | --scheduler ADDRESS`: the images drawn in seeded shards on Dask workers, each shard
written as it arrives, a restarted run skipping the finished ones.

Dimensions: N images, B shard size (= --batch-size), C, H, W image.

Shard b is batch b of `cli.py sample`: images b*B .. min((b+1)*B, N) - 1, whose x_T and sampler noise come
from numpy's default_rng([seed, b]) (diffusion/generate.py) and which a latent model decodes alone
(loading/sampling.py). So a shard depends on (model, seed, b, B, sampler settings) only, never on the worker
count or on the order shards finish in, and the merged images equal those of `cli.py --threads 1 sample` in
one process byte for byte (the workers run one thread each: cluster.py). Each task samples on its own copy
of the model (a TBS student keeps the previous step's outputs in its mixer during a trajectory, bidm/tbs.py).

Shard folder `<--out without its suffix>.shards/` (samples.png -> samples.shards/):

    manifest.json      {"format": "bidm-sample-shards", "format_version": 1, "weights": path,
                        "weights_sha256": sha256 of the weights file, "ema": bool, "sample": SampleConfig's
                        fields, "shards": count}
    shard-000000.npz   "images" float32 [B, C, H, W] (not clipped) and "images_sha256" (storage/hashing.py)

Every file is written atomically (storage/atomic.py) by the client. A run that finds a manifest must match
it in every key but "weights" (the path; the sha256 decides), else a one-line ValueError names the first
differing key and the fix; shards whose file reads back with its sha256 and size are skipped, a missing or
damaged one is drawn again. Temp files left by a killed run are removed first.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from ..diffusion.generate import SampleConfig, batch_count
from ..loading.sampling import decoder_of, draw_batch
from ..models.autoencoder import Autoencoder
from ..models.unet import UNet
from ..storage.atomic import atomic_write, remove_stale_temps
from ..storage.hashing import arrays_mismatch, arrays_sha256, file_sha256
from .cluster import DaskMap, dask_client

FORMAT = "bidm-sample-shards"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
SHARD_NAME = "shard-{:06d}.npz"
IMAGES_KEY, DIGEST_KEY = "images", "images_sha256"
UNCHECKED_KEYS = ("weights",)  # a moved weights file resumes: its sha256 is compared


@dataclass(frozen=True)
class SamplingModel:
    """What a worker needs to draw a shard; scattered once to every worker."""

    model: UNet
    run_config: dict[str, Any]
    ae: Autoencoder | None  # the decoder of a latent model (loading.sampling.decoder_of)


def shard_folder(out: str | Path) -> Path:
    """The shard folder next to the grid `out`: its path without the suffix, plus ".shards"."""
    return Path(out).with_suffix(".shards")


def shard_sizes(cfg: SampleConfig) -> list[int]:
    """Images in each shard: B, ..., B, and the rest."""
    return [min(cfg.batch_size, cfg.n - b * cfg.batch_size) for b in range(batch_count(cfg))]


def make_manifest(weights: str, use_ema: bool, cfg: SampleConfig) -> dict[str, Any]:
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "weights": str(weights),
            "weights_sha256": file_sha256(weights), "ema": use_ema, "sample": asdict(cfg), "shards": batch_count(cfg)}


def first_difference(written: dict[str, Any], wanted: dict[str, Any]) -> tuple[str, Any, Any] | None:
    """(dotted key, written value, wanted value) of the first key in which two manifests differ, else None."""
    for key in sorted(set(written) | set(wanted)):
        if key in UNCHECKED_KEYS:
            continue
        old, new = written.get(key), wanted.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            inner = first_difference(old, new)
            if inner is not None:
                return (f"{key}.{inner[0]}", *inner[1:])
        elif old != new:
            return key, old, new
    return None


def open_shard_folder(folder: Path, manifest: dict[str, Any]) -> None:
    """Create `folder` with `manifest`, or check that the manifest it holds is this run's (module docstring)."""
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"shard folder {folder} is a file: move it, or pass another --out")
    path = folder / MANIFEST_NAME
    remove_stale_temps(folder)
    if not path.is_file():
        held = sorted(folder.iterdir()) if folder.is_dir() else []
        if held:
            raise FileExistsError(f"shard folder {folder} holds {len(held)} entries (e.g. {held[0].name}) but no "
                                  f"{MANIFEST_NAME}: empty it, or pass another --out")
        with atomic_write(path, "w") as handle:
            json.dump(manifest, handle, indent=2)
        return
    try:
        written = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{path} is unreadable ({type(err).__name__}): delete {folder} to start over") from None
    difference = first_difference(written, manifest)
    if difference is not None:
        key, old, new = difference
        raise ValueError(f"shard folder {folder} was written for {key} = {old!r}, this run has {new!r}: pass the "
                         f"same settings to resume it, or delete {folder} (or pass another --out) to start over")


def write_shard(folder: Path, b: int, images: np.ndarray) -> None:
    """shard-<b>.npz with images [B, C, H, W] and their sha256, atomically."""
    with atomic_write(folder / SHARD_NAME.format(b)) as handle:
        np.savez(handle, **{IMAGES_KEY: images, DIGEST_KEY: np.array(arrays_sha256({IMAGES_KEY: images}))})


def read_shard(folder: Path, b: int, size: int) -> np.ndarray | None:
    """Images [size, C, H, W] of a finished shard b, or None when its file is missing, damaged or of another size."""
    path = folder / SHARD_NAME.format(b)
    try:
        with np.load(path, allow_pickle=False) as npz:
            images, written = npz[IMAGES_KEY], str(npz[DIGEST_KEY])
    except Exception:  # missing, torn or foreign: the shard is drawn again
        return None
    if images.shape[0] != size or arrays_mismatch({IMAGES_KEY: images}, written) is not None:
        return None
    return images


def draw_shard(b: int, bundle: SamplingModel, cfg: SampleConfig) -> np.ndarray:
    """Images [B, C, H, W] of shard b, on a copy of the scattered model (module docstring: TBS's cache)."""
    return draw_batch(copy.deepcopy(bundle.model), bundle.run_config, bundle.ae, cfg, b)


def draw_sharded(bundle: SamplingModel, cfg: SampleConfig, folder: Path, shard_map: DaskMap) -> tuple[np.ndarray, int]:
    """(images [N, C, H, W] read back from every shard file, shards finished before this run); `folder` opened by
    open_shard_folder."""
    sizes = shard_sizes(cfg)
    todo = [b for b, size in enumerate(sizes) if read_shard(folder, b, size) is None]
    if todo:
        shard_map(partial(draw_shard, cfg=cfg), todo, (bundle,), f"shards of {cfg.batch_size} images",
                  on_done=lambda k, images: write_shard(folder, todo[k], images))
    shards = [read_shard(folder, b, size) for b, size in enumerate(sizes)]
    lost = [b for b, images in enumerate(shards) if images is None]
    if lost:
        raise OSError(f"shard {SHARD_NAME.format(lost[0])} in {folder} did not read back: run the same command again")
    return np.concatenate(shards), len(sizes) - len(todo)


def sample_on_cluster(weights: str, model: UNet, run_config: dict[str, Any], use_ema: bool, cfg: SampleConfig,
                      out: str, workers: int | None, scheduler: str | None) -> np.ndarray:
    """`cli.py sample` on Dask: images [N, C, H, W] (not clipped), the shards in shard_folder(out)."""
    folder = shard_folder(out)
    open_shard_folder(folder, make_manifest(weights, use_ema, cfg))
    bundle = SamplingModel(model, run_config, decoder_of(run_config))
    with dask_client(workers, scheduler) as client:
        images, before = draw_sharded(bundle, cfg, folder, DaskMap(client))
    print(f"shards in {folder}: {len(shard_sizes(cfg)) - before} drawn, {before} finished before")
    return images
