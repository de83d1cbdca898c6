"""`cli.py ablate`: the paper's comparison and ablation rows as runs of one training command each.

Every row trains a student from the same teacher with the same steps, batch, lr and seed (FP is
the teacher itself), draws the same number of samples with the same sampler seed, and is scored
by its final training loss and FD-clf / classifier score against the dataset's test split (the
in-domain classifier of metrics/classifier.py, trained once and kept in OUT/classifier.h5) and,
when the FID Inception weights exist (`cfg.inception`, from `cli.py fetch-inception`), by FID, sFID
and precision/recall against the first `fid_reference_images` test images (statistics cached in OUT/).
With tens of samples per row these Inception numbers carry a large small-sample bias: compare them
within one table only.
A row writes OUT/rows/<slug>/{ckpt.h5, loss.tsv, samples.png, samples.npz, result.json};
a row with result.json is not rerun, and an interrupted row resumes from its checkpoint.
OUT/ablation.md is regenerated from the result files after every row.

Rows (docs/METHOD.md §9): FP; the five baselines (XNOR = Vanilla, XNOR++, DoReFa, ReActNet,
ReSTE); plain XNOR-Net (Vanilla without the scaled FP shortcut, docs/METHOD.md §11 item 5); Vanilla + learnable k; +TBS (BiDM layers and cross-timestep connections, no distillation);
+SPD (Vanilla layers with SPD); BiDM; BiDM with L2 instead of SPD; BiDM with 0, 1 and all decoder
TBS connections (2 is the BiDM row).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..bidm.config import BiDMConfig
from ..binary.variant import LayerVariant
from ..data.datasets import DataConfig, load_labeled
from ..data.images import save_grid, save_npz_batch, to_uint8
from ..diffusion.generate import SampleConfig
from ..diffusion.schedule import ScheduleConfig
from ..loading.load import load_model
from ..loading.sampling import draw_images
from ..metrics.classifier import ClassifierConfig, classifier_score, fd_clf, fit_classifier, load_classifier
from ..metrics.evaluate import compute_metrics
from ..metrics.run_eval import dataset_reference
from ..storage.atomic import atomic_write
from ..train.adam import AdamConfig
from ..train.run import StudentConfig, train
from ..train.trainer import TrainConfig


@dataclass(frozen=True)
class Row:
    """One row: its label, the binarization method, TBS connections and distillation (a baseline: 0, "none")."""

    name: str
    method: str
    tbs_connections: int = 0
    distill: str = "none"
    fp_shortcut: bool = LayerVariant.fp_shortcut

    @property
    def slug(self) -> str:
        """Folder name: lower case, '++' -> 'pp', '+' -> 'plus', other runs of symbols -> '_'."""
        spelled = self.name.lower().replace("++", "pp").replace("+", " plus ")
        return re.sub(r"[^a-z0-9]+", "_", spelled).strip("_")

    @property
    def bits(self) -> str:
        return "32/32" if self.method == "fp" else "1/1"


def ablation_rows(decoder_units: int) -> list[Row]:
    """The rows in table order; `decoder_units` is the 'all' TBS setting."""
    return [
        # the paper's comparison: full precision, XNOR-Net with BiDM's scaled FP shortcut (its Vanilla), the
        # other binarization baselines
        Row("FP", "fp"), Row("XNOR (Vanilla)", "xnor"), Row("XNOR++", "xnorpp"), Row("DoReFa", "dorefa"),
        Row("ReActNet", "reactnet"), Row("ReSTE", "reste"),
        # plain XNOR-Net, without the FP shortcut (docs/METHOD.md §11)
        Row("XNOR-Net, no FP shortcut", "xnor", fp_shortcut=False),
        # the ablation: Vanilla plus each part of BiDM, then all of it
        Row("Vanilla + learnable k", "xnor_k"), Row("+TBS", "bidm", tbs_connections=2), Row("+SPD", "xnor", distill="spd"),
        Row("BiDM", "bidm", 2, "spd"),
        # BiDM's variants: the distillation loss and the number of TBS connections
        Row("BiDM, L2 instead of SPD", "bidm", 2, "l2"), Row("BiDM, TBS 0", "bidm", 0, "spd"),
        Row("BiDM, TBS 1", "bidm", 1, "spd"), Row(f"BiDM, TBS all ({decoder_units})", "bidm", decoder_units, "spd"),
    ]


@dataclass(frozen=True)
class AblationConfig:
    teacher: str
    out: str = "results"
    steps: int = 200
    batch_size: int = 16
    lr: float = 2e-4
    seed: int = 0
    n_samples: int = 64
    sample_steps: int = 20
    eval_images: int = 2000
    classifier_steps: int = 1500
    inception: str = "weights/inception_fid.h5"
    fid_reference_images: int = 1000


def final_loss(loss_tsv: str, last: int = 20) -> float:
    """Mean training loss over the last `last` steps of a run's loss.tsv."""
    rows = [line.split("\t") for line in open(loss_tsv).read().splitlines()[1:]]
    return float(np.mean([float(r[1]) for r in rows[-last:]]))


def classifier_for(cfg: AblationConfig, data: DataConfig, progress: bool):
    """OUT/classifier.h5, trained on the training split's labels on first use."""
    path = os.path.join(cfg.out, "classifier.h5")
    if not os.path.exists(path):
        fit_classifier(data, ClassifierConfig(steps=cfg.classifier_steps, seed=cfg.seed), path, cfg.eval_images, progress)
    return load_classifier(path)


def run_row(row: Row, cfg: AblationConfig, data: DataConfig, progress: bool) -> tuple[dict, np.ndarray]:
    """Train (unless FP) and sample one row; returns its result dict and the samples [N, C, H, W] in [-1, 1]."""
    folder = os.path.join(cfg.out, "rows", row.slug)
    if row.method == "fp":
        weights, loss = cfg.teacher, None
    else:
        ckpt = os.path.join(folder, "ckpt.h5")
        started = os.path.exists(ckpt)  # resume a row that has a checkpoint; redo one that died before it
        train(data, ScheduleConfig(), AdamConfig(lr=cfg.lr),
              TrainConfig(steps=cfg.steps, batch_size=cfg.batch_size, seed=cfg.seed, out_dir=folder),
              student=StudentConfig(row.method, cfg.teacher, fp_shortcut=row.fp_shortcut),
              bidm=BiDMConfig(tbs_connections=row.tbs_connections, distill=row.distill),
              resume=started, force=not started, progress=progress)
        weights, loss = ckpt, final_loss(os.path.join(folder, "loss.tsv"))
    model, config = load_model(weights)
    sample_cfg = SampleConfig(n=cfg.n_samples, steps=cfg.sample_steps, seed=cfg.seed, batch_size=cfg.n_samples)
    samples = np.clip(draw_images(model, config, sample_cfg, progress), -1, 1)    # [N, C, H, W]
    save_grid(samples, os.path.join(folder, "samples.png"))
    save_npz_batch(samples, os.path.join(folder, "samples.npz"))
    return {"row": asdict(row), "final_loss": loss, "samples": cfg.n_samples, "sample_steps": cfg.sample_steps}, samples


def write_table(cfg: AblationConfig, rows: list[Row]) -> str:
    """OUT/ablation.md from the rows' result.json files (rows without one are listed as pending)."""
    lines = [
        f"Ablation on the teacher `{cfg.teacher}`: {cfg.steps} steps, batch {cfg.batch_size}, lr {cfg.lr}, "
        f"seed {cfg.seed}; {cfg.n_samples} samples, DDIM {cfg.sample_steps} steps. Final loss: mean training loss of "
        "the last 20 steps (the noise loss, plus lambda x the distillation loss in the distilled rows). "
        "FD-clf and the classifier score "
        "use the in-domain classifier (not Inception; comparable only within this table). FID, sFID, precision and "
        f"recall: FID Inception, {cfg.n_samples} samples against the first {cfg.fid_reference_images} test images "
        "(a large small-sample bias; '-' without the Inception weights).",
        "",
        "| method | #bits W/A | TBS | distill | final loss | FD-clf | clf score | FID | sFID | precision | recall |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        path = os.path.join(cfg.out, "rows", row.slug, "result.json")
        if not os.path.exists(path):
            lines.append(f"| {row.name} | {row.bits} | {row.tbs_connections} | {row.distill} | pending | | | | | | |")
            continue
        r = json.load(open(path))
        loss = "-" if r["final_loss"] is None else f"{r['final_loss']:.2f}"
        inception = " | ".join(f"{r[key]:.{digits}f}" if key in r else "-"
                               for key, digits in (("fid", 1), ("sfid", 1), ("precision", 3), ("recall", 3)))
        lines.append(f"| {row.name} | {row.bits} | {row.tbs_connections} | {row.distill} | {loss} | "
                     f"{r['fd_clf']:.3f} | {r['clf_score']:.2f} | {inception} |")
    text = "\n".join(lines) + "\n"
    with atomic_write(os.path.join(cfg.out, "ablation.md"), "w") as f:
        f.write(text)
    return text


def run_ablation(cfg: AblationConfig, data: DataConfig, only: list[str] | None = None, progress: bool = True) -> str:
    """Run every row not yet finished (or only the named slugs); returns the table."""
    teacher, _ = load_model(cfg.teacher)
    decoder_units = len(teacher.cfg.ch_mult) * (teacher.cfg.num_res_blocks + 1)
    rows = ablation_rows(decoder_units)
    unknown = sorted(set(only or ()) - {row.slug for row in rows})
    if unknown:
        raise ValueError(f"unknown ablation rows {unknown}: choose from {', '.join(row.slug for row in rows)}")
    classifier = classifier_for(cfg, data, progress)
    reference = load_labeled(DataConfig(name=data.name, data_dir=data.data_dir, split="test", limit=cfg.eval_images))[0]
    for row in rows:
        result_path = os.path.join(cfg.out, "rows", row.slug, "result.json")
        if os.path.exists(result_path) or (only and row.slug not in only):
            continue
        result, samples = run_row(row, cfg, data, progress)                        # [N, C, H, W]
        result.update(fd_clf=fd_clf(classifier, reference, samples), clf_score=classifier_score(classifier, samples))
        if Path(cfg.inception).is_file():
            fid_reference = dataset_reference(f"{data.name}-test", data.data_dir, cfg.fid_reference_images)
            result.update(compute_metrics(to_uint8(samples), fid_reference, ("fid", "sfid", "pr"), cfg.inception,
                                          cache_dir=cfg.out, progress=progress))
        with atomic_write(result_path, "w") as f:
            json.dump(result, f, indent=2)
        write_table(cfg, rows)
    return write_table(cfg, rows)
