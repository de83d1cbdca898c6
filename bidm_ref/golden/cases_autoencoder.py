"""Golden cases of the latent-diffusion first stage (group "autoencoder"): the KL term and one training step.

Dimensions: N batch, C, H, W image, Z, h, w latent.

    kl               kl = sum 0.5 (mean^2 + exp(logvar) - 1 - logvar) / N; grads mean, logvar
    autoencoder_step AutoencoderObjective.forward_backward on MICRO_AE with the stored eps: encode (the
                     encoder, quant_conv, logvar clipped to [-30, 20]), z = mean + exp(logvar / 2) eps, decode
                     (post_quant_conv, the decoder), loss = rec + kl_weight * kl; outputs mean, logvar, x_rec,
                     loss, rec, kl; grads of every parameter. Exercises ResnetBlocks without timestep
                     embedding, the encoder/decoder levels, the middle attention and both heads.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from functools import partial

import numpy as np

from ..loading.latent import autoencoder_config
from ..models.autoencoder import Autoencoder, AutoencoderConfig, kl_divergence, reparameterize
from ..train.autoencoder import AutoencoderLossConfig, AutoencoderObjective
from .draws import normal, random_params
from .format import Arrays
from .harness import init_rng, load_params
from .registry import Draw, Result, case, close, nmse, op

MICRO_AE = AutoencoderConfig(ch=4, ch_mult=(1, 2), num_res_blocks=1, z_channels=2, in_channels=1, resolution=8,
                             groups=2)


@op("kl")
def run_kl(params: Arrays, inputs: Arrays, hyper: dict) -> Result:
    kl, dmean, dlogvar = kl_divergence(inputs["mean"], inputs["logvar"])
    return Result(outputs={"kl": close(np.float64(kl))}, grads={"mean": close(dmean), "logvar": close(dlogvar)})


@case("autoencoder", "kl__n3_z2")
def kl_n3(rng: np.random.Generator) -> Draw:
    shape = (3, 2, 2, 2)
    return Draw({}, {"mean": normal(rng, shape), "logvar": normal(rng, shape)}, {},
                "KL(N(mean, exp(logvar)) || N(0, I)) summed per sample, mean over the batch: "
                "kl = sum 0.5 (mean^2 + exp(logvar) - 1 - logvar) / N")


@op("autoencoder_step")
def run_autoencoder_step(params: Arrays, inputs: Arrays, hyper: dict) -> Result:
    cfg = autoencoder_config({"autoencoder": json.loads(hyper["autoencoder"])}, "golden case")
    ae = load_params(Autoencoder(cfg, rng=init_rng()), params)
    loss_cfg = AutoencoderLossConfig(hyper["reconstruction"], hyper["kl_weight"])
    x0, eps = inputs["x0"], inputs["eps"]                                         # [N, C, H, W], [N, Z, h, w]
    mean, logvar, _ = ae.encode(x0)                                               # [N, Z, h, w] each
    x_rec, _ = ae.decode(reparameterize(mean, logvar, eps)[0])                    # [N, C, H, W]
    metrics = AutoencoderObjective(ae, loss_cfg).forward_backward(x0, eps)
    outputs = {"mean": nmse(mean), "logvar": nmse(logvar), "x_rec": nmse(x_rec)}
    outputs |= {key: close(np.float64(metrics[key]), rtol=1e-6) for key in ("loss", "rec", "kl")}
    return Result(outputs=outputs, grads={name: nmse(g) for name, g in ae.named_grads()})


def draw_autoencoder_step(rng: np.random.Generator, reconstruction: str, kl_weight: float) -> Draw:
    ae = Autoencoder(MICRO_AE, rng=init_rng())
    params = random_params(ae, rng)
    x0 = normal(rng, (2, MICRO_AE.in_channels, MICRO_AE.resolution, MICRO_AE.resolution))  # [N, C, H, W]
    eps = normal(rng, (2, *MICRO_AE.latent_shape))                                # [N, Z, h, w]
    hyper = {"autoencoder": json.dumps(asdict(MICRO_AE), sort_keys=True), "reconstruction": reconstruction,
             "kl_weight": kl_weight}
    return Draw(params, {"x0": x0, "eps": eps}, hyper,
                f"one training step of the MICRO autoencoder (LDM's AutoencoderKL, ch 4, ch_mult (1, 2), z 2, 8x8 -> "
                f"4x4x2): z = mean + exp(logvar / 2) eps, loss = {reconstruction} reconstruction (sum per sample, mean "
                f"over the batch) + {kl_weight:g} * kl; gradients of every parameter", arg_order=("x0", "eps"))


case("autoencoder", "autoencoder_step__micro_l1_kl1e-6")(partial(draw_autoencoder_step, reconstruction="l1",
                                                                  kl_weight=1e-6))
case("autoencoder", "autoencoder_step__micro_l2_kl0_5")(partial(draw_autoencoder_step, reconstruction="l2",
                                                                 kl_weight=0.5))
