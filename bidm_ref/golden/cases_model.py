"""Golden cases of whole blocks, the UNet and the samplers (groups "models", "diffusion").

Dimensions: N batch, Ci, Co channels, E embedding size, H, W spatial, S sampling steps, T diffusion steps.

End-to-end results compare by nmse (per dataset): their elements pass through many summations, and in
binary models through signs of values no case controls. `resnet_block` runs ddim's ResnetBlock (FP, or
with BiDM's binary conv1/conv2/temb_proj); `unet` the MICRO UNet forward and backward at one (x_t, t);
`ddim` a 5-step trajectory of the MICRO UNet with eta 0 and with eta 1 and its stored noise; `schedule`
the linear betas, alpha_bar and q_sample.

MICRO has every block type of the `tiny` preset (attention at 8x8, down/up sampling, skip concatenation,
channel-changing shortcuts) at ch 4 and 16x16: 11,621 parameters. The tiny preset's 280,177 parameters
and their gradients in float64 would make one 4.3 MB file.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from functools import partial

import numpy as np

from ..bidm.tbs import sampling_eps_fn
from ..binary.methods import BinaryLayers
from ..diffusion.samplers import sample_ddim
from ..diffusion.schedule import Schedule, ScheduleConfig
from ..loading.build import unet_config
from ..models.config import UNetConfig
from ..models.unet import UNet
from ..nn.factory import DENSE
from ..nn.resblock import ResnetBlock
from .draws import away, normal, random_params
from .format import Arrays
from .harness import forward_backward, init_rng, load_params, upstream
from .registry import Draw, Result, case, close, exact, nmse, op

MICRO = UNetConfig(ch=4, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), dropout=0.0, in_channels=1,
                   out_ch=1, resolution=16, groups=2)
SCHEDULE = ScheduleConfig()


def model_hyper(cfg: UNetConfig) -> dict:
    """The UNet config as a JSON attribute (the checkpoint's "model" section)."""
    return {"model": json.dumps(asdict(cfg), sort_keys=True)}


def model_of(hyper: dict) -> UNetConfig:
    return unet_config({"model": json.loads(hyper["model"])})


def schedule_of(hyper: dict) -> Schedule:
    return Schedule(ScheduleConfig(hyper["beta_start"], hyper["beta_end"], hyper["num_timesteps"]))


def resnet_block(hyper: dict) -> ResnetBlock:
    body = DENSE if hyper["method"] == "fp" else BinaryLayers(hyper["method"]).at(hyper["resolution"])
    return ResnetBlock(hyper["in_channels"], hyper["out_channels"], hyper["temb_channels"], 0.0, rng=init_rng(),
                       body=body, groups=hyper["groups"])


@op("resnet_block")
def run_resnet_block(params: Arrays, inputs: Arrays, hyper: dict) -> Result:
    expect = close if hyper["method"] == "fp" else nmse
    return forward_backward(resnet_block(hyper), params, inputs, ("x", "temb"), ("x", "temb"), expect)


def draw_resnet_block(rng: np.random.Generator, method: str) -> Draw:
    hyper = dict(method=method, in_channels=4, out_channels=8, temb_channels=16, groups=2, resolution=5)
    block = resnet_block(hyper)
    params = random_params(block, rng)
    x = away(rng, (2, 4, 5, 5))                                                   # [N, Ci, H, W]
    temb = normal(rng, (2, 16))                                                   # [N, E]
    kind = "FP" if method == "fp" else "BiDM-binarized (conv1, conv2, temb_proj)"
    return Draw(params, {"x": x, "temb": temb, "dout": upstream(rng, block, x, temb)}, hyper,
                f"ddim ResnetBlock 4->8 channels, {kind}, GroupNorm 2 groups, 1x1 nin_shortcut, no dropout: "
                "y = shortcut(x) + conv2(SiLU(norm2(conv1(SiLU(norm1(x))) + temb_proj(SiLU(temb)))))")


for _method in ("fp", "bidm"):
    case("models", f"resnet_block__{_method}_c4_c8")(partial(draw_resnet_block, method=_method))


@op("unet")
def run_unet(params: Arrays, inputs: Arrays, hyper: dict) -> Result:
    model = UNet(model_of(hyper), rng=init_rng())
    result = forward_backward(model, params, inputs, ("x", "t"), ("x",), nmse)
    return Result({"eps": result.outputs["y"]}, result.grads)


@case("models", "unet__micro_fp")
def unet_micro_fp(rng: np.random.Generator) -> Draw:
    cfg = MICRO
    model = UNet(cfg, rng=init_rng())
    params = random_params(model, rng)
    x = normal(rng, (1, cfg.in_channels, cfg.resolution, cfg.resolution))         # [N, C, H, W]
    t = np.array([537], dtype=np.int64)                                           # [N]
    return Draw(params, {"x": x, "t": t, "dout": upstream(rng, model, x, t)}, model_hyper(cfg),
                "the MICRO FP UNet (ddim's architecture and parameter names; every block type of the `tiny` preset at "
                "ch 4): eps = UNet(x_t, t) and the gradients of sum(dout * eps) w.r.t. x_t and every parameter")


@op("schedule")
def run_schedule(params: Arrays, inputs: Arrays, hyper: dict) -> Result:
    schedule = schedule_of(hyper)
    return Result(outputs={
        "betas": close(schedule.betas),                                           # [T]
        "alphas_cumprod": close(schedule.alphas_cumprod),                         # [T]
        "x_t": close(schedule.q_sample(inputs["x0"], inputs["t"], inputs["eps"])),  # [N, C, H, W]
    })


@case("diffusion", "schedule__linear_t1000")
def schedule_linear(rng: np.random.Generator) -> Draw:
    inputs = {"x0": normal(rng, (3, 1, 4, 4)), "t": np.array([0, 500, 999], dtype=np.int64),
              "eps": normal(rng, (3, 1, 4, 4))}
    return Draw({}, inputs, asdict(SCHEDULE),
                "linear beta schedule (float64): betas = linspace(beta_start, beta_end, T), alphas_cumprod = "
                "cumprod(1 - betas); x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps")


@op("ddim")
def run_ddim(params: Arrays, inputs: Arrays, hyper: dict) -> Result:
    model = load_params(UNet(model_of(hyper), rng=init_rng()), params)
    noise = iter(inputs.get("noise", ()))
    timesteps, eps, trajectory = [], [], []

    def record(step: int, t: int, x: np.ndarray, e: np.ndarray) -> None:
        timesteps.append(t)
        trajectory.append(x)
        eps.append(e)

    x0 = sample_ddim(sampling_eps_fn(model), inputs["x_T"], schedule_of(hyper), hyper["steps"], hyper["eta"],
                     noise_fn=lambda shape: next(noise), callback=record)         # [N, C, H, W]
    return Result(outputs={
        "timesteps": exact(np.array(timesteps, dtype=np.int64)),                  # [S]
        "eps": nmse(np.stack(eps)),                                               # [S, N, C, H, W]
        "trajectory": nmse(np.stack([*trajectory, x0])),                          # [S+1, N, C, H, W]
    })


def draw_ddim(rng: np.random.Generator, eta: float, steps: int = 5) -> Draw:
    model = UNet(MICRO, rng=init_rng())
    params = random_params(model, rng)
    shape = (2, MICRO.in_channels, MICRO.resolution, MICRO.resolution)
    inputs = {"x_T": normal(rng, shape)}                                          # [N, C, H, W]
    if eta > 0:
        inputs["noise"] = normal(rng, (steps, *shape))                            # [S, N, C, H, W]
    hyper = model_hyper(MICRO) | asdict(SCHEDULE) | dict(steps=steps, eta=eta)
    return Draw(params, inputs, hyper,
                f"DDIM, {steps} steps (timesteps range(0, T, T // S) in reverse), eta {eta:g}, with the MICRO FP UNet: "
                "trajectory[s] is x entering step s (trajectory[0] = x_T, trajectory[S] = the result), eps[s] the "
                "model's prediction there" + ("; noise[s] is the z of step s (x_next += c1 z)" if eta > 0 else ""))


for _eta, _name in [(0.0, "eta0"), (1.0, "eta1")]:
    case("diffusion", f"ddim__micro_s5_{_name}")(partial(draw_ddim, eta=_eta))
