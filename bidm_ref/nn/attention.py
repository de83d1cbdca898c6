"""ddim's AttnBlock: single-head self-attention over spatial positions, with a residual.

Dimensions: N batch, C channels, H, W spatial, P = H*W positions (i queries, j keys).

    h      = GroupNorm(x)
    q,k,v  = 1x1 convs of h                           (body layers: binarized in BiDM)
    A[i,j] = softmax_j( sum_c q[c,i] k[c,j] / sqrt(C) )
    o[c,i] = sum_j v[c,j] A[i,j]
    y      = x + proj_out(o)                          (proj_out: a 1x1 body conv)
"""

from __future__ import annotations

import numpy as np

from .factory import DENSE, LayerFactory
from .groupnorm import GroupNorm
from .module import Module


def softmax(x: np.ndarray, axis: int) -> np.ndarray:
    """Numerically stable softmax along `axis`; overwrites and returns x (the logits are not kept)."""
    x -= x.max(axis=axis, keepdims=True)
    np.exp(x, out=x)
    x /= x.sum(axis=axis, keepdims=True)
    return x


def softmax_backward(dy: np.ndarray, y: np.ndarray, axis: int) -> np.ndarray:
    """d softmax: dx = y * (dy - sum(dy * y)) along `axis`; overwrites and returns dy."""
    dy -= (dy * y).sum(axis=axis, keepdims=True)
    dy *= y
    return dy


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
        qf = q.reshape(N, C, H * W).transpose(0, 2, 1)                            # [N, P, C] view
        kf = k.reshape(N, C, H * W)                                               # [N, C, P]
        vf = v.reshape(N, C, H * W)                                               # [N, C, P]
        logits = qf @ kf                                                          # [N, P(i), P(j)]
        logits *= C ** (-0.5)
        attn = softmax(logits, axis=2)                                            # [N, P(i), P(j)]
        o = (vf @ attn.transpose(0, 2, 1)).reshape(N, C, H, W)                    # [N, C, H, W]
        out, c_proj = self.proj_out.forward(o)                                    # [N, C, H, W]
        return x + out, (c_norm, c_q, c_k, c_v, qf, kf, vf, attn, c_proj)

    def backward(self, dy: np.ndarray, cache: tuple) -> np.ndarray:
        c_norm, c_q, c_k, c_v, qf, kf, vf, attn, c_proj = cache
        N, C, H, W = dy.shape
        do = self.proj_out.backward(dy, c_proj).reshape(N, C, H * W)              # [N, C, P]
        dvf = do @ attn                                                           # [N, C, P]
        dattn = do.transpose(0, 2, 1) @ vf                                        # [N, P(i), P(j)]
        dlogits = softmax_backward(dattn, attn, axis=2)                           # [N, P, P]
        dlogits *= C ** (-0.5)
        dqf = dlogits @ kf.transpose(0, 2, 1)                                     # [N, P, C]
        dkf = qf.transpose(0, 2, 1) @ dlogits                                     # [N, C, P]
        dh = self.v.backward(dvf.reshape(N, C, H, W), c_v)                        # [N, C, H, W]
        dh = dh + self.k.backward(dkf.reshape(N, C, H, W), c_k)                   # [N, C, H, W]
        dh = dh + self.q.backward(dqf.transpose(0, 2, 1).reshape(N, C, H, W), c_q)  # [N, C, H, W]
        return dy + self.norm.backward(dh, c_norm)                                # [N, C, H, W]
