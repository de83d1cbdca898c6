"""UNet configuration (ddim's `model` section) and the presets.

`cifar10` is ddim's configs/cifar10.yml exactly (35.7M parameters). `tiny` keeps every block
type (down/up sampling, attention at 16x16, skip concatenation, channel-changing shortcuts)
but is small enough to train on the embedded Fashion-MNIST on 2 CPU cores: 16 base channels,
GroupNorm with 8 groups (ddim's 32 needs >= 32 channels) and no dropout (runs are short).
`small` is `tiny` with twice the channels and two ResnetBlocks per level (1.6M parameters; about 3.3x the
training step of `tiny`): the candidate for a teacher beyond `tiny`, whose samples stopped improving after 10,000
steps (results/README.md, "Learning-rate decay" and "A larger teacher").
`latent` is the UNet of latent diffusion on the `f4` autoencoder's 8x8x4 latents (loading/latent.py sets
channels and resolution from the autoencoder actually used): two levels (8x8, 4x4, attention at 4x4),
so the lowest feature map still splits into SPD's 4x4 patches.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class UNetConfig:
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    dropout: float = 0.1
    resamp_with_conv: bool = True
    in_channels: int = 3
    out_ch: int = 3
    resolution: int = 32
    groups: int = 32

    def __post_init__(self) -> None:
        if self.resolution % 2 ** (len(self.ch_mult) - 1) != 0:
            raise ValueError(
                f"resolution {self.resolution} is not divisible by 2^{len(self.ch_mult) - 1} "
                f"(one halving per extra ch_mult level): pick a resolution that is"
            )
        bad = [self.ch * m for m in (1, *self.ch_mult) if (self.ch * m) % self.groups]
        if bad:
            raise ValueError(f"channel counts {bad} are not divisible by groups={self.groups}: change ch or groups")


PRESETS: dict[str, UNetConfig] = {
    "cifar10": UNetConfig(),
    "tiny": UNetConfig(ch=16, ch_mult=(1, 2, 2), num_res_blocks=1, dropout=0.0, in_channels=1, out_ch=1, groups=8),
    "small": UNetConfig(ch=32, ch_mult=(1, 2, 2), num_res_blocks=2, dropout=0.0, in_channels=1, out_ch=1, groups=8),
    "latent": UNetConfig(ch=32, ch_mult=(1, 2), num_res_blocks=2, attn_resolutions=(4,), dropout=0.0, in_channels=4,
                         out_ch=4, resolution=8, groups=8),
}


def preset(name: str, channels: int | None = None) -> UNetConfig:
    """A preset by name, optionally with in/out channels set to the dataset's channel count."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}: choose one of {sorted(PRESETS)}")
    cfg = PRESETS[name]
    return cfg if channels is None else replace(cfg, in_channels=channels, out_ch=channels)
