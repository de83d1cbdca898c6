"""`cli.py score`: trained models scored under one protocol, with the spread over sampling seeds.

Dimensions: N samples per seed, M reference images, C, H, W image.

For each model (a `train` or `export` checkpoint: FP, float student or packed) and each sampling
seed s: draw N images (`protocol_sampler`: DDIM with SampleConfig's defaults, eta 0, x0 clipped, seed s),
timed, and score them against the first `reference_images` of the dataset's test split (all 10,000 by
default): FID, sFID, precision and recall with the FID Inception (reference statistics cached in
OUT/cache), and FD-clf, the classifier score and the confident share with the in-domain
classifier (metrics/classifier.py). A cell (model, seed) writes OUT/<label>/seed-<s>.json and
samples-seed-<s>.npz and is skipped when its json exists (after a check that it was made from the
same weights under the same protocol, the sampler's settings included), so an interrupted run
continues; a model and the reference images are loaded only when one of their cells is still to be made
(a finished run reads the classifier's weights alone, to compare their digest with the cells'). Every
metric reads the saved uint8 pixels (what the npz and an image file hold), so a finished cell scored with
other classifier weights (the json's classifier_sha256, a digest of the weights) gets its classifier
columns recomputed from its npz, without sampling again.
OUT/table.md is rewritten after every cell: per model the mean over its seeds and the range
(min-max), so a reader sees which differences exceed the seed spread, and the sampling time.
Nothing is chosen from these numbers inside this module: the models and the protocol come in.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np

from ..data.datasets import DataConfig, load_images
from ..data.images import from_uint8, load_npz_batch, save_npz_batch, to_uint8
from ..diffusion.generate import SampleConfig
from ..loading.load import load_model
from ..loading.sampling import draw_images
from ..metrics.classifier import FeatureClassifier, classifier_score, confident_share, fd_clf, load_classifier
from ..metrics.evaluate import compute_metrics
from ..metrics.run_eval import dataset_reference
from ..models.unet import UNet
from ..storage.atomic import atomic_write
from ..storage.hashing import arrays_sha256
from .config import ScoreConfig

SAMPLER_KEYS = ("sampler", "eta", "clip_x0")  # the SampleConfig fields a cell records beside n and sample_steps
CLASSIFIER_KEYS = ("fd_clf", "clf_score", "confident", "confident_reference", "classifier_sha256")
COLUMNS = (("fid", "FID", 2), ("sfid", "sFID", 2), ("precision", "precision", 3), ("recall", "recall", 3),
           ("fd_clf", "FD-clf", 3), ("confident", "confident", 3), ("s_per_image", "s/image", 3))


class ClassifierSide:
    """What the classifier columns are computed with: the classifier, its weights' digest, the reference images
    [M, C, H, W] and their confident share."""

    def __init__(self, model: FeatureClassifier, sha256: str, data: DataConfig, reference_images: int) -> None:
        self.model, self.sha256 = model, sha256
        self.reference = load_images(DataConfig(name=data.name, data_dir=data.data_dir, split="test",
                                                limit=reference_images))          # [M, C, H, W]
        self.reference_share = confident_share(self.model, self.reference)

    def columns(self, pixels: np.ndarray) -> dict:
        """FD-clf, classifier score and confident share of samples as uint8 pixels [N, H, W, C], with the digest."""
        images = from_uint8(pixels.transpose(0, 3, 1, 2))                         # [N, C, H, W]
        return {"fd_clf": fd_clf(self.model, self.reference, images), "clf_score": classifier_score(self.model, images),
                "confident": confident_share(self.model, images), "confident_reference": self.reference_share,
                "classifier_sha256": self.sha256}


def protocol_sampler(cfg: ScoreConfig, seed: int) -> SampleConfig:
    """The sampler of the cell of `seed`: SampleConfig's defaults with the protocol's n and steps."""
    return SampleConfig(n=cfg.n, steps=cfg.sample_steps, seed=seed, batch_size=min(cfg.batch_size, cfg.n))


def score_cell(model: UNet, run_config: dict, weights: str, seed: int, cfg: ScoreConfig, data: DataConfig,
               classifier: ClassifierSide, folder: str, progress: bool) -> dict:
    """Sample `model` (loaded from `weights`) with `seed` and score the images; writes the npz and returns the
    json-ready result."""
    sample_cfg = protocol_sampler(cfg, seed)
    start = time.perf_counter()
    samples = np.clip(draw_images(model, run_config, sample_cfg, progress), -1, 1)  # [N, C, H, W]
    seconds = time.perf_counter() - start
    pixels = to_uint8(samples)                                                    # [N, H, W, C]
    save_npz_batch(samples, samples_path(folder, seed))
    fid_reference = dataset_reference(f"{data.name}-test", data.data_dir, cfg.reference_images)
    result = {"weights": weights, "seed": seed, "n": cfg.n, "sample_steps": cfg.sample_steps,
              **{key: getattr(sample_cfg, key) for key in SAMPLER_KEYS}, "s_per_image": seconds / cfg.n}
    result.update(compute_metrics(pixels, fid_reference, ("fid", "sfid", "pr"), cfg.inception,
                                  cache_dir=os.path.join(os.path.dirname(folder), "cache"), progress=progress))
    result.update(classifier.columns(pixels))
    return result


def rescore_classifier_columns(path: str, cell: dict, classifier: ClassifierSide) -> None:
    """Recompute the classifier columns of the finished cell `cell` (its json at `path`) from its saved samples;
    its other columns stay."""
    samples = samples_path(os.path.dirname(path), cell["seed"])
    if not os.path.isfile(samples):
        raise FileNotFoundError(f"{path} was scored with other classifier weights and its samples {samples} are "
                                "gone: delete the json to sample and score the cell again")
    cell.update(classifier.columns(load_npz_batch(samples)))
    with atomic_write(path, "w") as f:
        json.dump(cell, f, indent=2)


def cell_path(out: str, label: str, seed: int) -> str:
    return os.path.join(out, label, f"seed-{seed}.json")


def samples_path(folder: str, seed: int) -> str:
    """The samples of a cell, beside its json in its label's folder."""
    return os.path.join(folder, f"samples-seed-{seed}.npz")


def check_same_protocol(path: str, weights: str, cfg: ScoreConfig) -> dict:
    """Refuse a finished cell made from other weights or with another protocol (it would be mixed into the table);
    returns the cell."""
    done = json.load(open(path))
    sampler = protocol_sampler(cfg, done["seed"])
    made = {"weights": done["weights"], "n": done["n"], "sample_steps": done["sample_steps"],
            "n_reference": done["n_reference"], **{key: done.get(key) for key in SAMPLER_KEYS}}
    asked = {"weights": weights, "n": cfg.n, "sample_steps": cfg.sample_steps, "n_reference": cfg.reference_images,
             **{key: getattr(sampler, key) for key in SAMPLER_KEYS}}
    if made != asked:
        raise ValueError(f"{path} was made with {made}, not {asked}: pass another --out, or delete it to redo it")
    return done


def spread(values: list[float], digits: int) -> str:
    """'mean (min-max)' of one metric over the seeds; just the value for one seed."""
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def scored_labels(out: str, seeds: tuple[int, ...]) -> list[str]:
    """The labels with at least one cell of `seeds` in OUT (sorted)."""
    if not os.path.isdir(out):
        return []
    return sorted(label for label in os.listdir(out)
                  if any(os.path.exists(cell_path(out, label, seed)) for seed in seeds))


def write_score_table(out: str, labels: list[str], cfg: ScoreConfig) -> str:
    """OUT/table.md from the cells' json files (missing cells: the row says how many seeds are done): the rows of
    `labels` in their order, then those of other labels already scored in OUT, so that scoring one model does not
    drop the others from the table."""
    labels = labels + [label for label in scored_labels(out, cfg.seeds) if label not in labels]
    lines = [
        f"{cfg.n} samples per seed, seeds {', '.join(map(str, cfg.seeds))} (DDIM {cfg.sample_steps}, eta 0, x0 clipped "
        "in pixel space, never in latent space); "
        f"FID, sFID, precision, recall (FID Inception) and FD-clf against the first {cfg.reference_images} test "
        f"images; confident: share of samples with top classifier probability > 0.9 (`{cfg.classifier}`; the "
        "reference row gives the real images' share). Cells: mean over seeds (min-max). s/image: sampling time.",
        "",
        "| model | seeds | " + " | ".join(title for _, title, _ in COLUMNS) + " |",
        "|---|---|" + "---|" * len(COLUMNS),
    ]
    reference_share = None
    for label in labels:
        cells = [json.load(open(path)) for seed in cfg.seeds if os.path.exists(path := cell_path(out, label, seed))]
        if not cells:
            lines.append(f"| {label} | 0 of {len(cfg.seeds)} | " + " | ".join("pending" for _ in COLUMNS) + " |")
            continue
        reference_share = cells[0]["confident_reference"]
        values = " | ".join(spread([cell[key] for cell in cells], digits) for key, _, digits in COLUMNS)
        lines.append(f"| {label} | {len(cells)} of {len(cfg.seeds)} | {values} |")
    if reference_share is not None:
        lines.append("| real test images | - | " + " | ".join(
            f"{reference_share:.3f}" if key == "confident" else "-" for key, _, _ in COLUMNS) + " |")
    text = "\n".join(lines) + "\n"
    with atomic_write(os.path.join(out, "table.md"), "w") as f:
        f.write(text)
    return text


def score_models(models: dict[str, str], cfg: ScoreConfig, data: DataConfig, out: str, progress: bool = True) -> str:
    """Score every (model, seed) cell not done yet; returns the table. models: {label: checkpoint path}."""
    for label, weights in models.items():
        if not os.path.isfile(weights):
            raise FileNotFoundError(f"{weights} (model {label!r}) not found: pass checkpoints of `train` or `export`")
    pending: dict[str, list[int]] = {}                                         # label -> seeds still to score
    done: dict[str, dict] = {}                                                   # finished cells by json path
    for label, weights in models.items():
        for seed in cfg.seeds:
            path = cell_path(out, label, seed)
            if os.path.exists(path):
                done[path] = check_same_protocol(path, weights, cfg)
            else:
                pending.setdefault(label, []).append(seed)
    classifier_model = load_classifier(cfg.classifier)
    digest = arrays_sha256(classifier_model.state_dict())
    stale = {path: cell for path, cell in done.items() if cell.get("classifier_sha256") != digest}
    classifier = ClassifierSide(classifier_model, digest, data, cfg.reference_images) if pending or stale else None
    for path, cell in stale.items():
        rescore_classifier_columns(path, cell, classifier)
    for label, seeds in pending.items():
        model, run_config = load_model(models[label])
        for seed in seeds:
            path = cell_path(out, label, seed)
            result = score_cell(model, run_config, models[label], seed, cfg, data, classifier, os.path.dirname(path),
                                progress)
            with atomic_write(path, "w") as f:
                json.dump(result, f, indent=2)
            write_score_table(out, list(models), cfg)
    return write_score_table(out, list(models), cfg)
