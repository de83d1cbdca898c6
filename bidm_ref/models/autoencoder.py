"""The first stage of latent diffusion: a KL-regularised convolutional autoencoder (LDM's AutoencoderKL).

Dimensions: N batch, C image channels, H = W = resolution, Z latent channels, h = w = H / f with
f = 2^(len(ch_mult) - 1) the downsampling factor, Ch channels of a level (ch * ch_mult[i]).

    encoder : conv_in; per level num_res_blocks ResnetBlocks (+ Downsample except the last);
              mid block_1, attn_1, block_2; SiLU(norm_out); conv_out -> 2Z channels
    moments = quant_conv(encoder(x))                         [N, 2Z, h, w] = concat(mean, logvar)
    logvar  = clip(logvar, -30, 20)                          (LDM's DiagonalGaussianDistribution)
    z       = mean + exp(logvar / 2) * eps,  eps ~ N(0, I)   (reparameterised sample; `mode` = mean)
    decoder : post_quant_conv; conv_in; mid as above; per level (deepest first) num_res_blocks + 1
              ResnetBlocks (+ Upsample except the first level); SiLU(norm_out); conv_out -> C channels

The blocks are the engine's ddim blocks without a timestep embedding (temb_channels = 0), all full
precision: BiDM binarizes the UNet only and keeps the first stage as it is (the paper's LDM rows).
Parameter names follow LDM's AutoencoderKL state dict (encoder.down.0.block.0.conv1.weight, ...).

Training loss per batch (sums over a sample's pixels or latent entries, mean over the batch, as LDM):

    rec = sum |x_rec - x| / N           (l1, LDM's choice)  or  sum (x_rec - x)^2 / N  (l2)
    kl  = sum 0.5 (mean^2 + exp(logvar) - 1 - logvar) / N   (KL(q(z|x) || N(0, I)))
    L   = rec + kl_weight * kl          (kl_weight 1e-6 as LDM's kl-f4/f8 configs)

LDM adds a perceptual (LPIPS) term and a patch-GAN discriminator to make large natural images
sharp. We leave both out: LPIPS needs a pretrained VGG16 (weights we cannot fetch at run time, and a
backward through VGG would cost ~10x the autoencoder's on CPU), and the GAN doubles the training and
adds its instability to a budget of minutes; on 32x32 grey Fashion-MNIST a pixel loss already
reconstructs the garments (reconstruction quality is in README, "Latent diffusion"). Every UNet in
the latent table uses the same frozen autoencoder, so its blur is common to all rows.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..nn.attention import AttnBlock
from ..nn.conv import Conv2d
from ..nn.groupnorm import GroupNorm
from ..nn.module import Module, ModuleList
from ..nn.resample import Downsample, Upsample
from ..nn.resblock import ResnetBlock

LOGVAR_RANGE = (-30.0, 20.0)


@dataclass(frozen=True)
class AutoencoderConfig:
    ch: int = 16
    ch_mult: tuple[int, ...] = (1, 2, 4)
    num_res_blocks: int = 1
    z_channels: int = 4
    in_channels: int = 1
    resolution: int = 32
    groups: int = 8

    def __post_init__(self) -> None:
        if self.resolution % self.factor:
            raise ValueError(f"resolution {self.resolution} is not divisible by the downsampling factor {self.factor}")
        bad = [self.ch * m for m in (1, *self.ch_mult) if (self.ch * m) % self.groups]
        if bad:
            raise ValueError(f"channel counts {bad} are not divisible by groups={self.groups}: change ch or groups")

    @property
    def factor(self) -> int:
        """f: the image side over the latent side."""
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(Z, h, w) of one image's latent."""
        side = self.resolution // self.factor
        return self.z_channels, side, side


AE_PRESETS: dict[str, AutoencoderConfig] = {
    "f4": AutoencoderConfig(ch_mult=(1, 2, 4), z_channels=4),   # 32x32x1 -> 8x8x4 (4x fewer numbers)
    "f2": AutoencoderConfig(ch_mult=(1, 2), z_channels=2),      # 32x32x1 -> 16x16x2 (2x fewer, gentler)
}


def ae_preset(name: str, channels: int) -> AutoencoderConfig:
    """An autoencoder preset with in/out channels set to the dataset's channel count."""
    if name not in AE_PRESETS:
        raise ValueError(f"unknown autoencoder preset {name!r}: choose one of {sorted(AE_PRESETS)}")
    return replace(AE_PRESETS[name], in_channels=channels)


class Middle(Module):
    """ResnetBlock, AttnBlock, ResnetBlock at the lowest resolution (children block_1, attn_1, block_2)."""

    def __init__(self, channels: int, groups: int, rng: np.random.Generator) -> None:
        super().__init__()
        self.block_1 = self.add_child("block_1", ResnetBlock(channels, channels, 0, 0.0, rng=rng, groups=groups))
        self.attn_1 = self.add_child("attn_1", AttnBlock(channels, rng=rng, groups=groups))
        self.block_2 = self.add_child("block_2", ResnetBlock(channels, channels, 0, 0.0, rng=rng, groups=groups))

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, tuple]:
        h, c1 = self.block_1.forward(x)                                           # [N, Ch, h, w]
        h, ca = self.attn_1.forward(h)                                            # [N, Ch, h, w]
        h, c2 = self.block_2.forward(h)                                           # [N, Ch, h, w]
        return h, (c1, ca, c2)

    def backward(self, dy: np.ndarray, cache: tuple) -> np.ndarray:
        c1, ca, c2 = cache
        dh, _ = self.block_2.backward(dy, c2)                                     # [N, Ch, h, w]
        dh = self.attn_1.backward(dh, ca)                                         # [N, Ch, h, w]
        return self.block_1.backward(dh, c1)[0]                                   # [N, Ch, h, w]


class Level(Module):
    """One resolution of the encoder or decoder: children `block` (ResnetBlocks) and optional `downsample`/`upsample`."""

    def __init__(self, channels_in: int, channels: int, blocks: int, resample: str | None, groups: int,
                 rng: np.random.Generator) -> None:
        super().__init__()
        self.block = self.add_child("block", ModuleList())
        for i in range(blocks):
            self.block.append(ResnetBlock(channels_in if i == 0 else channels, channels, 0, 0.0, rng=rng, groups=groups))
        self.resample = None
        if resample == "downsample":
            self.resample = self.add_child("downsample", Downsample(channels, True, rng=rng))
        elif resample == "upsample":
            self.resample = self.add_child("upsample", Upsample(channels, True, rng=rng))

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, tuple]:
        caches = []
        for block in self.block:
            x, c = block.forward(x)                                               # [N, Ch, H', W']
            caches.append(c)
        c_rs = None
        if self.resample is not None:
            x, c_rs = self.resample.forward(x)                                    # [N, Ch, H'/2 or 2H', ...]
        return x, (caches, c_rs)

    def backward(self, dy: np.ndarray, cache: tuple) -> np.ndarray:
        caches, c_rs = cache
        if self.resample is not None:
            dy = self.resample.backward(dy, c_rs)                                 # [N, Ch, H', W']
        for block, c in zip(reversed(list(self.block)), reversed(caches)):
            dy, _ = block.backward(dy, c)                                         # [N, Ci, H', W']
        return dy


class Head(Module):
    """SiLU(norm_out(x)) then conv_out (3x3): the last layers of the encoder and the decoder."""

    def __init__(self, channels: int, out_channels: int, groups: int, rng: np.random.Generator) -> None:
        super().__init__()
        self.norm_out = self.add_child("norm_out", GroupNorm(groups, channels))
        self.conv_out = self.add_child("conv_out", Conv2d(channels, out_channels, 3, 1, 1, rng=rng))

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, tuple]:
        h, c_n = self.norm_out.forward(x, silu=True)                              # [N, Ch, H', W'] SiLU(norm_out(x))
        y, c_c = self.conv_out.forward(h)                                         # [N, Co, H', W']
        return y, (c_n, c_c)

    def backward(self, dy: np.ndarray, cache: tuple) -> np.ndarray:
        c_n, c_c = cache
        dh = self.conv_out.backward(dy, c_c)                                      # [N, Ch, H', W']
        return self.norm_out.backward(dh, c_n)                                    # [N, Ch, H', W']


class Encoder(Module):
    """x [N, C, H, W] -> encoder features [N, 2Z, h, w] (before quant_conv)."""

    def __init__(self, cfg: AutoencoderConfig, rng: np.random.Generator) -> None:
        super().__init__()
        widths = [cfg.ch * m for m in cfg.ch_mult]
        last = len(widths) - 1
        self.conv_in = self.add_child("conv_in", Conv2d(cfg.in_channels, cfg.ch, 3, 1, 1, rng=rng))
        self.down = self.add_child("down", ModuleList())
        for i, width in enumerate(widths):
            width_in = cfg.ch if i == 0 else widths[i - 1]
            self.down.append(Level(width_in, width, cfg.num_res_blocks, None if i == last else "downsample",
                                   cfg.groups, rng))
        self.mid = self.add_child("mid", Middle(widths[-1], cfg.groups, rng))
        self.head = Head(widths[-1], 2 * cfg.z_channels, cfg.groups, rng)
        self.children.update(self.head.children)  # norm_out, conv_out directly under encoder., as LDM

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, tuple]:
        h, c_in = self.conv_in.forward(x)                                         # [N, ch, H, W]
        c_levels = []
        for level in self.down:
            h, c = level.forward(h)                                               # [N, Ch, H/2^i, W/2^i]
            c_levels.append(c)
        h, c_mid = self.mid.forward(h)                                            # [N, Ch, h, w]
        y, c_head = self.head.forward(h)                                          # [N, 2Z, h, w]
        return y, (c_in, c_levels, c_mid, c_head)

    def backward(self, dy: np.ndarray, cache: tuple) -> np.ndarray:
        c_in, c_levels, c_mid, c_head = cache
        dh = self.head.backward(dy, c_head)                                       # [N, Ch, h, w]
        dh = self.mid.backward(dh, c_mid)                                         # [N, Ch, h, w]
        for level, c in zip(reversed(list(self.down)), reversed(c_levels)):
            dh = level.backward(dh, c)                                            # [N, Ch_in, ...]
        return self.conv_in.backward(dh, c_in)                                    # [N, C, H, W]


class Decoder(Module):
    """z [N, Z, h, w] (after post_quant_conv) -> x_rec [N, C, H, W]."""

    def __init__(self, cfg: AutoencoderConfig, rng: np.random.Generator) -> None:
        super().__init__()
        widths = [cfg.ch * m for m in cfg.ch_mult]
        self.conv_in = self.add_child("conv_in", Conv2d(cfg.z_channels, widths[-1], 3, 1, 1, rng=rng))
        self.mid = self.add_child("mid", Middle(widths[-1], cfg.groups, rng))
        levels: dict[int, Level] = {}
        width_in = widths[-1]
        for i in reversed(range(len(widths))):  # deepest first, as LDM (which stores them as up.0 ... up.L-1)
            levels[i] = Level(width_in, widths[i], cfg.num_res_blocks + 1, None if i == 0 else "upsample",
                              cfg.groups, rng)
            width_in = widths[i]
        self.up = self.add_child("up", ModuleList([levels[i] for i in range(len(widths))]))
        self.head = Head(widths[0], cfg.in_channels, cfg.groups, rng)
        self.children.update(self.head.children)

    def forward(self, z: np.ndarray) -> tuple[np.ndarray, tuple]:
        h, c_in = self.conv_in.forward(z)                                         # [N, Ch, h, w]
        h, c_mid = self.mid.forward(h)                                            # [N, Ch, h, w]
        c_levels = []
        for level in reversed(list(self.up)):
            h, c = level.forward(h)                                               # [N, Ch, ..., ...] (x2 per level)
            c_levels.append(c)
        y, c_head = self.head.forward(h)                                          # [N, C, H, W]
        return y, (c_in, c_mid, c_levels, c_head)

    def backward(self, dy: np.ndarray, cache: tuple) -> np.ndarray:
        c_in, c_mid, c_levels, c_head = cache
        dh = self.head.backward(dy, c_head)                                       # [N, ch, H, W]
        for level, c in zip(self.up, reversed(c_levels)):
            dh = level.backward(dh, c)                                            # [N, Ch_in, ...]
        dh = self.mid.backward(dh, c_mid)                                         # [N, Ch, h, w]
        return self.conv_in.backward(dh, c_in)                                    # [N, Z, h, w]


class Autoencoder(Module):
    """LDM's AutoencoderKL: children encoder, decoder, quant_conv (1x1, 2Z -> 2Z), post_quant_conv (1x1, Z -> Z)."""

    def __init__(self, cfg: AutoencoderConfig, *, rng: np.random.Generator) -> None:
        super().__init__()
        self.cfg = cfg
        Z = cfg.z_channels
        self.encoder = self.add_child("encoder", Encoder(cfg, rng))
        self.decoder = self.add_child("decoder", Decoder(cfg, rng))
        self.quant_conv = self.add_child("quant_conv", Conv2d(2 * Z, 2 * Z, 1, 1, 0, rng=rng))
        self.post_quant_conv = self.add_child("post_quant_conv", Conv2d(Z, Z, 1, 1, 0, rng=rng))

    def encode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple]:
        """x [N, C, H, W] -> (mean [N, Z, h, w], logvar [N, Z, h, w] clipped to LOGVAR_RANGE, cache)."""
        h, c_enc = self.encoder.forward(x)                                        # [N, 2Z, h, w]
        moments, c_q = self.quant_conv.forward(h)                                 # [N, 2Z, h, w]
        mean, raw_logvar = np.split(moments, 2, axis=1)                           # [N, Z, h, w] each
        logvar = np.clip(raw_logvar, *LOGVAR_RANGE)                               # [N, Z, h, w]
        inside = (raw_logvar >= LOGVAR_RANGE[0]) & (raw_logvar <= LOGVAR_RANGE[1])
        return mean, logvar, (c_enc, c_q, inside)

    def encode_backward(self, dmean: np.ndarray, dlogvar: np.ndarray, cache: tuple) -> np.ndarray:
        """(dL/dmean, dL/dlogvar) [N, Z, h, w] -> dL/dx [N, C, H, W]; no gradient where logvar was clipped."""
        c_enc, c_q, inside = cache
        dmoments = np.concatenate([dmean, dlogvar * inside], axis=1)              # [N, 2Z, h, w]
        dh = self.quant_conv.backward(dmoments, c_q)                              # [N, 2Z, h, w]
        return self.encoder.backward(dh, c_enc)                                   # [N, C, H, W]

    def decode(self, z: np.ndarray) -> tuple[np.ndarray, tuple]:
        """z [N, Z, h, w] -> (x_rec [N, C, H, W], cache)."""
        h, c_pq = self.post_quant_conv.forward(z)                                 # [N, Z, h, w]
        x, c_dec = self.decoder.forward(h)                                        # [N, C, H, W]
        return x, (c_pq, c_dec)

    def decode_backward(self, dx: np.ndarray, cache: tuple) -> np.ndarray:
        c_pq, c_dec = cache
        dh = self.decoder.backward(dx, c_dec)                                     # [N, Z, h, w]
        return self.post_quant_conv.backward(dh, c_pq)                            # [N, Z, h, w]


def reparameterize(mean: np.ndarray, logvar: np.ndarray, eps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """z = mean + exp(logvar / 2) * eps; returns (z, std) (std is what the backward needs)."""
    std = np.exp(0.5 * logvar)                                                    # [N, Z, h, w]
    return mean + std * eps, std


def reparameterize_backward(dz: np.ndarray, std: np.ndarray, eps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """dz -> (dmean, dlogvar): dz/dmean = 1, dz/dlogvar = eps * std / 2."""
    return dz, dz * eps * std * 0.5


def kl_divergence(mean: np.ndarray, logvar: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """KL(N(mean, exp(logvar)) || N(0, I)) summed per sample, mean over the batch; and its gradients.

    kl = sum 0.5 (mean^2 + exp(logvar) - 1 - logvar) / N;
    dkl/dmean = mean / N;  dkl/dlogvar = 0.5 (exp(logvar) - 1) / N.
    """
    N = mean.shape[0]
    var = np.exp(logvar)                                                          # [N, Z, h, w]
    kl = 0.5 * float(np.sum(mean.astype(np.float64) ** 2 + var - 1.0 - logvar)) / N
    return kl, mean / N, 0.5 * (var - 1.0) / N


def reconstruction_loss(x_rec: np.ndarray, x: np.ndarray, kind: str) -> tuple[float, np.ndarray]:
    """Per-sample sum over pixels, mean over the batch, of |x_rec - x| (l1) or (x_rec - x)^2 (l2); and d/dx_rec."""
    N = x.shape[0]
    diff = x_rec - x                                                              # [N, C, H, W]
    if kind == "l1":
        return float(np.abs(diff.astype(np.float64)).sum()) / N, np.sign(diff) / N
    if kind == "l2":
        return float((diff.astype(np.float64) ** 2).sum()) / N, 2.0 * diff / N
    raise ValueError(f"unknown reconstruction loss {kind!r}: use l1 or l2")
