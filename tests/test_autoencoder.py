"""The first-stage autoencoder: finite-difference checks (float64) of its blocks, the KL term, the
reparameterisation and the whole training objective; shapes, names and config errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bidm_ref.models.autoencoder import (AE_PRESETS, Autoencoder, AutoencoderConfig, Decoder, Encoder, Head, Level,
                                         Middle, ae_preset, kl_divergence, reconstruction_loss, reparameterize,
                                         reparameterize_backward)
from bidm_ref.nn.resblock import ResnetBlock
from bidm_ref.train.autoencoder import AutoencoderLossConfig, AutoencoderObjective
from fdcheck import assert_close, check_module, directional_fd

seeds = st.integers(0, 2**31 - 1)
SMALL = AutoencoderConfig(ch=4, ch_mult=(1, 2), num_res_blocks=1, z_channels=2, in_channels=1, resolution=8, groups=2)


@given(st.integers(1, 2), st.sampled_from([(2, 2), (2, 4)]), st.integers(1, 4), seeds)
def test_resnet_block_without_temb_backward_fd(N, chans, H, seed):
    ci, co = chans
    rng = np.random.default_rng(seed)
    block = ResnetBlock(ci, co, 0, 0.0, rng=rng, groups=2)
    assert block.temb_proj is None and "temb_proj.weight" not in block.state_dict()

    class NoTemb:  # backward's dtemb is None without temb; the check wants one gradient per input
        def __getattr__(self, name):
            return getattr(block, name)

        def backward(self, dy, cache):
            dx, dtemb = block.backward(dy, cache)
            assert dtemb is None
            return dx

    check_module(NoTemb(), [rng.standard_normal((N, ci, H, H))], lambda x: block.forward(x), rng)


@given(st.integers(1, 2), st.sampled_from([None, "downsample", "upsample"]), st.integers(1, 2), seeds)
def test_level_backward_fd(N, resample, blocks, seed):
    rng = np.random.default_rng(seed)
    level = Level(2, 4, blocks, resample, 2, rng)
    check_module(level, [rng.standard_normal((N, 2, 4, 4))], level.forward, rng)


# H >= 2: at H = 1 a norm group holds 2 values, and a near-tie makes the normalisation so steep that central
# differences do not converge for any step (seen at N = 2, seed 37360; the check then fails by chance)
@given(st.integers(1, 2), st.integers(2, 3), seeds)
def test_middle_and_head_backward_fd(N, H, seed):
    rng = np.random.default_rng(seed)
    middle, head = Middle(4, 2, rng), Head(4, 3, 2, rng)
    check_module(middle, [rng.standard_normal((N, 4, H, H))], middle.forward, rng)
    check_module(head, [rng.standard_normal((N, 4, H, H))], head.forward, rng)


@pytest.mark.parametrize("ch_mult", [(1,), (1, 2), (1, 2, 2)])
def test_encoder_and_decoder_backward_fd(ch_mult):
    rng = np.random.default_rng(len(ch_mult))
    cfg = AutoencoderConfig(ch=4, ch_mult=ch_mult, num_res_blocks=1, z_channels=2, resolution=8, groups=2)
    encoder, decoder = Encoder(cfg, rng), Decoder(cfg, rng)
    Z, h, w = cfg.latent_shape
    check_module(encoder, [rng.standard_normal((2, 1, 8, 8))], encoder.forward, rng)
    check_module(decoder, [rng.standard_normal((2, Z, h, w))], decoder.forward, rng)


def test_kl_divergence_value_and_gradient_fd():
    rng = np.random.default_rng(0)
    mean, logvar = rng.standard_normal((3, 2, 2, 2)), rng.standard_normal((3, 2, 2, 2))
    kl, dmean, dlogvar = kl_divergence(mean, logvar)
    # closed form per entry, from the Gaussian densities: log(1/sigma) + (sigma^2 + mu^2) / 2 - 1/2
    sigma = np.exp(0.5 * logvar)
    assert kl == pytest.approx(float(np.sum(-np.log(sigma) + (sigma**2 + mean**2) / 2 - 0.5)) / 3, rel=1e-12)
    for array, grad in ((mean, dmean), (logvar, dlogvar)):
        v = rng.standard_normal(array.shape)
        assert_close(directional_fd(lambda: kl_divergence(mean, logvar)[0], array, v, 1e-6), float((grad * v).sum()),
                     "kl")
    zero_kl, _, _ = kl_divergence(np.zeros((2, 1, 1, 1)), np.zeros((2, 1, 1, 1)))
    assert zero_kl == 0.0


@pytest.mark.parametrize("kind", ["l1", "l2"])
def test_reconstruction_loss_gradient_fd(kind):
    rng = np.random.default_rng(1)
    x_rec, x = rng.standard_normal((2, 1, 3, 3)), rng.standard_normal((2, 1, 3, 3))
    loss, grad = reconstruction_loss(x_rec, x, kind)
    v = rng.standard_normal(x_rec.shape)
    assert_close(directional_fd(lambda: reconstruction_loss(x_rec, x, kind)[0], x_rec, v, 1e-7),
                 float((grad * v).sum()), kind)
    with pytest.raises(ValueError, match="l1 or l2"):
        reconstruction_loss(x_rec, x, "lpips")


def test_reparameterize_gradient_fd():
    rng = np.random.default_rng(2)
    mean, logvar, eps = (rng.standard_normal((2, 2, 2, 2)) for _ in range(3))
    dz = rng.standard_normal(mean.shape)
    z, std = reparameterize(mean, logvar, eps)
    np.testing.assert_allclose(z, mean + np.sqrt(np.exp(logvar)) * eps, rtol=1e-12)
    dmean, dlogvar = reparameterize_backward(dz, std, eps)
    for array, grad in ((mean, dmean), (logvar, dlogvar)):
        v = rng.standard_normal(array.shape)
        numeric = directional_fd(lambda: float((reparameterize(mean, logvar, eps)[0] * dz).sum()), array, v, 1e-6)
        assert_close(numeric, float((grad * v).sum()), "reparameterize")


def test_objective_gradient_fd_through_encoder_sample_decoder():
    """The whole step: FD of the returned loss along random directions of several parameters."""
    ae = Autoencoder(SMALL, rng=np.random.default_rng(3)).astype(np.float64)
    objective = AutoencoderObjective(ae, AutoencoderLossConfig(reconstruction="l2", kl_weight=0.3))
    x0 = np.random.default_rng(4).standard_normal((2, 1, 8, 8))

    def loss() -> float:
        return objective.step(x0, np.random.default_rng(5))["loss"]

    ae.zero_grad()
    loss()
    grads = {name: g.copy() for name, g in ae.named_grads()}
    params = dict(ae.named_parameters())
    rng = np.random.default_rng(6)
    for name in ("encoder.conv_in.weight", "encoder.mid.attn_1.q.weight", "quant_conv.weight", "quant_conv.bias",
                 "post_quant_conv.weight", "decoder.up.1.upsample.conv.weight", "decoder.conv_out.bias"):
        v = rng.standard_normal(params[name].shape)
        assert_close(directional_fd(loss, params[name], v, 1e-6), float((grads[name] * v).sum()), name)


def test_clipped_logvar_gets_no_gradient():
    ae = Autoencoder(SMALL, rng=np.random.default_rng(7)).astype(np.float64)
    ae.quant_conv.params["bias"][SMALL.z_channels:] = 100.0  # every logvar far above the clip at 20
    mean, logvar, cache = ae.encode(np.random.default_rng(8).standard_normal((1, 1, 8, 8)))
    assert np.all(logvar == 20.0)
    ae.zero_grad()
    ae.encode_backward(np.zeros_like(mean), np.ones_like(logvar), cache)
    assert not np.any(ae.quant_conv.grads["weight"][SMALL.z_channels:])
    assert not np.any(ae.quant_conv.grads["bias"][SMALL.z_channels:])


def test_shapes_names_and_presets():
    ae = Autoencoder(ae_preset("f4", 1), rng=np.random.default_rng(0))
    mean, logvar, _ = ae.encode(np.zeros((2, 1, 32, 32), np.float32))
    assert mean.shape == logvar.shape == (2, 4, 8, 8) == (2, *AE_PRESETS["f4"].latent_shape)
    x_rec, _ = ae.decode(mean)
    assert x_rec.shape == (2, 1, 32, 32)
    names = [n for n, _ in ae.named_parameters()]
    for name in ("encoder.down.0.block.0.conv1.weight", "encoder.down.0.downsample.conv.weight",
                 "encoder.mid.attn_1.q.weight", "encoder.norm_out.weight", "decoder.up.2.upsample.conv.weight",
                 "decoder.up.0.block.0.nin_shortcut.weight", "decoder.conv_out.bias", "quant_conv.weight"):
        assert name in names  # LDM's AutoencoderKL keys
    assert AE_PRESETS["f2"].latent_shape == (2, 16, 16)
    with pytest.raises(ValueError, match="unknown autoencoder preset"):
        ae_preset("f8", 1)
    with pytest.raises(ValueError, match="not divisible by the downsampling factor"):
        AutoencoderConfig(ch_mult=(1, 2, 2, 2, 2, 2), resolution=16)
    with pytest.raises(ValueError, match="l1 or l2"):
        AutoencoderLossConfig(reconstruction="lpips")
