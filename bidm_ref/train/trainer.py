"""The training loop: batches, one objective, gradient clipping, Adam, EMA, checkpoints, resume.

Dimensions: B batch, C, H, W image.

One step s:
    x0        = batches.batch(s)                        # [B, C, H, W], depends only on (seed, s)
    step_rng  = default_rng([seed, s, 2])               # timesteps, noise, dropout of this step
    set_progress(model, s / steps)                      # annealed binarizers (ReSTE) follow the step
    loss      = objective.step(x0, step_rng)            # forward + backward into the model's grads
    clip the global gradient norm, Adam step at lr_at(s), EMA update

Nothing random is carried between steps, so a run resumed from the checkpoint of step k
continues bit-identically to an uninterrupted run. The checkpoint `out_dir/ckpt.h5` is
rewritten atomically every `ckpt_every` steps, at the end and when SIGINT/SIGTERM stops the run
(interrupt.py); just before each checkpoint, `out_dir/loss.tsv` gets the metrics (step, loss,
..., grad_norm) of the steps it covers. A crash between the two leaves rows beyond the
checkpoint; `resume` drops them (and a torn last line), and the resumed run writes them again
with the same values, so the curve has no gaps or repeats. With `snapshot_every`
= k > 0, every k-th step also leaves `out_dir/snapshots/step-<step>.h5`: the EMA weights as a
samplable checkpoint (no optimizer state), the points of a learning curve (experiments/curves.py).

Learning rate: constant (ddim), or with `lr_decay_from` = d a linear decay to zero over the last
steps, ReActNet's schedule for binary networks (Liu et al., ECCV 2020, training setup):
    lr_s = lr                                  for s < d
    lr_s = lr * (steps - s) / (steps - d)      for d <= s < steps
d belongs to the run's budget like steps: a resumed run may set or move it (decay the tail of a
constant-lr run from its checkpoint), and a resume to a larger --steps stretches what is left of the
decay. The checkpoint's config holds the latest values, so only a straight run's schedule is on record.

EMA: ddim averages with a fixed decay 0.9999, which barely moves in a short CPU run. We use
decay_s = min(decay, (1 + s) / (10 + s)) (TensorFlow's ExponentialMovingAverage with
num_updates), which equals ddim's from s ~ 90k on; `ema_warmup=False` gives ddim's exactly.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np
from tqdm import tqdm

from ..bidm.config import current_run_config
from ..binary.methods import set_progress
from ..data.batches import BatchSampler
from ..nn.module import Module
from .adam import Adam, AdamConfig
from ..storage.checkpoint import check_config, load_checkpoint, save_checkpoint
from ..storage.atomic import atomic_write, fsync_file
from .clip import clip_grad_norm
from .ema import EMA
from .interrupt import TrainingInterrupted, deferred_signals

STEP_STREAM = 2  # third seed word of a step's Generator (1 is the data sampler's flips)


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 2000
    batch_size: int = 32
    seed: int = 0
    grad_clip: float = 1.0
    ema_decay: float = 0.9999
    ema_warmup: bool = True
    ckpt_every: int = 500
    out_dir: str = "run"
    snapshot_every: int = 0
    lr_decay_from: int | None = None

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}: pass --steps 1 or more")
        if self.lr_decay_from is not None and not 0 <= self.lr_decay_from < self.steps:
            raise ValueError(f"lr_decay_from {self.lr_decay_from} is outside [0, steps = {self.steps}): pass "
                             "--lr-decay-from below --steps")
        if self.batch_size < 1 or self.ckpt_every < 1 or self.snapshot_every < 0:
            raise ValueError(f"batch_size >= 1, ckpt_every >= 1 and snapshot_every >= 0 required, got {self}")


class Objective(Protocol):
    """What a training step computes: forward + backward for one batch (grads accumulate in the model)."""

    def step(self, x0: np.ndarray, rng: np.random.Generator) -> dict[str, float]: ...


def ema_decay_at(cfg: TrainConfig, step: int) -> float:
    """The EMA decay used after optimizer step `step` (0-based); see the module docstring."""
    return min(cfg.ema_decay, (1 + step) / (10 + step)) if cfg.ema_warmup else cfg.ema_decay


def lr_at(cfg: TrainConfig, lr: float, step: int) -> float:
    """The learning rate of optimizer step `step` (0-based) for the base rate `lr`; see the module docstring."""
    if cfg.lr_decay_from is None or step < cfg.lr_decay_from:
        return lr
    return lr * (cfg.steps - step) / (cfg.steps - cfg.lr_decay_from)


class Trainer:
    """Owns the optimizer and EMA of `model` (the arrays it trains: `model.named_parameters()`)."""

    def __init__(
        self,
        model: Module,
        objective: Objective,
        batches: BatchSampler,
        cfg: TrainConfig,
        adam: AdamConfig,
        run_config: dict[str, Any],
    ) -> None:
        self.model = model
        self.objective = objective
        self.batches = batches
        self.cfg = cfg
        self.params = dict(model.named_parameters())
        self.grads = dict(model.named_grads())
        self.adam = Adam(adam)
        self.ema = EMA(cfg.ema_decay)
        self.ema.register(self.params)
        self.run_config = run_config
        self.step = 0
        self.ckpt_path = os.path.join(cfg.out_dir, "ckpt.h5")
        self.loss_path = os.path.join(cfg.out_dir, "loss.tsv")
        self.unsaved: list[dict[str, float]] = []

    def resume(self, path: str) -> None:
        """Load params, EMA, Adam state and step from a checkpoint of the same run config."""
        ckpt = load_checkpoint(path)
        check_config(current_run_config(ckpt.config), self.resumable_config(self.run_config), what=path)
        if ckpt.ema is None or ckpt.optim is None:
            raise ValueError(f"{path} has no EMA or optimizer state: it cannot be resumed (it can be sampled)")
        if ckpt.step > self.cfg.steps:
            raise ValueError(f"{path} is at step {ckpt.step}, beyond --steps {self.cfg.steps}: pass --steps above "
                             f"{ckpt.step} to continue the run")
        self.model.load_state_dict(ckpt.params)
        self.ema.load_state_dict(ckpt.ema)
        self.adam.load_state_dict(ckpt.optim)
        self.step = ckpt.step
        reconcile_rows(self.loss_path, self.step)

    @staticmethod
    def resumable_config(run_config: dict[str, Any]) -> dict[str, Any]:
        """The part of a run config a resumed run must share (step budget, lr decay start, out_dir may change)."""
        changeable = ("steps", "out_dir", "ckpt_every", "snapshot_every", "lr_decay_from")
        train = {k: v for k, v in run_config["train"].items() if k not in changeable}
        return {**run_config, "train": train}

    def save(self) -> None:
        """Append the loss rows of the steps the checkpoint covers to loss.tsv, then write the checkpoint."""
        os.makedirs(self.cfg.out_dir, exist_ok=True)
        if self.unsaved:
            append_rows(self.loss_path, self.unsaved)
            self.unsaved = []
        save_checkpoint(
            self.ckpt_path,
            params=self.params,
            config=self.run_config,
            step=self.step,
            ema=self.ema.state_dict(),
            optim=self.adam.state_dict(),
            rng_state={"seed": self.cfg.seed, "next_step": self.step, "stream": STEP_STREAM},
        )

    def snapshot(self) -> str:
        """Write out_dir/snapshots/step-<step>.h5 (EMA weights as params, run config, step); returns its path."""
        path = os.path.join(self.cfg.out_dir, "snapshots", f"step-{self.step:07d}.h5")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        save_checkpoint(path, params=self.ema.state_dict(), config=self.run_config, step=self.step)
        return path

    def train_step(self) -> dict[str, float]:
        """One optimizer step; returns the objective's metrics plus the pre-clip gradient norm."""
        x0 = self.batches.batch(self.step)                                        # [B, C, H, W]
        rng = np.random.default_rng([self.cfg.seed, self.step, STEP_STREAM])
        set_progress(self.model, self.step / max(self.cfg.steps, 1))
        self.model.zero_grad()
        metrics = self.objective.step(x0, rng)
        if not np.isfinite(metrics["loss"]):
            raise FloatingPointError(f"loss is {metrics['loss']} at step {self.step}: training diverged, lower --lr")
        metrics["grad_norm"] = clip_grad_norm(self.grads, self.cfg.grad_clip)
        self.adam.step(self.params, self.grads, lr=lr_at(self.cfg, self.adam.config.lr, self.step))
        self.ema.decay = ema_decay_at(self.cfg, self.step)
        self.ema.update(self.params)
        self.step += 1
        return metrics

    def run(self, progress: bool = True) -> list[dict[str, float]]:
        """Train until cfg.steps; returns the per-step metrics of this call (loss curve).

        SIGINT/SIGTERM: the step in flight finishes, the checkpoint is written, TrainingInterrupted is raised.
        """
        if self.step >= self.cfg.steps:
            if progress:
                print(f"{self.ckpt_path} is at step {self.step} = --steps: nothing to train (pass a larger --steps)")
            return []
        history = []
        start = time.perf_counter()
        bar = tqdm(total=self.cfg.steps, initial=self.step, disable=not progress, unit="step")
        with deferred_signals() as received:
            while self.step < self.cfg.steps and not received:
                metrics = self.train_step()
                history.append({"step": self.step, **metrics})
                self.unsaved.append(history[-1])
                bar.set_postfix(loss=f"{metrics['loss']:.4f}")
                bar.update(1)
                if self.cfg.snapshot_every and self.step % self.cfg.snapshot_every == 0:
                    self.snapshot()
                if self.step % self.cfg.ckpt_every == 0:
                    self.save()
            bar.close()
            self.save()
        if received:
            raise TrainingInterrupted(received[0], self.step, self.ckpt_path)
        elapsed = time.perf_counter() - start
        if history and progress:
            print(f"trained {len(history)} steps in {elapsed:.1f} s ({len(history) / elapsed:.2f} it/s); "
                  f"checkpoint {self.ckpt_path}")
        return history


def append_rows(path: str, rows: list[dict[str, float]]) -> None:
    """Append metric rows to a TSV (header from the first row's keys when the file is new), flushed to disk.

    Rows are written just before the checkpoint of their steps (module docstring: `reconcile_rows`).
    """
    new = not os.path.exists(path)
    with open(path, "a") as f:
        if new:
            f.write("\t".join(rows[0]) + "\n")
        for row in rows:
            f.write("\t".join(str(row["step"]) if k == "step" else f"{row[k]:.6f}" for k in rows[0]) + "\n")
    fsync_file(path)


def reconcile_rows(path: str, step: int) -> None:
    """Cut loss.tsv back to the rows of steps <= `step` (the checkpoint's), dropping a torn last line.

    Rows missing below `step` (a run of a bidm-ref that wrote the checkpoint first) cannot be made up:
    a one-line warning says which. The file is rewritten atomically, and only when something changes.
    """
    if not os.path.exists(path):
        return
    with open(path) as f:
        text = f.read()
    lines = text.split("\n")
    complete = lines[:-1]                                                      # a torn last line has no newline
    header, rows = complete[:1], [line for line in complete[1:] if int(line.split("\t", 1)[0]) <= step]
    kept = "\n".join(header + rows) + "\n" if header else ""
    last = int(rows[-1].split("\t", 1)[0]) if rows else 0
    if last < step:
        print(f"warning: {path} ends at step {last} but the checkpoint is at step {step}: the rows between are lost "
              "(written by an older bidm-ref)")
    if kept != text:
        with atomic_write(path, "w") as f:
            f.write(kept)


def run_config_dict(**configs: Any) -> dict[str, Any]:
    """{name: asdict(config)} with tuples as lists (what the checkpoint's JSON round-trips to)."""
    import json

    return json.loads(json.dumps({name: asdict(cfg) for name, cfg in configs.items()}))
