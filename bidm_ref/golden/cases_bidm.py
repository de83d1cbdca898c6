"""Golden cases of BiDM's own parts (group "bidm"): TBS mixing, the SPD and L2 feature losses, one training step.

Dimensions: N batch, C, H, W a unit's output, B = n_buckets, n connected units, p patches per side.

    tbs        out = (1 - a[j, k]) h + a[j, k] cached, j = t // (T // B), k = unit - first connected unit;
               grads h and a (two images share a bucket: their da add up)
    spd / l2   L over two units' student and teacher features; grads of L w.r.t. the student features
    bidm_step  BiDMObjective.step on the MICRO UNet: student = BiDM-binarized teacher with 2 TBS connections,
               SPD; the step draws t and eps from default_rng(step_seed), stored in /inputs so a port needs
               no NumPy RNG; outputs loss, noise_loss, distill_loss; grads of every student parameter
"""

from __future__ import annotations

from dataclasses import asdict
from dataclasses import fields as dataclass_fields
from functools import partial

import numpy as np

from ..bidm.config import BiDMConfig
from ..bidm.objective import BiDMObjective
from ..bidm.spd import l2_loss, spd_loss
from ..bidm.student import build_student, build_unet
from ..bidm.tbs import TBS, last_units_tbs
from ..binary.methods import BinaryLayers
from ..diffusion.loss import draw_timesteps
from ..models.config import UNetConfig
from ..models.unet import UNet
from ..nn.factory import DENSE
from .cases_model import MICRO, SCHEDULE, model_hyper, model_of, schedule_of
from .draws import f32, normal, random_params
from .format import Arrays, GoldenError
from .harness import forward_backward, init_rng, load_params, upstream
from .registry import Draw, Result, case, close, nmse, op


def tbs_mixer(hyper: dict) -> TBS:
    return last_units_tbs(hyper["num_units"], hyper["first_decoder_unit"], hyper["connections"],
                          hyper["num_timesteps"], hyper["n_buckets"])


@op("tbs")
def run_tbs(params: Arrays, inputs: Arrays, hyper: dict) -> Result:
    mixer = load_params(tbs_mixer(hyper), params)
    mixer.remember([inputs["cached"]] * hyper["num_units"])
    b = hyper["unit"]
    out, cache = mixer.forward(b, inputs["h"], inputs["t"])                       # [N, C, H, W]
    dh = mixer.backward(b, inputs["dout"], cache)                                 # [N, C, H, W]
    return Result(outputs={"out": close(out)}, grads={"h": close(dh), "a": close(mixer.grads["a"])})


@case("bidm", "tbs__unit7_of8_n2")
def tbs_unit7(rng: np.random.Generator) -> Draw:
    hyper = dict(num_units=8, first_decoder_unit=4, connections=2, num_timesteps=1000, n_buckets=100, unit=7)
    params = random_params(tbs_mixer(hyper), rng)
    shape = (4, 3, 4, 4)
    inputs = {"h": normal(rng, shape), "cached": normal(rng, shape), "t": np.array([0, 9, 10, 999], dtype=np.int64),
              "dout": normal(rng, shape)}
    return Draw(params, inputs, hyper,
                "TBS mixing of unit 7 (connected units 6, 7: a[:, 1]): out = (1 - a[j, 1]) h + a[j, 1] cached with "
                "j = t // 10; t = 0 and 9 share bucket 0, so their da add up", arg_order=("h", "t", "cached"))


def feature_lists(inputs: Arrays) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(student features, teacher features) from inputs features.<b>, teacher.<b>."""
    units = sum(name.startswith("features.") for name in inputs)
    return [inputs[f"features.{b}"] for b in range(units)], [inputs[f"teacher.{b}"] for b in range(units)]


def run_feature_loss(params: Arrays, inputs: Arrays, hyper: dict, name: str) -> Result:
    features, teacher = feature_lists(inputs)
    if name == "spd":
        loss, grads = spd_loss(features, teacher, hyper["patches"], hyper["variant"])
    else:
        loss, grads = l2_loss(features, teacher)
    return Result(outputs={"loss": close(np.float64(loss))},
                  grads={f"features.{b}": close(g) for b, g in enumerate(grads)})


for _name in ("spd", "l2"):
    op(_name)(partial(run_feature_loss, name=_name))


def draw_feature_loss(rng: np.random.Generator, hyper: dict, description: str) -> Draw:
    shapes = [(2, 4, 8, 8), (2, 8, 4, 4)]
    inputs = {f"features.{b}": normal(rng, s) for b, s in enumerate(shapes)}
    inputs |= {f"teacher.{b}": normal(rng, s) for b, s in enumerate(shapes)}
    return Draw({}, inputs, hyper, description)


case("bidm", "spd__gram_p4")(partial(
    draw_feature_loss, hyper=dict(patches=4, variant="gram"),
    description="SPD (official code's per-channel Gram): per patch Q = P P^T [N, C, h, h], Qn = Q / ||Q||_F (whole "
                "tensor), l = sqrt(||Qn - Qn_teacher||_F^2 + 1e-12); L = mean over units and 4x4 patches"))
case("bidm", "spd__token_p4")(partial(
    draw_feature_loss, hyper=dict(patches=4, variant="token"),
    description="SPD (paper's token map): per patch Q = P' P'^T with P' = P as [N, h*w, C], then as the gram variant"))
case("bidm", "l2__two_units")(partial(
    draw_feature_loss, hyper={}, description="L2 feature loss: L = mean over units of mean((F - F_teacher)^2)"))


def step_draws(step_seed: int, shape: tuple[int, ...], num_timesteps: int) -> tuple[np.ndarray, np.ndarray]:
    """(t [N], eps [N, C, H, W]) as BiDMObjective.step draws them from default_rng(step_seed), in its order."""
    rng = np.random.default_rng(step_seed)
    t = draw_timesteps(rng, shape[0], num_timesteps)                              # [N]
    return t, rng.standard_normal(shape)                                          # [N], [N, C, H, W]


MICRO3 = UNetConfig(ch=4, ch_mult=(1, 1, 1), num_res_blocks=1, attn_resolutions=(4,), dropout=0.0, in_channels=1,
                    out_ch=1, resolution=8, groups=2)  # a small UNet the official CIFAR TBS layout fits


V1_STEP_KEYS = ("tbs_connections", "tbs_train_gap", "distill", "spd_lambda", "spd_patches", "spd_variant")


def v1_step_hyper(bidm: BiDMConfig) -> dict:
    """The BiDMConfig of a bidm_step case under its v1 keys (lambda was `spd_lambda` then), in their v1 order."""
    fields = asdict(bidm) | {"spd_lambda": bidm.distill_lambda}
    return {key: fields[key] for key in V1_STEP_KEYS}


STEP_KEYS = {*V1_STEP_KEYS, *(f.name for f in dataclass_fields(BiDMConfig))}  # a later case may set any field


@op("bidm_step")
def run_bidm_step(params: Arrays, inputs: Arrays, hyper: dict) -> Result:
    cfg, schedule = model_of(hyper), schedule_of(hyper)
    bidm = BiDMConfig.from_saved({key: value for key, value in hyper.items() if key in STEP_KEYS})
    teacher = load_params(build_unet(cfg, DENSE, 0, schedule.T), params, prefix="teacher.")
    student = load_params(build_unet(cfg, BinaryLayers(hyper["method"]), bidm.tbs_connections, schedule.T), params,
                          prefix="student.")
    x0 = inputs["x0"]                                                             # [N, C, H, W]
    t, eps = step_draws(hyper["step_seed"], x0.shape, schedule.T)                 # [N], [N, C, H, W]
    if not (np.array_equal(t, inputs["t"]) and np.array_equal(eps, inputs["eps"])):
        raise GoldenError("bidm_step: the stored t / eps are not the draws of default_rng(step_seed)")
    metrics = BiDMObjective(student, teacher, schedule, bidm).step(x0, np.random.default_rng(hyper["step_seed"]))
    return Result(outputs={key: close(np.float64(metrics[key])) for key in ("loss", "noise_loss", "distill_loss")},
                  grads={f"student.{name}": nmse(g) for name, g in student.named_grads()})


def draw_bidm_step(rng: np.random.Generator, cfg: UNetConfig, bidm: BiDMConfig, later: dict, description: str) -> Draw:
    """One BiDM training step's case on `cfg`; `later`: the BiDMConfig fields a case added after v1's first files
    sets, under their own names."""
    T = SCHEDULE.num_timesteps
    teacher = random_params(build_unet(cfg, DENSE, 0, T), rng)
    student = build_student(cfg, "bidm", teacher, init_rng(), bidm.tbs_connections, T)
    extras = random_params(student, rng, only=set(student.state_dict()) - set(teacher))
    student_params = {name: f32(value) for name, value in student.named_parameters()} | extras
    step_seed = int(rng.integers(2**31))
    x0 = f32(rng.uniform(-1, 1, (2, cfg.in_channels, cfg.resolution, cfg.resolution)))  # [N, C, H, W]
    t, eps = step_draws(step_seed, x0.shape, T)                                   # [N], [N, C, H, W]
    params = {f"teacher.{k}": v for k, v in teacher.items()} | {f"student.{k}": v for k, v in student_params.items()}
    hyper = model_hyper(cfg) | asdict(SCHEDULE) | v1_step_hyper(bidm) | later | dict(method="bidm", step_seed=step_seed)
    return Draw(params, {"x0": x0, "t": t, "eps": eps}, hyper, description, arg_order=("x0",))


@case("bidm", "bidm_step__micro_tbs2_spd")
def bidm_step_micro(rng: np.random.Generator) -> Draw:
    bidm = BiDMConfig(tbs_connections=2, distill="spd", distill_lambda=1e-2)  # the weight this v1 case was made with
    return draw_bidm_step(
        rng, MICRO, bidm, {},
        "one BiDM training step on the MICRO UNet: t' = min(t + 1, T - 1); student at "
        "q_sample(x0, t', eps) without cache -> TBS cache; FP teacher at (x_t, t) -> SPD targets; student at "
        "(x_t, t) with the cache -> L = mean_N sum (eps - eps_pred)^2 + spd_lambda * L_SPD, backpropagated "
        "into the student only. The student's float weights equal the teacher's (the start of distillation)")


@case("bidm", "bidm_step__micro3_tbs2_spd_official_positions")
def bidm_step_official_positions(rng: np.random.Generator) -> Draw:
    bidm = BiDMConfig(tbs_connections=2, distill="spd", distill_lambda=0.5, spd_patches=2,
                      distill_positions="official")
    return draw_bidm_step(
        rng, MICRO3, bidm, {"distill_positions": "official"},
        "one BiDM training step on MICRO3 as bidm_step__micro_tbs2_spd, but SPD (p = 2) compares the official "
        "CIFAR code's feature positions instead of the unit outputs: down.0.downsample and down.1.downsample "
        "(the downsample conv outputs), the conv2 output of down.2.block.0 and of mid.block_2 (before their "
        "residual adds), then up.2.upsample and up.1.upsample; their gradients enter the backward there")


def tbs_student(hyper: dict) -> UNet:
    """The binary student UNet of a tbs_unet case with its TBS mixer in the case's layout."""
    return build_unet(model_of(hyper), BinaryLayers(hyper["method"]), hyper["tbs_connections"],
                      hyper["num_timesteps"], init_rng(), hyper["tbs_layout"])


@op("tbs_unet")
def run_tbs_unet(params: Arrays, inputs: Arrays, hyper: dict) -> Result:
    model = tbs_student(hyper)
    model.mixer.remember({p: inputs[f"cache.{p}"] for p in model.mixer.sources})
    result = forward_backward(model, params, inputs, ("x", "t"), ("x",), nmse)
    return Result({"eps": result.outputs["y"]}, result.grads)


@case("bidm", "tbs_unet__micro3_official_cifar")
def tbs_unet_official_cifar(rng: np.random.Generator) -> Draw:
    hyper = model_hyper(MICRO3) | dict(method="bidm", tbs_connections=2, tbs_layout="official-cifar",
                                       num_timesteps=SCHEDULE.num_timesteps)
    model = tbs_student(hyper)
    params = random_params(model, rng)
    load_params(model, params)
    x = normal(rng, (2, MICRO3.in_channels, MICRO3.resolution, MICRO3.resolution))  # [N, C, H, W]
    t = np.array([15, 640], dtype=np.int64)                                       # [N]
    _, cache = model.forward(x, t)
    shapes = UNet.point_outputs(cache)
    caches = {f"cache.{p}": normal(rng, shapes[p].shape) for p in model.mixer.sources}  # [N, C, H, W] each
    model.mixer.remember({p: caches[f"cache.{p}"] for p in model.mixer.sources})
    return Draw(params, {"x": x, "t": t, **caches, "dout": upstream(rng, model, x, t)}, hyper,
                "a BiDM student UNet (3 levels, attention on level 1) with TBS in the official CIFAR code's layout, "
                "given the previous step's outputs cache.up.2.upsample and cache.up.1.upsample: each up.1 unit "
                "(ResnetBlock + AttnBlock) output L becomes (1 - a[j, 1]) L + a[j, 1] cache.up.2.upsample and the "
                "up.1.upsample output U becomes (1 - a[j, 1]) U + a[j, 1] cache.up.1.upsample, j = t // 10, a = tbs.a "
                "[100, 3]; no other position mixes; eps and the gradients of sum(dout * eps) w.r.t. x and every "
                "parameter (none into the caches)", arg_order=("x", "t"))
