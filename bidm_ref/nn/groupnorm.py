"""Group normalization (Wu & He 2018), as torch.nn.GroupNorm (ddim: 32 groups, eps 1e-6, affine).

Dimensions: N batch, C channels, H, W spatial, G groups, Cg = C/G channels per group,
M = Cg*H*W elements per group (contiguous in NCHW).

    mu, var = mean and biased variance of x over each (n, group)
    xhat    = (x - mu) / sqrt(var + eps)
    y       = gamma[c] * xhat + beta[c]

Backward (per group, with g = dy * gamma):
    dx = (g - mean(g) - xhat * mean(g * xhat)) / sqrt(var + eps)

Fused SiLU (`forward(x, silu=True)`, ddim's SiLU(norm(x)) in ResnetBlock and before conv_out): the forward's last
pass also writes s = sigmoid(y) (fastexp.fast_exp) and returns z = y s instead of y; the backward turns dz into
dy = dz (s + y s (1 - s)) inside both of its passes, with y = xhat * gamma + beta recomputed from the cache. The
activation is then written once and read by no second pass, and the cache holds (xhat, s) instead of GroupNorm's
xhat plus SiLU's (y, s) (docs/ENGINE.md, "GroupNorm, SiLU, attention").

Forward and backward are Numba kernels that make one pass per statistic over each group (prange
over the N*G groups; a group is summed by one thread in a fixed order, so results do not depend on
the thread count). Inputs below SERIAL_ELEMENTS run the forward's serial compilation: waking the
sleeping workers for a parallel loop costs more than such a small group norm (sampling at batch 1).
Their sums run in float64 whatever the data's dtype; the elementwise passes (xhat, the output, the backward's dx)
in the data's dtype, with the group's mean, inverse std and means of the backward rounded to it: float32 passes
run twice the SIMD lanes of float64 ones (docs/ENGINE.md, "GroupNorm, SiLU, attention"). `forward(x, shift=e)`
normalizes x + e[:, :, None, None] (ddim's ResnetBlock adds the timestep embedding just before its norm2) without
writing that sum out: each pass adds e[n, c] in x's dtype, as NumPy's add would. `group_norm_ref` and
`group_norm_backward_ref` are the plain NumPy twins the tests compare them with (with activation.silu_forward_ref
and silu_backward_ref for the fused SiLU).

Under nn.module.inference() (sampling) the forward runs `group_norm_output_kernel`, which writes y alone: no xhat,
no sigmoid, no cache (two of the three arrays the training forward writes). Its bytes are the training forward's
(the same statistics function and operations; docs/ENGINE.md, "GroupNorm, SiLU, attention").
"""

from __future__ import annotations

import numba
import numpy as np

from .fastexp import fast_exp
from .module import Module, keeps_caches
from .threaded import threaded_kernel

SERIAL_ELEMENTS = 1 << 16  # inputs smaller than this run the forward kernel on one thread (docs/ENGINE.md)


@numba.njit(cache=True, fastmath={"reassoc", "contract"})
def _group_statistics(x, shift, eps, n, g):  # pragma: no cover - compiled
    """(mean, inverse std) in float64 of the (n, g) group of x + shift [N, G, Cg] (shift [0, ...]: none)."""
    _, _, Cg, HW = x.shape
    M = Cg * HW
    zero = x.dtype.type(0)
    total = 0.0
    for c in range(Cg):
        sh = shift[n, g, c] if shift.shape[0] else zero
        for p in range(HW):
            total += x[n, g, c, p] + sh
    mu = total / M
    sq = 0.0
    for c in range(Cg):
        sh = shift[n, g, c] if shift.shape[0] else zero
        for p in range(HW):
            d = (x[n, g, c, p] + sh) - mu
            sq += d * d
    return mu, 1.0 / np.sqrt(sq / M + eps)


@numba.njit(cache=True, fastmath={"reassoc", "contract"})
def _normalize_group(x, shift, gamma, beta, eps, y, xhat, s, inv_std, n, g):  # pragma: no cover - compiled
    """One (n, g) group of group_norm_kernel: its mean, inverse std and outputs of x + shift; s [0, ...]: no SiLU,
    shift [0, ...]: none."""
    _, _, Cg, HW = x.shape
    zero = y.dtype.type(0)
    mu, r = _group_statistics(x, shift, eps, n, g)
    inv_std[n, g] = r
    one, mu_y, r_y = y.dtype.type(1), y.dtype.type(mu), y.dtype.type(r)           # the elementwise pass in y's dtype
    for c in range(Cg):
        sh = shift[n, g, c] if shift.shape[0] else zero
        scale, offset = gamma[g, c], beta[g, c]
        if s.shape[0] == 0:
            for p in range(HW):
                xh = ((x[n, g, c, p] + sh) - mu_y) * r_y
                xhat[n, g, c, p] = xh
                y[n, g, c, p] = xh * scale + offset
        else:
            for p in range(HW):
                xh = ((x[n, g, c, p] + sh) - mu_y) * r_y
                xhat[n, g, c, p] = xh
                v = xh * scale + offset                                           # GroupNorm's output
                sig = one / (one + fast_exp(-v))
                s[n, g, c, p] = sig
                y[n, g, c, p] = v * sig


@numba.njit(cache=True, fastmath={"reassoc", "contract"})
def _output_group(x, shift, gamma, beta, mu, r, silu, y, n, g):  # pragma: no cover - compiled
    """The output alone of the (n, g) group (inference: no xhat, no sigmoid kept), by _normalize_group's operations
    in its order and with its flags, so that it has _normalize_group's bytes. The sigmoids go to a scratch row that
    each channel overwrites: read once, 1 / (1 + exp(-v)) would become v / (1 + exp(-v)) (LLVM's reassociation),
    another rounding."""
    _, _, Cg, HW = x.shape
    zero, one = y.dtype.type(0), y.dtype.type(1)
    sigmoid = np.empty(HW, dtype=y.dtype)                                         # [HW] scratch
    for c in range(Cg):
        sh = shift[n, g, c] if shift.shape[0] else zero
        scale, offset = gamma[g, c], beta[g, c]
        if silu:
            for p in range(HW):
                v = (((x[n, g, c, p] + sh) - mu) * r) * scale + offset
                sig = one / (one + fast_exp(-v))
                sigmoid[p] = sig
                y[n, g, c, p] = v * sig
        else:
            for p in range(HW):
                y[n, g, c, p] = (((x[n, g, c, p] + sh) - mu) * r) * scale + offset


def _group_norm_kernel(groups):
    """The forward over the N*G groups, `groups` being prange or range (threaded.py).
    x, y, xhat, s [N, G, Cg, HW] (s [0, 0, 0, 0]: no SiLU); shift [N, G, Cg] added to x (shift [0, 0, 0]: none);
    gamma, beta [G, Cg]; inv_std [N, G] (outputs y, xhat, s, inv_std)."""

    def kernel(x, shift, gamma, beta, eps, y, xhat, s, inv_std):  # pragma: no cover - compiled
        N, G = inv_std.shape
        for ng in groups(N * G):
            _normalize_group(x, shift, gamma, beta, eps, y, xhat, s, inv_std, ng // G, ng % G)

    return kernel


def _group_norm_output_kernel(groups):
    """The inference forward over the N*G groups (y only), `groups` being prange or range: x, y [N, G, Cg, HW], shift
    [N, G, Cg] or [0, 0, 0], gamma, beta [G, Cg], silu a bool."""

    def kernel(x, shift, gamma, beta, eps, silu, y):  # pragma: no cover - compiled
        N, G = x.shape[:2]
        for ng in groups(N * G):
            n, g = ng // G, ng % G
            mu, r = _group_statistics(x, shift, eps, n, g)
            _output_group(x, shift, gamma, beta, y.dtype.type(mu), y.dtype.type(r), silu, y, n, g)

    return kernel


group_norm_kernel = threaded_kernel(_group_norm_kernel, SERIAL_ELEMENTS, error_model="numpy")  # threaded from SERIAL_ELEMENTS
group_norm_output_kernel = threaded_kernel(_group_norm_output_kernel, SERIAL_ELEMENTS, error_model="numpy")


@numba.njit(cache=True, inline="always", fastmath={"contract"})
def _upstream(dz, xhat, s, scale, shift, one):  # pragma: no cover - compiled
    """The gradient at the group norm's output under the fused SiLU: dz (s + y s (1 - s)), y = xhat gamma + beta
    (one element; without SiLU the backward kernel takes dz itself and does not call this)."""
    v = xhat * scale + shift
    return dz * (s + v * s * (one - s))


@numba.njit(cache=True, parallel=True, fastmath={"reassoc", "contract"})
def group_norm_backward_kernel(dy, xhat, s, inv_std, gamma, beta, dx, dgamma_part, dbeta_part):  # pragma: no cover - compiled
    """dy, xhat, s, dx [N, G, Cg, HW] (s [0, 0, 0, 0]: no SiLU, dy is the group norm's own output gradient);
    gamma, beta [G, Cg]; inv_std [N, G]; dgamma_part, dbeta_part [N, G, Cg] per image."""
    N, G, Cg, HW = dy.shape
    M = Cg * HW
    silu = s.shape[0] > 0
    one = dy.dtype.type(1)
    for ng in numba.prange(N * G):
        n, g = ng // G, ng % G
        sum_g = 0.0
        sum_gx = 0.0
        for c in range(Cg):
            dgamma, dbeta = 0.0, 0.0
            scale, shift = gamma[g, c], beta[g, c]
            for p in range(HW):
                d = _upstream(dy[n, g, c, p], xhat[n, g, c, p], s[n, g, c, p], scale, shift, one) if silu else dy[n, g, c, p]
                dgamma += d * xhat[n, g, c, p]
                dbeta += d
            dgamma_part[n, g, c] = dgamma
            dbeta_part[n, g, c] = dbeta
            sum_g += gamma[g, c] * dbeta
            sum_gx += gamma[g, c] * dgamma
        mean_g, mean_gx = dy.dtype.type(sum_g / M), dy.dtype.type(sum_gx / M)   # the elementwise pass in dy's dtype
        r = inv_std[n, g]
        for c in range(Cg):
            scale, shift = gamma[g, c], beta[g, c]
            for p in range(HW):
                d = _upstream(dy[n, g, c, p], xhat[n, g, c, p], s[n, g, c, p], scale, shift, one) if silu else dy[n, g, c, p]
                dx[n, g, c, p] = (d * scale - mean_g - xhat[n, g, c, p] * mean_gx) * r


def group_norm_ref(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, groups: int, eps: float):
    """NumPy twin of group_norm_kernel: x [N, C, H, W] -> (y, xhat [N, C, H, W], inv_std [N, G, 1])."""
    N, C, H, W = x.shape
    xg = x.reshape(N, groups, -1)                                                 # [N, G, M]
    mu = xg.mean(axis=2, keepdims=True)                                           # [N, G, 1]
    var = xg.var(axis=2, keepdims=True)                                           # [N, G, 1]
    inv_std = 1.0 / np.sqrt(var + eps)                                            # [N, G, 1]
    xhat = ((xg - mu) * inv_std).reshape(N, C, H, W)                              # [N, C, H, W]
    return xhat * gamma[:, None, None] + beta[:, None, None], xhat, inv_std       # [N, C, H, W]


def group_norm_backward_ref(dy: np.ndarray, xhat: np.ndarray, inv_std: np.ndarray, gamma: np.ndarray, groups: int):
    """NumPy twin of group_norm_backward_kernel: (dx [N, C, H, W], dgamma [C], dbeta [C])."""
    N, C, H, W = dy.shape
    g = (dy * gamma[:, None, None]).reshape(N, groups, -1)                        # [N, G, M]
    xg = xhat.reshape(N, groups, -1)                                              # [N, G, M]
    dxg = (g - g.mean(axis=2, keepdims=True) - xg * (g * xg).mean(axis=2, keepdims=True)) * inv_std.reshape(N, groups, 1)
    return dxg.reshape(N, C, H, W), (dy * xhat).sum(axis=(0, 2, 3)), dy.sum(axis=(0, 2, 3))


class GroupNorm(Module):
    """Params `weight` (gamma) [C] init 1 and `bias` (beta) [C] init 0 when affine."""

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-6, affine: bool = True) -> None:
        super().__init__()
        if num_groups < 1 or num_channels % num_groups != 0:
            raise ValueError(
                f"GroupNorm: {num_channels} channels cannot be split into {num_groups} groups; "
                "use a channel count divisible by the group count"
            )
        self.num_groups = num_groups
        self.eps = eps
        if affine:
            self.add_param("weight", np.ones(num_channels, dtype=np.float32))
            self.add_param("bias", np.zeros(num_channels, dtype=np.float32))
        self.num_channels = num_channels

    def affine(self, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
        """(gamma, beta) [C] in `dtype` (1 and 0 without affine parameters)."""
        if self.params:
            return self.params["weight"].astype(dtype, copy=False), self.params["bias"].astype(dtype, copy=False)
        return np.ones(self.num_channels, dtype=dtype), np.zeros(self.num_channels, dtype=dtype)

    def forward(self, x: np.ndarray, silu: bool = False, shift: np.ndarray | None = None) -> tuple[np.ndarray, tuple]:
        """y = GroupNorm(x), or SiLU(GroupNorm(x)) with silu (module docstring); the cache remembers which. With shift
        [N, C], the norm of x + shift[:, :, None, None] (that sum, in x's dtype, is not written out); the backward's
        dx is then also the gradient of the sum, and d shift = dx summed over H, W."""
        N, C, H, W = x.shape
        if C != self.num_channels:
            raise ValueError(f"GroupNorm: expected {self.num_channels} channels, got input {x.shape}")
        if shift is not None and shift.shape != (N, C):
            raise ValueError(f"GroupNorm: shift {list(shift.shape)} is not [N, C] = [{N}, {C}] of the input "
                             f"{list(x.shape)}: pass one value per image and channel")
        G = self.num_groups
        gamma, beta = self.affine(x.dtype)                                        # [C]
        x4 = np.ascontiguousarray(x).reshape(N, G, C // G, H * W)                 # [N, G, Cg, HW]
        y = np.empty_like(x4)                                                     # [N, G, Cg, HW]
        shift3 = (np.empty((0, 0, 0), dtype=x.dtype) if shift is None
                  else np.ascontiguousarray(shift, dtype=x.dtype).reshape(N, G, C // G))  # [N, G, Cg]
        if not keeps_caches():                                                    # inference: y alone, no cache
            group_norm_output_kernel.for_work(x4.size)(x4, shift3, gamma.reshape(G, -1), beta.reshape(G, -1),
                                                       self.eps, silu, y)
            return y.reshape(N, C, H, W), None                                    # [N, C, H, W]
        xhat = np.empty_like(x4)                                                  # [N, G, Cg, HW]
        s = np.empty_like(x4) if silu else np.empty((0, 0, 0, 0), dtype=x.dtype)  # [N, G, Cg, HW] sigmoid(GN(x))
        inv_std = np.empty((N, G), dtype=x.dtype)                                 # [N, G]
        kernel = group_norm_kernel.for_work(x4.size)
        kernel(x4, shift3, gamma.reshape(G, -1), beta.reshape(G, -1), self.eps, y, xhat, s, inv_std)
        return y.reshape(N, C, H, W), (xhat, s, inv_std)                          # [N, C, H, W]

    def backward(self, dy: np.ndarray, cache: tuple | None) -> np.ndarray:
        if cache is None:
            raise RuntimeError("GroupNorm.backward: the forward ran under nn.module.inference() and kept no cache; "
                               "run the forward outside it to train")
        xhat, s, inv_std = cache                                                  # [N, G, Cg, HW] x2, [N, G]
        N, C, H, W = dy.shape
        G = self.num_groups
        gamma, beta = self.affine(xhat.dtype)                                     # [C]
        dx = np.empty_like(xhat)                                                  # [N, G, Cg, HW]
        dgamma = np.empty((N, G, C // G), dtype=np.float64)                       # [N, G, Cg] per image
        dbeta = np.empty((N, G, C // G), dtype=np.float64)                        # [N, G, Cg]
        dy4 = np.ascontiguousarray(dy, dtype=xhat.dtype).reshape(xhat.shape)      # [N, G, Cg, HW]
        group_norm_backward_kernel(dy4, xhat, s, inv_std, gamma.reshape(G, -1), beta.reshape(G, -1), dx, dgamma, dbeta)
        if self.params:
            self.grads["weight"] += dgamma.sum(axis=0).reshape(C).astype(dy.dtype)  # [C]
            self.grads["bias"] += dbeta.sum(axis=0).reshape(C).astype(dy.dtype)     # [C]
        return dx.reshape(N, C, H, W)                                             # [N, C, H, W]
