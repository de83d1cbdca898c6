"""What a port does with the golden files, in plain NumPy + h5py, no bidm_ref: `python golden/check_standalone.py`.

Dimensions: N batch, C input channels, O output channels, H, W input and Ho, Wo output spatial, kh, kw kernel.

Reads two cases, recomputes them from their /params and /inputs by the definitions in golden/README.md,
and compares every /outputs and /grads dataset by its compare mode:
    v1/nn/conv2d__k3_s2_p1.h5          y = conv(x, W) + b (cross-correlation, zero padding) and its gradients
    v1/binary/approx_sign__sign0.h5    y = sign(u) with sign(0) = +1, du = dout * ApproxSign'(u)
Exit code 0 when all pass, 1 otherwise (each failing dataset is printed with its worst element).
"""

from __future__ import annotations

import sys
from pathlib import Path

import h5py
import numpy as np

HERE = Path(__file__).resolve().parent
CONV_CASE = HERE / "v1" / "nn" / "conv2d__k3_s2_p1.h5"
SIGN_CASE = HERE / "v1" / "binary" / "approx_sign__sign0.h5"


def passes(got: np.ndarray, ds: h5py.Dataset) -> tuple[bool, str]:
    """The README's four compare modes; (ok, a note on the worst element)."""
    want, mode, rtol, atol = ds[()], ds.attrs["compare"], float(ds.attrs["rtol"]), float(ds.attrs["atol"])
    if got.shape != want.shape:
        return False, f"shape {got.shape} != {want.shape}"
    err = np.abs(got.astype(np.float64) - want.astype(np.float64))               # [...]
    worst = np.unravel_index(np.argmax(err), want.shape) if want.ndim else ()
    note = f"worst at {[int(i) for i in worst]}: got {got[worst].item()!r}, expected {want[worst].item()!r}"
    if mode == "exact":
        return bool(np.array_equal(got, want)), note
    if mode == "allclose":
        return bool(np.all(err <= atol + rtol * np.abs(want))), note
    if mode == "nmse":
        return bool(np.sum(err**2) <= rtol * np.sum(want.astype(np.float64) ** 2) + atol**2 * want.size), note
    if mode == "sign_agree":
        return bool(np.mean((got >= 0) != (want >= 0)) <= rtol), note
    return False, f"unknown compare mode {mode!r}"


def conv_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int, pad: np.ndarray) -> np.ndarray:
    """Cross-correlation with zero padding (top, bottom, left, right), one kernel tap at a time."""
    top, bottom, left, right = (int(p) for p in pad)
    xp = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))              # [N, C, Hp, Wp]
    O, _, kh, kw = w.shape
    Ho, Wo = (xp.shape[2] - kh) // stride + 1, (xp.shape[3] - kw) // stride + 1
    y = np.zeros((x.shape[0], O, Ho, Wo)) + b[None, :, None, None]                # [N, O, Ho, Wo]
    for i in range(kh):
        for j in range(kw):
            tap = xp[:, :, i : i + stride * Ho : stride, j : j + stride * Wo : stride]  # [N, C, Ho, Wo]
            y += np.einsum("nchw,oc->nohw", tap, w[:, :, i, j])
    return y


def conv_backward(x: np.ndarray, w: np.ndarray, stride: int, pad: np.ndarray, dy: np.ndarray) -> dict[str, np.ndarray]:
    """Gradients of sum(dy * conv(x, w) + b): dx [N, C, H, W], dW [O, C, kh, kw], db [O]."""
    top, bottom, left, right = (int(p) for p in pad)
    xp = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))              # [N, C, Hp, Wp]
    dxp = np.zeros_like(xp)                                                       # [N, C, Hp, Wp]
    dw = np.zeros_like(w)                                                         # [O, C, kh, kw]
    Ho, Wo = dy.shape[2:]
    for i in range(w.shape[2]):
        for j in range(w.shape[3]):
            rows, cols = slice(i, i + stride * Ho, stride), slice(j, j + stride * Wo, stride)
            dw[:, :, i, j] = np.einsum("nohw,nchw->oc", dy, xp[:, :, rows, cols])
            dxp[:, :, rows, cols] += np.einsum("nohw,oc->nchw", dy, w[:, :, i, j])
    dx = dxp[:, :, top : top + x.shape[2], left : left + x.shape[3]]              # [N, C, H, W]
    return {"x": dx, "weight": dw, "bias": dy.sum(axis=(0, 2, 3))}


def recompute_conv(h5: h5py.File) -> dict[str, np.ndarray]:
    p, i = h5["params"], h5["inputs"]
    x, w, b, dout = i["x"][()], p["weight"][()], p["bias"][()], i["dout"][()]
    stride, pad = int(p.attrs["stride"]), p.attrs["padding"]
    return {"outputs/y": conv_forward(x, w, b, stride, pad),
            **{f"grads/{k}": v for k, v in conv_backward(x, w, stride, pad, dout).items()}}


def recompute_approx_sign(h5: h5py.File) -> dict[str, np.ndarray]:
    u, dout = h5["inputs/u"][()], h5["inputs/dout"][()]                           # [...]
    slope = np.where(np.abs(u) < 1, np.where(u < 0, 2 + 2 * u, 2 - 2 * u), 0.0)  # [...]
    return {"outputs/y": np.where(u >= 0, 1.0, -1.0), "grads/u": dout * slope}


def check(path: Path, recompute) -> bool:
    ok = True
    with h5py.File(path, "r") as h5:
        if h5.attrs["format"] != "bidm-golden" or int(h5.attrs["format_version"]) != 1:
            print(f"{path}: not a bidm-golden format_version 1 file")
            return False
        got = recompute(h5)
        names = [f"{g}/{n}" for g in ("outputs", "grads") for n in h5[g]]
        if sorted(names) != sorted(got):
            print(f"{path}: datasets {sorted(names)} but recomputed {sorted(got)}")
            return False
        for name in names:
            good, note = passes(got[name], h5[name])
            print(f"{'ok  ' if good else 'FAIL'} {h5.attrs['case']} /{name} ({h5[name].attrs['compare']})"
                  + ("" if good else f": {note}"))
            ok &= good
    return ok


if __name__ == "__main__":
    results = [check(CONV_CASE, recompute_conv), check(SIGN_CASE, recompute_approx_sign)]
    sys.exit(0 if all(results) else 1)
