"""DDIM (Song et al. 2021) and DDPM ancestral (Ho et al. 2020) samplers, as ddim's `generalized_steps`
and `ddpm_steps`.

Dimensions: N batch, C, H, W image, S sampling steps.

Timesteps: seq = range(0, T, T // S), walked in reverse; each step goes from t to the previous
entry of seq (t_next = -1 after 0, where alpha_bar = 1). seq has S entries exactly when S divides T;
otherwise ceil(T / (T // S)) of them, as in ddim (S = 600 of T = 1000: stride 1, 1000 steps).
`check_exact_steps` refuses such counts (`cli.py sample` does), so a user who asks for S model
evaluations per image gets S. With a_t = alpha_bar(t), a_n = alpha_bar(t_next):

DDIM:  x0_hat = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t)
       clip_x0: x0_hat = clip(x0_hat, -1, 1) and eps = (x_t - sqrt(a_t) x0_hat) / sqrt(1 - a_t), the eps that
                predicts the clipped x0 (guided-diffusion's clip_denoised, diffusers' clip_sample); this
                function's default is off, as ddim's generalized_steps; SampleConfig (every command) turns it on
       c1 = eta * sqrt((1 - a_t / a_n) (1 - a_n) / (1 - a_t)),  c2 = sqrt(1 - a_n - c1^2)
       x_next = sqrt(a_n) x0_hat + c1 z + c2 eps                  (z ~ N(0, I); eta = 0: deterministic)
DDPM:  beta = 1 - a_t / a_n
       x0_hat = sqrt(1 / a_t) x_t - sqrt(1 / a_t - 1) eps, clipped to [-1, 1] with clip_x0 (on by default,
                as ddim's ddpm_steps)
       mean = (sqrt(a_n) beta x0_hat + sqrt(1 - beta) (1 - a_n) x_t) / (1 - a_t)
       x_next = mean + [t > 0] sqrt(beta) z

`eps_fn(x_t, t_batch)` is the model; it may keep state across calls (TBS's cross-timestep cache),
which is why steps run strictly in the order above. `callback(step, t, x_t, eps)` sees every step.
Noise comes from `noise_fn(shape)` (default: the rng's standard normal) so a golden case can
replay stored noise. Coefficients are float64 and applied as Python floats, so x keeps its dtype.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .schedule import Schedule

EpsFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
Callback = Callable[[int, int, np.ndarray, np.ndarray], None]
NoiseFn = Callable[[tuple[int, ...]], np.ndarray]


def timestep_sequence(num_timesteps: int, steps: int) -> list[int]:
    """ddim's uniform skip: range(0, T, T // S) (ascending)."""
    if not 1 <= steps <= num_timesteps:
        raise ValueError(f"sampling steps must be in 1..{num_timesteps}, got {steps}")
    return list(range(0, num_timesteps, num_timesteps // steps))


def check_exact_steps(num_timesteps: int, steps: int) -> None:
    """Refuse a step count S whose uniform skip runs another number of steps (S not a divisor of T).

    The one-line ValueError names --steps, the count that would run and the nearest divisors of T.
    """
    run = len(timestep_sequence(num_timesteps, steps))
    if run != steps:
        divisors = [d for d in range(1, num_timesteps + 1) if num_timesteps % d == 0]
        lower = max(d for d in divisors if d < steps)
        higher = min(d for d in divisors if d > steps)
        raise ValueError(f"--steps {steps} would run {run} steps (the uniform skip range(0, {num_timesteps}, "
                         f"{num_timesteps} // {steps})): pass a divisor of {num_timesteps}, e.g. {lower} or {higher}")


def step_pairs(num_timesteps: int, steps: int) -> list[tuple[int, int]]:
    """(t, t_next) in sampling order: [(seq[-1], seq[-2]), ..., (seq[0], -1)]."""
    seq = timestep_sequence(num_timesteps, steps)
    return list(zip(reversed(seq), reversed([-1] + seq[:-1])))


def default_noise(rng: np.random.Generator | None, dtype: np.dtype) -> NoiseFn:
    def draw(shape: tuple[int, ...]) -> np.ndarray:
        if rng is None:
            raise ValueError("this sampler draws noise: pass rng (a seeded Generator) or noise_fn")
        return rng.standard_normal(shape).astype(dtype)

    return draw


def ddim_update(
    x: np.ndarray, eps: np.ndarray, a_t: float, a_n: float, t: int, eta: float, noise_fn: NoiseFn, clip_x0: bool = False
) -> np.ndarray:
    """One DDIM step x_t -> x_next (module docstring)."""
    x0_hat = (x - float(np.sqrt(1 - a_t)) * eps) / float(np.sqrt(a_t))            # [N, C, H, W]
    if clip_x0:
        x0_hat = np.clip(x0_hat, -1, 1)                                           # [N, C, H, W]
        eps = (x - float(np.sqrt(a_t)) * x0_hat) / float(np.sqrt(1 - a_t))        # [N, C, H, W]
    c1 = eta * np.sqrt((1 - a_t / a_n) * (1 - a_n) / (1 - a_t))
    c2 = np.sqrt(1 - a_n - c1**2)
    x_next = float(np.sqrt(a_n)) * x0_hat + float(c2) * eps                       # [N, C, H, W]
    return x_next + float(c1) * noise_fn(x.shape) if eta > 0 else x_next


def ddpm_update(
    x: np.ndarray, eps: np.ndarray, a_t: float, a_n: float, t: int, noise_fn: NoiseFn, clip_x0: bool = True
) -> np.ndarray:
    """One ancestral DDPM step x_t -> x_next (module docstring); no noise is drawn at t = 0."""
    beta = 1 - a_t / a_n
    x0_hat = float(np.sqrt(1 / a_t)) * x - float(np.sqrt(1 / a_t - 1)) * eps      # [N, C, H, W]
    if clip_x0:
        x0_hat = np.clip(x0_hat, -1, 1)                                           # [N, C, H, W]
    mean = (float(np.sqrt(a_n) * beta) * x0_hat + float(np.sqrt(1 - beta) * (1 - a_n)) * x) / float(1 - a_t)
    return mean if t == 0 else mean + float(np.sqrt(beta)) * noise_fn(x.shape)    # [N, C, H, W]


def run_steps(
    update: Callable[[np.ndarray, np.ndarray, float, float, int, NoiseFn], np.ndarray],
    eps_fn: EpsFn,
    x_T: np.ndarray,
    schedule: Schedule,
    steps: int,
    rng: np.random.Generator | None,
    noise_fn: NoiseFn | None,
    callback: Callback | None,
) -> np.ndarray:
    """The loop both samplers share: for each (t, t_next), eps = eps_fn(x, t), callback, x = update(...)."""
    noise_fn = noise_fn or default_noise(rng, x_T.dtype)
    x = x_T
    for step, (t, t_next) in enumerate(step_pairs(schedule.T, steps)):
        eps = eps_fn(x, np.full(x.shape[0], t, dtype=np.int64))                  # [N, C, H, W]
        if callback is not None:
            callback(step, t, x, eps)
        x = update(x, eps, schedule.alpha_bar(t), schedule.alpha_bar(t_next), t, noise_fn)  # [N, C, H, W]
    return x


def sample_ddim(
    eps_fn: EpsFn,
    x_T: np.ndarray,
    schedule: Schedule,
    steps: int,
    eta: float = 0.0,
    rng: np.random.Generator | None = None,
    noise_fn: NoiseFn | None = None,
    callback: Callback | None = None,
    clip_x0: bool = False,
) -> np.ndarray:
    """Run DDIM from x_T [N, C, H, W]; returns x_0 [N, C, H, W] (not clipped)."""
    def update(x, eps, a_t, a_n, t, noise):
        return ddim_update(x, eps, a_t, a_n, t, eta, noise, clip_x0)

    return run_steps(update, eps_fn, x_T, schedule, steps, rng, noise_fn, callback)


def sample_ddpm(
    eps_fn: EpsFn,
    x_T: np.ndarray,
    schedule: Schedule,
    steps: int,
    rng: np.random.Generator | None = None,
    noise_fn: NoiseFn | None = None,
    callback: Callback | None = None,
    clip_x0: bool = True,
) -> np.ndarray:
    """Ancestral DDPM sampling from x_T over the same timestep sequence; returns x_0 [N, C, H, W]."""
    def update(x, eps, a_t, a_n, t, noise):
        return ddpm_update(x, eps, a_t, a_n, t, noise, clip_x0)

    return run_steps(update, eps_fn, x_T, schedule, steps, rng, noise_fn, callback)
