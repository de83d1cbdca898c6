"""Zero-padding specs of convolutions: one int or (top, bottom, left, right), and output sizes."""

from __future__ import annotations

Padding = int | tuple[int, int, int, int]


def as_padding(padding: Padding) -> tuple[int, int, int, int]:
    """Normalise an int or a (top, bottom, left, right) tuple to the tuple form."""
    if isinstance(padding, int):
        return (padding, padding, padding, padding)
    if len(padding) != 4 or any(p < 0 for p in padding):
        raise ValueError(f"padding must be an int or (top, bottom, left, right) >= 0, got {padding}")
    return tuple(int(p) for p in padding)


def conv_output_size(size: int, kernel: int, stride: int, pad_lo: int, pad_hi: int) -> int:
    """Output length of a convolution along one axis (floor, as torch)."""
    return (size + pad_lo + pad_hi - kernel) // stride + 1
