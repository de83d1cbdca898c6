"""Latent diffusion plumbing: the autoencoder a UNet's latents belong to, a dataset encoded into scaled
latents for training, and sampled latents decoded into images.

Dimensions: N images, C, H, W image, Z, h, w latent (h = H / f).

A UNet trained on latents (`cli.py train --latent AE.h5`) stores a `latent` section in its run config,
{autoencoder: the AE checkpoint's path, sha256: that file's hash, scale: s, weights_sha256: the digest of the
AE's EMA weights (hashing.arrays_sha256 of its state dict: what encodes and decodes)}, and sees

    z_unet = s * mean(q(z | x))     [N, Z, h, w]   the posterior mean (LDM's `mode`), scaled
    s      = 1 / std(all entries of the training set's posterior means)   (LDM's scale_by_std)

so its data has unit variance like the pixel-space data the schedule was designed for. A binary
student inherits its teacher's section (same autoencoder, same s) and trains through the same code
path as in pixel space: only the array of training examples differs. Sampling draws z_unet and
decodes x = decoder(z_unet / s). The UNet never sees the autoencoder; an autoencoder with other weights (retrained
or replaced) is refused, as the UNet's weights only fit the latents of the AE they were trained on. The pin is the
weights' digest, so the AE's slim export (`cli.py export`, another file with the same EMA weights) serves as well;
models recorded before weights_sha256 existed are pinned by the file's sha256.

Where the file is: `cli.py export --autoencoder AE` writes the path relative to the exported model's folder, so a
model shipped beside its autoencoder (weights/) samples from any working folder; `located` looks beside the model
file first, then at the path as recorded (relative to the working folder a model was trained in).

Encoding the training set costs minutes on CPU, so the means are cached next to the autoencoder in
`<ae folder>/latents-<key>.npz`, key = hash of (the AE's pin, data config), written atomically: 'means'
[N, Z, h, w] float32 and 'means_sha256', a 0-d unicode array, hashing.arrays_sha256({"means": means}).
An unreadable or damaged cache is refused with a one-line ValueError whose fix is to delete it (the
next run encodes again), never silently used or replaced. (Caches of the `.npy` layout before the
sha256 are no longer looked up; they are encoded again once.)
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
from tqdm import tqdm

from ..data.datasets import DataConfig, load_images
from ..models.autoencoder import Autoencoder, AutoencoderConfig
from ..models.config import UNetConfig
from ..storage.atomic import atomic_write
from ..storage.checkpoint import load_checkpoint
from ..storage.hashing import arrays_mismatch, arrays_sha256, file_sha256

ENCODE_BATCH = 250
CACHE_KEY = "means"
CACHE_DIGEST_KEY = "means_sha256"


@dataclass(frozen=True)
class LatentConfig:
    autoencoder: str                   # the AE file: as recorded (training's working folder) or beside the model
    sha256: str                        # that file's sha256 when the UNet was trained
    scale: float                       # s
    weights_sha256: str | None = None  # arrays_sha256 of the AE's EMA weights; None: pinned by sha256 alone


def autoencoder_config(run_config: dict[str, Any], where: str) -> AutoencoderConfig:
    """The AutoencoderConfig of an autoencoder checkpoint's run config (lists back to tuples)."""
    if "autoencoder" not in run_config:
        raise ValueError(f"{where} is not an autoencoder checkpoint (no `autoencoder` config): pass the ckpt.h5 "
                         "of `cli.py train-ae`")
    return AutoencoderConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in run_config["autoencoder"].items()})


def load_autoencoder(path: str, use_ema: bool = True) -> Autoencoder:
    """The autoencoder of a `cli.py train-ae` checkpoint, with its EMA weights (or raw params)."""
    ckpt = load_checkpoint(path)
    ae = Autoencoder(autoencoder_config(ckpt.config, path), rng=np.random.default_rng(0))
    ae.load_state_dict(ckpt.weights(use_ema)[1])
    return ae


def autoencoder_digest(ae: Autoencoder) -> str:
    """The pin of an autoencoder: arrays_sha256 of its state dict (the weights it encodes and decodes with)."""
    return arrays_sha256(ae.state_dict())


def autoencoder_of(latent: LatentConfig) -> Autoencoder:
    """The autoencoder a latent UNet was trained with; refused (one line) when its file is missing or it is another
    autoencoder (weights_sha256, or the file's sha256 for a model recorded without it)."""
    path = latent.autoencoder
    if not os.path.isfile(path):
        raise FileNotFoundError(f"the autoencoder {path} of this latent model does not exist: run from the folder "
                                "the model was trained in, keep an exported model beside its autoencoder (cli.py "
                                "export --autoencoder), or restore the file")
    ae = load_autoencoder(path)
    if latent.weights_sha256 is None:
        pinned, digest = latent.sha256, file_sha256(path)
    else:
        pinned, digest = latent.weights_sha256, autoencoder_digest(ae)
    if digest != pinned:
        raise ValueError(f"{path} is not the autoencoder this model was trained on (sha256 {digest[:12]}, expected "
                         f"{pinned[:12]}): restore that file or retrain the UNet")
    return ae


def latent_of(run_config: dict[str, Any]) -> LatentConfig | None:
    """The latent section of a UNet run config, or None for a pixel-space model."""
    return LatentConfig(**run_config["latent"]) if "latent" in run_config else None


def located(run_config: dict[str, Any], model_path: str) -> dict[str, Any]:
    """`run_config` with its autoencoder path as found (module docstring): beside the model file at `model_path`
    when the recorded path is relative and such a file exists, else as recorded."""
    latent = latent_of(run_config)
    if latent is None or os.path.isabs(latent.autoencoder):
        return run_config
    beside = os.path.join(os.path.dirname(model_path), latent.autoencoder)
    if not os.path.isfile(beside):
        return run_config
    return {**run_config, "latent": asdict(replace(latent, autoencoder=beside))}


def pinned_beside(run_config: dict[str, Any], model_path: str, ae_path: str, out_path: str) -> dict[str, Any]:
    """The run config of an export at `out_path` whose autoencoder is the file `ae_path` (e.g. the AE's own slim
    export): path relative to out_path's folder, pinned by its weights; refused unless those are the weights the
    model was trained with."""
    latent = latent_of(located(run_config, model_path))
    if latent is None:
        raise ValueError(f"{model_path} is not a latent diffusion model (no latent section): drop --autoencoder")
    trained, given = autoencoder_digest(autoencoder_of(latent)), autoencoder_digest(load_autoencoder(ae_path))
    if given != trained:
        raise ValueError(f"--autoencoder {ae_path} holds other weights than {latent.autoencoder}, the autoencoder "
                         f"{model_path} was trained with: export that one (cli.py export --weights "
                         f"{latent.autoencoder} --out {ae_path})")
    relative = os.path.relpath(os.path.abspath(ae_path), os.path.dirname(os.path.abspath(out_path)))
    return {**run_config, "latent": asdict(replace(latent, autoencoder=relative, weights_sha256=given))}


def unet_config_for(cfg: UNetConfig, ae_path: str) -> UNetConfig:
    """`cfg` with in/out channels and resolution set to the latents of the autoencoder at `ae_path`."""
    Z, h, _ = autoencoder_config(load_checkpoint(ae_path).config, ae_path).latent_shape
    return replace(cfg, in_channels=Z, out_ch=Z, resolution=h)


def encode_means(ae: Autoencoder, images: np.ndarray, progress: bool = False) -> np.ndarray:
    """Posterior means of images [N, C, H, W] in [-1, 1], in batches: [N, Z, h, w] float32."""
    out = []
    for start in tqdm(range(0, len(images), ENCODE_BATCH), disable=not progress, unit="batch", desc="encode"):
        mean, _, _ = ae.encode(images[start:start + ENCODE_BATCH])                # [B, Z, h, w]
        out.append(mean.astype(np.float32))
    return np.concatenate(out)                                                    # [N, Z, h, w]


def decode_latents(ae: Autoencoder, z: np.ndarray, batch: int = ENCODE_BATCH) -> np.ndarray:
    """Images [N, C, H, W] (not clipped) of latents z [N, Z, h, w] (unscaled), in batches."""
    return np.concatenate([ae.decode(z[start:start + batch])[0] for start in range(0, len(z), batch)])


def read_cached_means(path: str) -> np.ndarray:
    """The means [N, Z, h, w] of a latent cache file; a one-line ValueError if it is unreadable or damaged."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            means, written = npz[CACHE_KEY], str(npz[CACHE_DIGEST_KEY])
    except Exception as err:  # any parse failure means the cache file is unusable
        problem = type(err).__name__
        raise ValueError(f"latent cache {path} is unreadable ({problem}): delete it to encode again") from None
    mismatch = arrays_mismatch({CACHE_KEY: means}, written)
    if mismatch is not None:
        raise ValueError(f"latent cache {path} is damaged: its means do not match the sha256 written with them "
                         f"({mismatch}): delete it to encode again")
    return means


def cached_means(ae: Autoencoder, ae_path: str, digest: str, data_cfg: DataConfig, progress: bool = True) -> np.ndarray:
    """Posterior means of the data's images [N, Z, h, w] under `ae`, loaded from `ae_path` (pinned by `digest`: its
    weights', or its file's for a model recorded without weights_sha256), from the cache beside it or encoded now."""
    key = hashlib.sha256(json.dumps([digest, asdict(data_cfg)], sort_keys=True).encode()).hexdigest()[:16]
    path = os.path.join(os.path.dirname(os.path.abspath(ae_path)), f"latents-{key}.npz")
    if os.path.exists(path):
        return read_cached_means(path)
    means = encode_means(ae, load_images(data_cfg), progress)                    # [N, Z, h, w]
    with atomic_write(path, "wb") as f:
        np.savez(f, **{CACHE_KEY: means, CACHE_DIGEST_KEY: np.array(arrays_sha256({CACHE_KEY: means}))})
    return means


def training_latents(data_cfg: DataConfig, ae_path: str | None, inherited: LatentConfig | None,
                     progress: bool = True) -> tuple[np.ndarray, LatentConfig]:
    """The scaled latents a UNet trains on and their LatentConfig.

    A new latent model (ae_path) computes s from these latents; a student (inherited) keeps its teacher's."""
    if data_cfg.hflip:
        raise ValueError("--hflip mirrors images, not latents: drop it for a latent model")
    if inherited is not None:
        ae = autoencoder_of(inherited)                                            # refuses another autoencoder
        pin = inherited.weights_sha256 or inherited.sha256
        means = cached_means(ae, inherited.autoencoder, pin, data_cfg, progress)  # [N, Z, h, w]
        return means * np.float32(inherited.scale), inherited                     # [N, Z, h, w]
    ae = load_autoencoder(ae_path)
    pin = autoencoder_digest(ae)
    means = cached_means(ae, ae_path, pin, data_cfg, progress)                    # [N, Z, h, w]
    latent = LatentConfig(autoencoder=ae_path, sha256=file_sha256(ae_path),
                          scale=float(1.0 / np.std(means.astype(np.float64))), weights_sha256=pin)
    return means * np.float32(latent.scale), latent                               # [N, Z, h, w]
