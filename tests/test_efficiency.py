"""Efficiency accounting (docs/METHOD.md §10): hand counts on hand-built models, structure checks on the UNet
presets."""

from __future__ import annotations

import numpy as np
import pytest

from bidm_ref.binary.bidm_layers import BIDM, XNOR, BinaryConv2d
from bidm_ref.experiments.efficiency import (
    count_ops,
    count_size,
    efficiency_table,
    format_efficiency,
    table_model,
    unet_efficiency,
)
from bidm_ref.models.autoencoder import AE_PRESETS, Autoencoder, Head
from bidm_ref.loading.packed import packed_twin
from bidm_ref.nn.attention import AttnBlock
from bidm_ref.nn.conv import Conv2d
from bidm_ref.nn.module import Module
from bidm_ref.nn.resblock import ResnetBlock
from test_packed import packed_copy


class Chain(Module):
    """Children applied one after the other (a hand-built model)."""

    def __init__(self, *layers: Module) -> None:
        super().__init__()
        for i, layer in enumerate(layers):
            self.add_child(str(i), layer)

    def forward(self, x):
        for layer in self.children.values():
            x, _ = layer.forward(x)
        return x, None


def counts(model, x, shapes_only=False):
    return count_ops(model, lambda: model.forward(x), shapes_only)


@pytest.mark.parametrize("shapes_only", [False, True])
def test_bidm_conv_then_fp_conv_by_hand(shapes_only):
    rng = np.random.default_rng(0)
    model = Chain(BinaryConv2d(3, 4, 3, 1, 1, rng=rng, options=BIDM), Conv2d(4, 2, 1, 1, 0, rng=rng))
    x = rng.standard_normal((1, 3, 5, 5)).astype(np.float32)
    ops = counts(model, x, shapes_only)
    # binary conv 3 -> 4, 3x3, 5x5 out: 4*25 outputs, each 3*9 one-bit multiply-adds
    assert ops.bops == 100 * 27
    # A = mean|x|: 75; K map: 25 outputs * 9 + 25 k_bias; x + tau: 75; z * alpha * K: 2 * 100
    assert ops.flops_by_category["binary_scales"] == 75 + 225 + 25 + 75 + 200
    # FP 1x1 shortcut 3 -> 4: 100 * 3 + 100 bias; s * shortcut and the add: 2 * 100
    assert ops.flops_by_category["shortcut"] == 300 + 100 + 200
    # FP 1x1 conv 4 -> 2: 50 outputs * 4 + 50 bias
    assert ops.flops_by_category["fp_layers"] == 200 + 50
    assert ops.flops == 600 + 600 + 250
    assert ops.ops == 2700 / 64 + 1450
    size = count_size(model)
    # 108 one-bit weights; floats: alpha 4, tau 3, k_weight 9, k_bias 1, s 1, shortcut 12 + 4, FP conv 8 + 2
    assert (size.binary_weights, size.float_params) == (108, 44)
    assert size.bits == 108 + 44 * 32 and size.mb == (108 + 44 * 32) / 8 / 2**20


def test_xnor_downsample_conv_by_hand_and_its_packed_twin():
    rng = np.random.default_rng(1)
    layer = BinaryConv2d(4, 4, 3, 2, (0, 1, 0, 1), rng=rng, options=XNOR)
    x = rng.standard_normal((1, 4, 6, 6)).astype(np.float32)
    for model in (layer, packed_copy(layer)):
        ops = counts(model, x)
        # 4 x 3 x 3 outputs (pad (0,1,0,1), stride 2), each 4*9 one-bit multiply-adds
        assert ops.bops == 36 * 36
        # A: 144; K map (fixed 1/9, no bias): 9 * 9; no tau; z * alpha * K: 2 * 36
        assert ops.flops_by_category["binary_scales"] == 144 + 81 + 72
        # 2x2 average pool: 4 * 36; s * shortcut and the add: 2 * 36
        assert ops.flops_by_category["shortcut"] == 144 + 72
        size = count_size(model)
        assert (size.binary_weights, size.float_params) == (144, 4 + 1)          # alpha [4], shortcut_scale


def test_resnet_and_attention_blocks_by_hand():
    rng = np.random.default_rng(2)
    block = ResnetBlock(4, 6, 8, 0.0, rng=rng, groups=2)
    x, temb = rng.standard_normal((1, 4, 3, 3)).astype(np.float32), rng.standard_normal((1, 8)).astype(np.float32)
    ops = count_ops(block, lambda: block.forward(x, temb))
    assert ops.bops == 0
    # conv1 3x3 4 -> 6: 54 * 36 + 54; temb_proj 8 -> 6: 48 + 6; conv2 3x3 6 -> 6: 54 * 54 + 54; nin 1x1: 54 * 4 + 54
    assert ops.flops_by_category["fp_layers"] == 1998 + 54 + 2970 + 270
    assert ops.flops_by_category["norm"] == 4 * 36 + 4 * 54
    # SiLU(norm1) 36, SiLU(temb) 8, temb add + SiLU(norm2) + residual 3 * 54
    assert ops.flops_by_category["elementwise"] == 36 + 8 + 162
    attn = AttnBlock(4, rng=rng, groups=2)
    y = rng.standard_normal((1, 4, 2, 2)).astype(np.float32)
    ops = count_ops(attn, lambda: attn.forward(y))
    # P = 4 positions: q^T k and v A^T 2 * 16 * 4; scale + softmax 4 * 16; residual 16
    assert ops.flops_by_category["attention"] == 128 + 64 + 16
    assert ops.flops_by_category["fp_layers"] == 4 * (16 * 4 + 16)               # q, k, v, proj_out 1x1
    assert ops.flops_by_category["norm"] == 4 * 16


BODY = ("conv1", "conv2", "temb_proj", ".q", ".k", ".v", "proj_out", "sample.conv")   # docs/METHOD.md §2, by name


def test_unet_table_structure():
    fp, xnor, bidm = (table_model(name, "tiny") for name in ("fp", "xnor", "bidm"))
    fp_row = unet_efficiency(fp, "fp", "tiny")
    assert fp_row.ops.bops == 0 and fp_row.size.bits == 32 * fp.num_parameters()
    # the binarized weights are exactly those of the body layers of docs/METHOD.md §2
    body = sum(p.size for n, p in fp.named_parameters() if n.endswith(".weight") and n[:-7].endswith(BODY))
    assert count_size(xnor).binary_weights == body
    # shapes-only counting (the table's default) equals counting a real forward; the packed twin counts the same
    real = unet_efficiency(bidm, "bidm", "tiny", shapes_only=False)
    assert unet_efficiency(bidm, "bidm", "tiny") == real
    twin = unet_efficiency(packed_twin(bidm, "bidm", 1000), "bidm", "tiny")
    assert (twin.ops, twin.size) == (real.ops, real.size)
    assert real.size.mb < fp_row.size.mb / 5 and real.ops.ops < fp_row.ops.ops / 2


def test_table_rows_and_format():
    rows = efficiency_table(("tiny",))
    assert [(r.model, r.preset) for r in rows] == [("fp", "tiny"), ("xnor", "tiny"), ("bidm", "tiny")]
    text = format_efficiency(rows)
    assert len(text.splitlines()) == 5 + 4 and "OPs = BOPs/64 + FLOPs" in text


def test_autoencoder_blocks_by_hand_and_latent_rows_add_the_decoder():
    rng = np.random.default_rng(3)
    block = ResnetBlock(2, 2, 0, 0.0, rng=rng, groups=2)                          # no temb (the autoencoder's)
    x = rng.standard_normal((1, 2, 2, 2)).astype(np.float32)
    ops = count_ops(block, lambda: block.forward(x))
    # conv1, conv2 3x3 2 -> 2: 8 * 18 + 8 each; SiLU(norm1) 8, SiLU(norm2) + residual 2 * 8
    assert ops.flops_by_category["fp_layers"] == 2 * (144 + 8)
    assert ops.flops_by_category["elementwise"] == 8 + 16
    head = Head(2, 1, 2, rng)
    ops = count_ops(head, lambda: head.forward(x))
    assert ops.flops_by_category["elementwise"] == 8 and ops.flops_by_category["fp_layers"] == 4 * 18 + 4
    rows = {(r.model, r.preset): r for r in efficiency_table(("tiny", "latent"))}
    assert all(rows[(m, "tiny")].ops.flops_by_category["autoencoder"] == 0 for m in ("fp", "xnor", "bidm"))
    ae = Autoencoder(AE_PRESETS["f4"], rng=np.random.default_rng(0))
    z = np.zeros((1, 4, 8, 8), np.float32)
    decode = count_ops(ae, lambda: ae.decode(z))                                 # a real forward, not shapes only
    unet = unet_efficiency(table_model("bidm", "latent"), "bidm", "latent")
    row = rows[("bidm", "latent")]
    assert row.ops.flops_by_category["autoencoder"] == decode.flops > 0 and row.ops.bops == unet.ops.bops
    decoder_params = sum(p.size for n, p in ae.named_parameters() if n.startswith(("decoder.", "post_quant_conv.")))
    assert row.size.float_params == unet.size.float_params + decoder_params
