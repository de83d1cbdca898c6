"""ddim's AttnBlock: single-head self-attention over spatial positions, with a residual.

Dimensions: N batch, C channels, H, W spatial, P = H*W positions (i queries, j keys).

    h      = GroupNorm(x)
    q,k,v  = 1x1 convs of h                           (body layers: binarized in BiDM)
    A[i,j] = softmax_j( sum_c q[c,i] k[c,j] / sqrt(C) )
    o[c,i] = sum_j v[c,j] A[i,j]
    y      = x + proj_out(o)                          (proj_out: a 1x1 body conv)

The softmax is one Numba task per row with fastexp.fast_exp (scale, max in 8 partial maxima, exp, sum, divide):
over the tiny preset's 64 x 256 x 256 logits 4.2 ms against 22 ms for the NumPy passes (max, subtract, exp, sum,
divide) on one thread, and 5.7 against 8.9 ms for one running maximum on the Intel Xeon (docs/ENGINE.md, "GroupNorm,
SiLU, attention"); its backward likewise, dx = y (dy - sum_j dy y) per row.

Where the register tiles are wider than BLAS's kernels (conv_direct.TILES_WIDER_THAN_BLAS; `attention_tiles_fit`)
the forward runs its two products by conv_pointwise.tile_matmul on q, k, v as they are, with A transposed:
    L^T[j,i] = sum_c k[c,j] q[c,i]     (k read as the columns of a weight matrix)
    A^T      = softmax over j of each column of L^T / sqrt(C)   (softmax_columns: tasks of COLUMNS columns)
    o[c,i]   = sum_j v[c,j] A^T[j,i]
so no operand is copied or transposed (tile_matmul reads k's columns through its weight strides, q and A^T as its
inputs, v as rows); the cache holds A as a transposed view of A^T. Measured in docs/ENGINE.md ("BLAS kernels").
"""

from __future__ import annotations

import numba
import numpy as np

from . import conv_direct
from .conv_pointwise import POINTWISE_OUTPUTS, POINTWISE_PIXELS, tile_matmul
from .factory import DENSE, LayerFactory
from .fastexp import SERIAL_ELEMENTS, fast_exp, fast_exp_ref
from .groupnorm import GroupNorm
from .module import Module
from .threaded import threaded_kernel


LANES = 8  # partial sums of row_dot, partial maxima of row_max
COLUMNS = 64  # columns of one softmax_columns task (vectorised across them; J rows x 64 floats stay in L2)


@numba.njit(cache=True, inline="always")
def row_dot(a, b):  # pragma: no cover - compiled
    """sum_j a[j] b[j] of two [J] rows in LANES interleaved partial sums (8 chains instead of one: vectorises),
    added pairwise, then the last J mod 8 terms in order."""
    J = a.size
    tail = J - J % LANES
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = a[0] - a[0]                       # zero of a's dtype
    for j in range(0, tail, LANES):
        s0 += a[j] * b[j]
        s1 += a[j + 1] * b[j + 1]
        s2 += a[j + 2] * b[j + 2]
        s3 += a[j + 3] * b[j + 3]
        s4 += a[j + 4] * b[j + 4]
        s5 += a[j + 5] * b[j + 5]
        s6 += a[j + 6] * b[j + 6]
        s7 += a[j + 7] * b[j + 7]
    total = ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))
    for j in range(tail, J):
        total += a[j] * b[j]
    return total


@numba.njit(cache=True, inline="always")
def row_max(a):  # pragma: no cover - compiled
    """max_j a[j] of a [J] row in LANES interleaved partial maxima (a compare and select each: vectorises, where one
    running maximum is a chain of scalar compares), then the last J mod 8 elements. The same value as a running
    maximum: max is exact in any order (a NaN may surface in another position, which makes every softmax output NaN
    either way)."""
    J = a.size
    tail = J - J % LANES
    m = a[0]
    if tail:
        m0, m1, m2, m3, m4, m5, m6, m7 = a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]
        for j in range(LANES, tail, LANES):
            m0 = a[j] if a[j] > m0 else m0
            m1 = a[j + 1] if a[j + 1] > m1 else m1
            m2 = a[j + 2] if a[j + 2] > m2 else m2
            m3 = a[j + 3] if a[j + 3] > m3 else m3
            m4 = a[j + 4] if a[j + 4] > m4 else m4
            m5 = a[j + 5] if a[j + 5] > m5 else m5
            m6 = a[j + 6] if a[j + 6] > m6 else m6
            m7 = a[j + 7] if a[j + 7] > m7 else m7
        m = max(max(max(m0, m1), max(m2, m3)), max(max(m4, m5), max(m6, m7)))
    for j in range(tail, J):
        m = a[j] if a[j] > m else m
    return m


def row_dot_ref(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """NumPy twin of row_dot for every row of a, b [R, J] at once: [R]."""
    R, J = a.shape
    tail = J - J % LANES
    products = a * b                                                          # [R, J]
    lanes = np.zeros((R, LANES), a.dtype)                                     # [R, 8]
    for k in range(0, tail, LANES):
        lanes += products[:, k : k + LANES]
    total = ((lanes[:, 0] + lanes[:, 1]) + (lanes[:, 2] + lanes[:, 3])) + ((lanes[:, 4] + lanes[:, 5])
                                                                          + (lanes[:, 6] + lanes[:, 7]))  # [R]
    for j in range(tail, J):
        total += products[:, j]
    return total


def _softmax_rows_kernel(rows):
    """softmax_rows_kernel with `rows` prange or range (threaded.py)."""

    def softmax_rows_kernel(x, scale):  # pragma: no cover - compiled
        """Softmax of every row of scale * x [R, J] in place: scale, row_max, exp(x - max) (fastexp.fast_exp),
        row_dot with ones, divide. `scale` has x's dtype (scale 1 leaves x exactly as it is)."""
        R, J = x.shape
        ones = np.ones(J, x.dtype)                                                # [J] (x * 1 is x exactly)
        for r in rows(R):
            row = x[r]                                                            # [J]
            for j in range(J):
                row[j] = row[j] * scale
            m = row_max(row)
            for j in range(J):
                row[j] = fast_exp(row[j] - m)
            total = row_dot(row, ones)
            for j in range(J):
                row[j] = row[j] / total

    return softmax_rows_kernel


def _softmax_backward_rows_kernel(rows):
    """softmax_backward_rows_kernel with `rows` prange or range (threaded.py)."""

    def softmax_backward_rows_kernel(dy, y, scale):  # pragma: no cover - compiled
        """dy <- (y (dy - sum_j dy y)) scale for every row of dy, y [R, J], in place (scale in dy's dtype)."""
        for r in rows(dy.shape[0]):
            dot = row_dot(dy[r], y[r])
            for j in range(dy.shape[1]):
                dy[r, j] = (dy[r, j] - dot) * y[r, j] * scale

    return softmax_backward_rows_kernel


# threaded from SERIAL_ELEMENTS logits (fastexp.py)
softmax_rows_kernel = threaded_kernel(_softmax_rows_kernel, SERIAL_ELEMENTS, error_model="numpy")
softmax_backward_rows_kernel = threaded_kernel(_softmax_backward_rows_kernel, SERIAL_ELEMENTS)


def _softmax_columns_kernel(tasks):
    """softmax_columns_kernel with `tasks` prange or range (threaded.py)."""

    def softmax_columns_kernel(x, scale):  # pragma: no cover - compiled
        """Softmax over j of scale * x[n, j, i] for every column (n, i) of x [N, J, I], in place, in tasks of COLUMNS
        columns: scale and a running maximum per column, exp(x - max) (fastexp.fast_exp) and its sum over j in order,
        divide. `scale` has x's dtype."""
        N, J, I = x.shape
        chunks = -(-I // COLUMNS)
        x_flat = x.reshape(-1)                                                    # [N*J*I]
        for task in tasks(N * chunks):
            n, i0 = task // chunks, (task % chunks) * COLUMNS
            width = min(COLUMNS, I - i0)
            first = n * J * I + i0                                                # x[n, 0, i0]
            top = x_flat[first : first + width] * scale                           # [width] running maxima
            for j in range(J):
                row = x_flat[first + j * I : first + j * I + width]               # [width] view of x[n, j]
                for i in range(width):
                    v = row[i] * scale
                    row[i] = v
                    top[i] = v if v > top[i] else top[i]
            total = np.zeros(width, x.dtype)                                      # [width]
            for j in range(J):
                row = x_flat[first + j * I : first + j * I + width]
                for i in range(width):
                    e = fast_exp(row[i] - top[i])
                    row[i] = e
                    total[i] += e
            for j in range(J):
                row = x_flat[first + j * I : first + j * I + width]
                for i in range(width):
                    row[i] = row[i] / total[i]

    return softmax_columns_kernel


softmax_columns_kernel = threaded_kernel(_softmax_columns_kernel, SERIAL_ELEMENTS, error_model="numpy")


def softmax_columns(x: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """Softmax of scale * x [N, J, I] along axis 1 (each column), in place; returns x (twin softmax_columns_ref)."""
    if x.ndim != 3 or not x.flags.c_contiguous:
        raise ValueError(f"softmax_columns: x {list(x.shape)} must be a C-contiguous [N, J, I] array")
    softmax_columns_kernel.for_work(x.size)(x, x.dtype.type(scale))
    return x


def softmax_columns_ref(x: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """NumPy twin of softmax_columns (a new array): the kernel's operations in its order."""
    scaled = x * x.dtype.type(scale)                                              # [N, J, I]
    e = fast_exp_ref(scaled - scaled.max(axis=1, keepdims=True))                  # [N, J, I]
    total = np.zeros((x.shape[0], x.shape[2]), x.dtype)                           # [N, I]
    for j in range(x.shape[1]):
        total += e[:, j]
    return e / total[:, None]                                                     # [N, J, I]


def attention_tiles_fit(x: np.ndarray) -> bool:
    """Whether AttnBlock runs its products by register tiles (module docstring): the tiles wider than BLAS's kernels,
    at least one tile of positions and of channels, float32 or float64."""
    N, C, H, W = x.shape
    return (conv_direct.TILES_WIDER_THAN_BLAS and H * W >= POINTWISE_PIXELS and C >= POINTWISE_OUTPUTS
            and x.dtype in (np.float32, np.float64))


def rows_of(x: np.ndarray, what: str) -> np.ndarray:
    """The [R, J] view (J: the last axis) of a C-contiguous array the row kernels update in place."""
    if not x.flags.c_contiguous or x.ndim == 0:
        raise ValueError(f"softmax: {what} {list(x.shape)} must be a C-contiguous array with a last axis: "
                         "pass np.ascontiguousarray(...)")
    return x.reshape(-1, x.shape[-1])


def softmax(x: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """Numerically stable softmax of scale * x along the last axis; overwrites and returns x (the logits are not
    kept). One fused Numba pass per row (softmax_rows_kernel; twin softmax_ref). The product is rounded to x's dtype
    first, as `x *= scale` would round it."""
    softmax_rows_kernel.for_work(x.size)(rows_of(x, "x"), x.dtype.type(scale))
    return x


def softmax_ref(x: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """NumPy twin of softmax (a new array): the kernel's operations in its order."""
    rows = x.reshape(-1, x.shape[-1]) * x.dtype.type(scale)                   # [R, J]
    e = fast_exp_ref(rows - rows.max(axis=1, keepdims=True))                  # [R, J]
    return (e / row_dot_ref(e, np.ones_like(e))[:, None]).reshape(x.shape)


def softmax_backward(dy: np.ndarray, y: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """The gradient of softmax(scale * x) along the last axis: dx = y * (dy - sum(dy * y)) * scale; overwrites and
    returns dy (one Numba pass per row, softmax_backward_rows_kernel; twin softmax_backward_ref)."""
    if y.shape != dy.shape or y.dtype != dy.dtype:
        raise ValueError(f"softmax_backward: dy {dy.dtype} {list(dy.shape)} and y {y.dtype} {list(y.shape)} differ")
    softmax_backward_rows_kernel.for_work(dy.size)(rows_of(dy, "dy"), rows_of(y, "y"), dy.dtype.type(scale))
    return dy


def softmax_backward_ref(dy: np.ndarray, y: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """NumPy twin of softmax_backward (a new array)."""
    dy_rows, y_rows = dy.reshape(-1, dy.shape[-1]), y.reshape(-1, y.shape[-1])  # [R, J] each
    dx = (dy_rows - row_dot_ref(dy_rows, y_rows)[:, None]) * y_rows            # [R, J]
    return (dx * dy.dtype.type(scale)).reshape(dy.shape)


class AttnBlock(Module):
    """Children `norm`, `q`, `k`, `v`, `proj_out` (ddim's names)."""

    def __init__(self, channels: int, *, rng: np.random.Generator, body: LayerFactory = DENSE, groups: int = 32) -> None:
        super().__init__()
        self.norm = self.add_child("norm", GroupNorm(groups, channels))
        self.q = self.add_child("q", body.conv(channels, channels, 1, 1, 0, rng=rng))
        self.k = self.add_child("k", body.conv(channels, channels, 1, 1, 0, rng=rng))
        self.v = self.add_child("v", body.conv(channels, channels, 1, 1, 0, rng=rng))
        self.proj_out = self.add_child("proj_out", body.conv(channels, channels, 1, 1, 0, rng=rng))

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, tuple]:
        N, C, H, W = x.shape
        h, c_norm = self.norm.forward(x)                                          # [N, C, H, W]
        q, c_q = self.q.forward(h)                                                # [N, C, H, W]
        k, c_k = self.k.forward(h)                                                # [N, C, H, W]
        v, c_v = self.v.forward(h)                                                # [N, C, H, W]
        P = H * W
        qf = q.reshape(N, C, P).transpose(0, 2, 1)                                # [N, P, C] view
        kf = k.reshape(N, C, P)                                                   # [N, C, P]
        vf = v.reshape(N, C, P)                                                   # [N, C, P]
        if attention_tiles_fit(x):
            logits_t = tile_matmul(np.ascontiguousarray(q).reshape(N, C, P), np.ascontiguousarray(kf),
                                   (C * P, 1, P), P)                              # [N, P(j), P(i)] L^T
            attn = softmax_columns(logits_t, C ** (-0.5)).transpose(0, 2, 1)     # [N, P(i), P(j)] view of A^T
            o = tile_matmul(logits_t, np.ascontiguousarray(vf), (C * P, P, 1), C).reshape(N, C, H, W)  # [N, C, H, W]
        else:
            logits = qf @ kf                                                      # [N, P(i), P(j)]
            attn = softmax(logits, C ** (-0.5))                                   # [N, P(i), P(j)] of logits / sqrt(C)
            o = (vf @ attn.transpose(0, 2, 1)).reshape(N, C, H, W)                # [N, C, H, W]
        out, c_proj = self.proj_out.forward(o)                                    # [N, C, H, W]
        return x + out, (c_norm, c_q, c_k, c_v, qf, kf, vf, attn, c_proj)

    def backward(self, dy: np.ndarray, cache: tuple) -> np.ndarray:
        c_norm, c_q, c_k, c_v, qf, kf, vf, attn, c_proj = cache
        N, C, H, W = dy.shape
        do = self.proj_out.backward(dy, c_proj).reshape(N, C, H * W)              # [N, C, P]
        dvf = do @ attn                                                           # [N, C, P]
        dattn = do.transpose(0, 2, 1) @ vf                                        # [N, P(i), P(j)]
        dlogits = softmax_backward(dattn, np.ascontiguousarray(attn), C ** (-0.5))  # [N, P, P] d(q^T k)
        dqf = dlogits @ kf.transpose(0, 2, 1)                                     # [N, P, C]
        dkf = qf.transpose(0, 2, 1) @ dlogits                                     # [N, C, P]
        dh = self.v.backward(dvf.reshape(N, C, H, W), c_v)                        # [N, C, H, W]
        dh = dh + self.k.backward(dkf.reshape(N, C, H, W), c_k)                   # [N, C, H, W]
        dh = dh + self.q.backward(dqf.transpose(0, 2, 1).reshape(N, C, H, W), c_q)  # [N, C, H, W]
        return dy + self.norm.backward(dh, c_norm)                                # [N, C, H, W]
