"""SPD: space patched distillation (Zheng et al. 2024, §3.3; docs/METHOD.md §6), and the L2 alternative.

Dimensions: N batch, C channels, H, W a unit's output, p patches per side, h = H // p, w = W // p.

For a student feature F and the teacher's F_hat at the same (x_t, t), each patch
P = F[:, :, i*h:(i+1)*h, j*w:(j+1)*w] (i, j < p; the official code's patch grid) gives

    gram  (official code):  Q = P P^T over the last two axes, per (n, c)       [N, C, h, h]
    token (paper eq. 11):   Q = P' P'^T with P' = P as tokens [N, h*w, C]       [N, h*w, h*w]
    Qn    = Q / max(||Q||_F, eps)                 (norm over the whole tensor, batch included; an all-zero
                                                   patch gives Qn = 0 instead of NaN)
    l     = sqrt(||Qn - Qn_hat||_F^2 + eps)       (not squared; eps keeps the gradient finite at 0)
    L_SPD = mean over (units, patches) of l

Backward of one patch (D = Qn - Qn_hat, r = ||Q||_F):
    dQn = D / l;  dQ = (dQn - Qn <dQn, Qn>) / r;  dP = (dQ + dQ^T) P   (gram)   /   P'-form (token)
Gradients flow into the student only. eps = 1e-12 in both places (ours; the code's torch.norm has none).

L2 (the paper's Table 7 comparison): L = mean over units of mean((F - F_hat)^2).
"""

from __future__ import annotations

import numpy as np

EPS = 1e-12


def patch_slices(H: int, W: int, p: int) -> list[tuple[slice, slice]]:
    """The p*p patch windows: rows i*h:(i+1)*h, cols j*w:(j+1)*w with h = H // p, w = W // p."""
    if H < p or W < p:
        raise ValueError(f"SPD: a {H}x{W} feature map cannot be split into {p}x{p} patches; lower --spd-patches")
    h, w = H // p, W // p
    return [(slice(i * h, (i + 1) * h), slice(j * w, (j + 1) * w)) for i in range(p) for j in range(p)]


def as_tokens(P: np.ndarray) -> np.ndarray:
    """[N, C, h, w] -> [N, h*w, C]."""
    N, C = P.shape[:2]
    return P.reshape(N, C, -1).transpose(0, 2, 1)


def relation(P: np.ndarray, variant: str) -> np.ndarray:
    """Q of one patch: gram [N, C, h, h] or token [N, hw, hw]."""
    M = P if variant == "gram" else as_tokens(P)                                  # [N, C, h, w] | [N, hw, C]
    return M @ M.swapaxes(-1, -2)


def relation_backward(P: np.ndarray, dQ: np.ndarray, variant: str) -> np.ndarray:
    """dP from dQ for Q = M M^T: dM = (dQ + dQ^T) M, mapped back to P's layout [N, C, h, w]."""
    M = P if variant == "gram" else as_tokens(P)
    dM = (dQ + dQ.swapaxes(-1, -2)) @ M                                           # like M
    if variant == "gram":
        return dM
    N, C, h, w = P.shape
    return dM.transpose(0, 2, 1).reshape(N, C, h, w)                              # [N, C, h, w]


def patch_loss(P: np.ndarray, P_hat: np.ndarray, variant: str) -> tuple[float, np.ndarray]:
    """l of one patch pair and dl/dP (the teacher side gets no gradient)."""
    Q, Q_hat = relation(P, variant), relation(P_hat, variant)
    r = max(np.sqrt(np.sum(Q * Q)), EPS)
    Qn, Qn_hat = Q / r, Q_hat / max(np.sqrt(np.sum(Q_hat * Q_hat)), EPS)
    D = Qn - Qn_hat
    loss = np.sqrt(np.sum(D * D) + EPS)
    dQn = D / loss
    dQ = (dQn - Qn * np.sum(dQn * Qn)) / r
    return float(loss), relation_backward(P, dQ, variant)


def spd_loss(
    features: list[np.ndarray], teacher: list[np.ndarray], patches: int = 4, variant: str = "gram"
) -> tuple[float, list[np.ndarray]]:
    """L_SPD over all unit pairs and its gradient per student feature (same shapes as `features`)."""
    if variant not in ("gram", "token"):
        raise ValueError(f"unknown SPD variant {variant!r}: use gram (official code) or token (paper)")
    total, count, grads = 0.0, 0, []
    for F, F_hat in zip(features, teacher, strict=True):
        dF = np.zeros_like(F)                                                     # [N, C, H, W]
        for rows, cols in patch_slices(F.shape[2], F.shape[3], patches):
            loss, dP = patch_loss(F[:, :, rows, cols], F_hat[:, :, rows, cols], variant)
            total += loss
            dF[:, :, rows, cols] += dP
            count += 1
        grads.append(dF)
    return total / count, [g / count for g in grads]


def l2_loss(features: list[np.ndarray], teacher: list[np.ndarray]) -> tuple[float, list[np.ndarray]]:
    """mean over units of mean((F - F_hat)^2), and its gradient per student feature."""
    n = len(features)
    total, grads = 0.0, []
    for F, F_hat in zip(features, teacher, strict=True):
        diff = F - F_hat                                                          # [N, C, H, W]
        total += float(np.mean(diff.astype(np.float64) ** 2))
        grads.append((2.0 / (diff.size * n)) * diff)
    return total / n, grads
