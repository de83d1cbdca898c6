"""The PyTorch twin's side of bench/torch_worker.py: `python -m bench.torch_server` (protocol in torch_worker.py).

It imports torch before anything else, so PyTorch's OpenMP runtime reads the environment the bench found, then builds
bench_train.bench_case's seeded teacher and its PyTorch twin (`torch_steps`, which checks both give the same eps)
and runs one training step or one sampling forward per request.
"""

from __future__ import annotations

import torch  # first, before NumPy and bidm_ref: its OpenMP runtime reads the environment as the parent found it

import json
import sys
from collections.abc import Callable

import numpy as np

from bidm_ref.diffusion.schedule import Schedule
from bidm_ref.models.config import preset
from bidm_ref.models.unet import UNet
from bidm_ref.runtime import ThreadPolicy, configure, current_policy
from bidm_ref.train.adam import AdamConfig
from bidm_ref.train.trainer import TrainConfig

from .bench_train import TIMESTEPS, TrainCase, random_images, sample_input
from .torch_unet import torch_twin


def torch_steps(teacher: UNet, case: TrainCase) -> tuple[Callable[[], object], Callable[[], object]]:
    """(train step, sampling forward) of the PyTorch twin of `teacher`."""
    torch.set_num_threads(current_policy().blas_threads)
    cfg = teacher.cfg
    model = torch_twin(cfg, teacher.state_dict())
    rng = np.random.default_rng(3)
    images = random_images(case.preset, case.train_batch)                         # [B, C, H, W]
    t = rng.integers(0, TIMESTEPS, case.train_batch)                              # [B]
    eps = rng.standard_normal(images.shape).astype(np.float32)                    # [B, C, H, W]
    x_t, t, eps = (torch.from_numpy(a) for a in (Schedule().q_sample(images, t, eps), t, eps))
    optimizer = torch.optim.Adam(model.parameters(), lr=AdamConfig().lr)
    shadow = [p.detach().clone() for p in model.parameters()]
    defaults = TrainConfig()                                                      # the Trainer's clip and EMA decay

    def train_step() -> None:
        model.train()                                                             # dropout on, as the Trainer
        optimizer.zero_grad()
        loss = (eps - model(x_t, t)).square().sum(dim=(1, 2, 3)).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), defaults.grad_clip)
        optimizer.step()
        with torch.no_grad():
            for s, p in zip(shadow, model.parameters()):
                s.mul_(defaults.ema_decay).add_(p, alpha=1 - defaults.ema_decay)

    x = torch.from_numpy(sample_input(cfg, case.sample_batch))
    t_sample = torch.full((case.sample_batch,), TIMESTEPS // 2)

    def sample_forward() -> None:
        model.eval()                                                              # dropout off, as the sampler
        with torch.no_grad():
            model(x, t_sample)

    model.eval()
    with torch.no_grad():
        gap = float((model(x, t_sample) - torch.from_numpy(teacher.forward(x.numpy(), t_sample.numpy())[0])).abs().max())
    if gap > 1e-3:
        raise RuntimeError(f"the PyTorch twin's eps differs from the engine's by {gap:.2e}: the twin is not ddim's model")
    return train_step, sample_forward


def serve() -> None:
    """The request loop (protocol: torch_worker.py)."""
    steps = {}
    for line in sys.stdin:
        message = json.loads(line)
        try:
            if "run" in message:
                steps[message["run"]]()
                reply = {"done": True}
            else:
                configure(ThreadPolicy(message["threads"], message["threads"]))
                case = TrainCase(message["preset"], message["train_batch"], message["sample_batch"])
                teacher = UNet(preset(case.preset), rng=np.random.default_rng(0))  # bench_train.bench_case's teacher
                steps["train"], steps["sample"] = torch_steps(teacher, case)
                reply = {"ready": True}
        except Exception as error:  # noqa: BLE001  reported to the parent, which raises it
            reply = {"error": f"{type(error).__name__}: {error}"}
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    serve()
