"""Official BiDM student checkpoints (github Xingyu-Zheng/BiDM, bidm-cifar): the key map of
loading/import_official.py on a small hand-made state dict in the official names, written as a torch zip by our
own writer (no torch needed)."""

from __future__ import annotations

import numpy as np
import pytest

from bidm_ref.bidm.student import build_unet
from bidm_ref.binary.methods import BinaryLayers
from bidm_ref.binary.variant import LayerVariant
from bidm_ref.data.torch_zip import save_torch_zip
from bidm_ref.loading.import_official import import_official
from bidm_ref.loading.load import load_model
from bidm_ref.models.config import UNetConfig
from bidm_ref.storage.checkpoint import load_checkpoint

# 3 levels, attention on level 1, as the official CIFAR model (the official-cifar TBS layout needs it)
CFG = UNetConfig(ch=4, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.0, in_channels=3,
                 out_ch=3, resolution=8, groups=2)
CONV1 = "down.0.block.0.conv1"
TEMB = "down.0.block.0.temb_proj"


def official_state(rng, own):
    """An official-named state for the student whose bidm-ref state is `own`: the official code's names and
    shapes (BNNConv2d.channel_threshold [1, C, 1, 1], BNNLinear.channel_threshold [1, I], fliter_k,
    cache_coefficients), DataParallel's prefix, one unused attention quantizer threshold."""
    state = {}
    for name, value in own.items():
        fresh = rng.standard_normal(value.shape).astype(np.float32)
        if name == "tbs.a":
            state["cache_coefficients"] = fresh
        elif name.endswith(".tau") and name.removesuffix(".tau").endswith("temb_proj"):
            state[name.removesuffix(".tau") + ".channel_threshold"] = fresh.reshape(1, -1)
        elif name.endswith(".tau"):
            state[name.removesuffix(".tau") + ".channel_threshold"] = fresh.reshape(1, -1, 1, 1)
        elif name.endswith(".k_weight"):
            state[name.removesuffix(".k_weight") + ".fliter_k.weight"] = fresh
        elif name.endswith(".k_bias"):
            state[name.removesuffix(".k_bias") + ".fliter_k.bias"] = fresh
        else:
            state[name] = fresh
    state["mid.attn_1.quantizer_q.channel_threshold"] = np.zeros((1, 8, 1), np.float32)
    return {f"module.{k}": v for k, v in state.items()}


@pytest.fixture
def student_names():
    """The bidm-ref state an imported official student has: BiDM layers, official padding and TBS layout."""
    model = build_unet(CFG, BinaryLayers("bidm", variant=LayerVariant(downsample_pad="official")), 2, 1000,
                       tbs_layout="official-cifar")
    return model.state_dict()


def test_the_key_map_on_a_hand_made_official_state(tmp_path, student_names):
    state = official_state(np.random.default_rng(0), student_names)
    assert f"module.{CONV1}.channel_threshold" in state and f"module.{CONV1}.fliter_k.weight" in state
    save_torch_zip([state, {"state": {}, "param_groups": []}, 1, 10], tmp_path / "ckpt.pth")
    import_official(str(tmp_path / "ckpt.pth"), str(tmp_path / "student.h5"), CFG)
    model, config = load_model(str(tmp_path / "student.h5"), use_ema=False)
    own = model.state_dict()
    np.testing.assert_array_equal(own[f"{CONV1}.tau"], state[f"module.{CONV1}.channel_threshold"].reshape(-1))
    np.testing.assert_array_equal(own[f"{TEMB}.tau"], state[f"module.{TEMB}.channel_threshold"][0])
    np.testing.assert_array_equal(own[f"{CONV1}.k_weight"], state[f"module.{CONV1}.fliter_k.weight"])
    np.testing.assert_array_equal(own[f"{CONV1}.k_bias"], state[f"module.{CONV1}.fliter_k.bias"])
    np.testing.assert_array_equal(own["tbs.a"], state["module.cache_coefficients"])
    np.testing.assert_array_equal(own[f"{CONV1}.shortcut_scale"], state[f"module.{CONV1}.shortcut_scale"])
    np.testing.assert_array_equal(own["conv_in.weight"], state["module.conv_in.weight"])
    assert config["student"] == {"method": "bidm", "teacher": "", "downsample_pad": "official", "fp_shortcut": True}
    assert config["bidm"]["tbs_layout"] == "official-cifar" and config["bidm"]["distill_lambda"] == 1e-2
    assert model.downsamples[0].conv.options.pad_before_sign
    assert "mid.attn_1.quantizer_q.channel_threshold" not in load_checkpoint(str(tmp_path / "student.h5")).params


def test_a_state_that_is_not_an_official_student_is_refused_in_one_line(tmp_path, student_names):
    state = official_state(np.random.default_rng(1), student_names)
    state[f"module.{CONV1}.channel_threshold"] = np.zeros((2, 4, 1, 1), np.float32)
    save_torch_zip(state, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"channel_threshold has shape \[2, 4, 1, 1\], not \[1, C, 1, 1\] or \[1, I\]"):
        import_official(str(tmp_path / "bad.pth"), str(tmp_path / "x.h5"), CFG)
    state = official_state(np.random.default_rng(1), student_names)
    del state["module.cache_coefficients"]
    save_torch_zip(state, tmp_path / "no_tbs.pth")
    with pytest.raises(ValueError, match=r"missing \['tbs.a'\]"):
        import_official(str(tmp_path / "no_tbs.pth"), str(tmp_path / "x.h5"), CFG)
    assert not (tmp_path / "x.h5").exists()
