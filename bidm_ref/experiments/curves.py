"""Learning curves: FD-clf of a run's snapshots against its training step, and their plot.

Dimensions: S snapshots, N samples, M reference images, C, H, W image.

A run trained with `--snapshot-every k` leaves OUT/snapshots/step-<s>.h5 (its EMA weights) every k
steps (train/trainer.py). For each snapshot, `curve` draws N samples with the same SampleConfig (so
every point sees the same noise), clips them to [-1, 1] as a saved image would be, and measures
FD-clf against M reference images with the in-domain classifier (metrics/classifier.py). The points go
to OUT/curve.tsv, whose first line records the settings (CurveConfig and the classifier file's sha256, as
JSON): a later call with the same settings reuses the steps already there and computes only new snapshots;
other settings (another classifier included) start the file over. `plot_curves` draws several runs in one PNG.
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
from ..metrics.classifier import fd_clf, load_classifier
from ..storage.atomic import atomic_path, atomic_write
from ..storage.hashing import file_sha256

SNAPSHOT = re.compile(r"step-(\d+)\.h5$")


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


def read_curve(path: str, settings: str) -> dict[int, float]:
    """The points of a curve.tsv written with the same `settings` (an empty dict for another or no file)."""
    if not os.path.exists(path):
        return {}
    lines = open(path).read().splitlines()
    if not lines or lines[0] != f"# {settings}":
        return {}
    return {int(step): float(value) for step, value in (line.split("\t") for line in lines[2:])}


def curve(run: str, classifier_path: str, cfg: CurveConfig, progress: bool = True) -> list[tuple[int, float]]:
    """[(step, FD-clf)] of every snapshot of `run` against cfg's reference images; written to run/curve.tsv."""
    settings = json.dumps({**asdict(cfg), "classifier_sha256": file_sha256(classifier_path)}, sort_keys=True)
    classifier = None
    tsv = os.path.join(run, "curve.tsv")
    known = read_curve(tsv, settings)
    reference = None
    for step, path in snapshots(run):
        if step not in known:
            reference = load_images(cfg.reference) if reference is None else reference  # [M, C, H, W]
            classifier = load_classifier(classifier_path) if classifier is None else classifier
            model, run_config = load_model(path)
            images = np.clip(draw_images(model, run_config, cfg.samples, progress), -1, 1)  # [N, C, H, W]
            known[step] = fd_clf(classifier, images, reference)
            if progress:
                print(f"{run} step {step}: FD-clf {known[step]:.3f}")
    points = sorted(known.items())
    with atomic_write(tsv, "w") as f:
        f.write(f"# {settings}\nstep\tfd_clf\n" + "".join(f"{s}\t{v:.6f}\n" for s, v in points))
    return points


def plot_curves(curves: dict[str, list[tuple[int, float]]], path: str, title: str) -> None:
    """One line per run (label -> points) of FD-clf against the training step, as a PNG written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for label, points in curves.items():
        steps, values = zip(*points)
        ax.plot(steps, values, marker="o", label=label)
    ax.set_xlabel("training step")
    ax.set_ylabel("FD-clf (lower is better)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as temp:
        fig.savefig(temp, format="png")
    plt.close(fig)
