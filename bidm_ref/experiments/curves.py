"""Learning curves: FD-clf and the confident share of a run's snapshots against its training step, and their plot.

Dimensions: S snapshots, N samples, M reference images, C, H, W image.

A run trained with `--snapshot-every k` leaves OUT/snapshots/step-<s>.h5 (its EMA weights) every k
steps (train/trainer.py). For each snapshot, `curve` draws N samples with the same SampleConfig (so
every point sees the same noise), clips them to [-1, 1] as a saved image would be, and measures with the
in-domain classifier (metrics/classifier.py, one pass over the samples) FD-clf against M reference images
and the confident share (top softmax probability > 0.9; the reference images' own share is the line to
read it against). The points go to OUT/curve.tsv, whose first line records the settings (CurveConfig and the
classifier file's sha256, as JSON) and second the columns: a later call with the same settings and columns
reuses the steps already there and computes only new snapshots; anything else (another classifier, a file
of an older layout) starts the file over. `plot_curves` draws several runs in one PNG, a panel per measure.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass

import numpy as np

from ..data.datasets import DataConfig, load_images
from ..diffusion.generate import SampleConfig
from ..loading.load import load_model
from ..loading.sampling import draw_images
from ..metrics.classifier import classifier_outputs, features_frechet, load_classifier, share_above
from ..storage.atomic import atomic_path, atomic_write
from ..storage.hashing import file_sha256

SNAPSHOT = re.compile(r"step-(\d+)\.h5$")
COLUMNS = "step\tfd_clf\tconfident"  # curve.tsv's second line


@dataclass(frozen=True)
class CurvePoint:
    """What one snapshot's samples measure."""

    step: int
    fd_clf: float
    confident: float  # share of samples with top classifier probability > 0.9


@dataclass(frozen=True)
class CurveConfig:
    """How each point is measured: the samples drawn and the reference images (a split's first images)."""

    samples: SampleConfig = SampleConfig(n=256, steps=20, seed=0, batch_size=64)
    reference: DataConfig = DataConfig(name="fashion-mnist", split="test", limit=2000)


def snapshots(run: str) -> list[tuple[int, str]]:
    """(step, path) of every snapshot of a run folder, by step; refuses a run without any."""
    folder = os.path.join(run, "snapshots")
    found = sorted((int(m.group(1)), os.path.join(folder, name))
                   for name in (os.listdir(folder) if os.path.isdir(folder) else []) if (m := SNAPSHOT.search(name)))
    if not found:
        raise FileNotFoundError(f"{run} has no snapshots/step-N.h5: train it with --snapshot-every N first")
    return found


def read_curve(path: str, settings: str) -> dict[int, CurvePoint]:
    """The points of a curve.tsv written with the same `settings` and COLUMNS (empty for another or no file)."""
    if not os.path.exists(path):
        return {}
    lines = open(path).read().splitlines()
    if lines[:2] != [f"# {settings}", COLUMNS]:
        return {}
    points = (CurvePoint(int(step), float(fd), float(confident))
              for step, fd, confident in (line.split("\t") for line in lines[2:]))
    return {point.step: point for point in points}


def curve(run: str, classifier_path: str, cfg: CurveConfig, progress: bool = True) -> list[CurvePoint]:
    """The CurvePoint of every snapshot of `run` against cfg's reference images; written to run/curve.tsv."""
    settings = json.dumps({**asdict(cfg), "classifier_sha256": file_sha256(classifier_path)}, sort_keys=True)
    tsv = os.path.join(run, "curve.tsv")
    known = read_curve(tsv, settings)
    classifier = reference_features = None
    for step, path in snapshots(run):
        if step not in known:
            if classifier is None:
                classifier = load_classifier(classifier_path)
                reference_features = classifier_outputs(classifier, load_images(cfg.reference))[0]  # [M, F]
            model, run_config = load_model(path)
            images = np.clip(draw_images(model, run_config, cfg.samples, progress), -1, 1)  # [N, C, H, W]
            features, probs = classifier_outputs(classifier, images)              # [N, F], [N, K]
            known[step] = CurvePoint(step, features_frechet(features, reference_features), share_above(probs))
            if progress:
                print(f"{run} step {step}: FD-clf {known[step].fd_clf:.3f}, confident {known[step].confident:.1%}")
    points = [known[step] for step in sorted(known)]
    with atomic_write(tsv, "w") as f:
        f.write(f"# {settings}\n{COLUMNS}\n"
                + "".join(f"{p.step}\t{p.fd_clf:.6f}\t{p.confident:.6f}\n" for p in points))
    return points


def reference_confident(classifier_path: str, cfg: CurveConfig) -> float:
    """The confident share of cfg's reference images: the level a run's samples are read against."""
    return share_above(classifier_outputs(load_classifier(classifier_path), load_images(cfg.reference))[1])


def plot_curves(curves: dict[str, list[CurvePoint]], path: str, title: str, real_confident: float) -> None:
    """One line per run (label -> points): FD-clf (left) and the confident share (right, with the reference
    images' share `real_confident` dashed) against the training step, as a PNG written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, (ax_fd, ax_conf) = plt.subplots(1, 2, figsize=(10, 4), dpi=120)
    for label, points in curves.items():
        steps = [p.step for p in points]
        ax_fd.plot(steps, [p.fd_clf for p in points], marker="o", label=label)
        ax_conf.plot(steps, [100 * p.confident for p in points], marker="o", label=label)
    ax_conf.axhline(100 * real_confident, color="gray", linestyle="--", label="real test images")
    ax_fd.set_ylabel("FD-clf (lower is better)")
    ax_conf.set_ylabel("confident samples, % (p > 0.9)")
    ax_conf.set_ylim(0, 100)
    for ax in (ax_fd, ax_conf):
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as temp:
        fig.savefig(temp, format="png")
    plt.close(fig)
