"""The config of the experiment drivers, apart from the code that uses it (so `cli.py` reads its defaults
without importing the metrics).

ScoreConfig: the scoring protocol of `cli.py score` (scoring.py).
No arrays here (no dimension legend needed).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ScoreConfig:
    """The protocol: samples per seed, the seeds, the sampler steps and the reference."""

    classifier: str
    n: int = 1000
    seeds: tuple[int, ...] = (0, 1)
    sample_steps: int = 50
    batch_size: int = 64
    reference_images: int = 10000
    inception: str = "weights/inception_fid.h5"

    def __post_init__(self) -> None:
        if self.n < 2 or not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"score needs --n >= 2 and distinct --seeds, got n={self.n}, seeds={self.seeds}")
