"""ddim checkpoint import: fixtures written in torch's zip layout by our own writer (no torch needed)."""

from __future__ import annotations

import numpy as np
import pytest

from bidm_ref.data.torch_zip import save_torch_zip
from bidm_ref.loading.load import load_model
from bidm_ref.models.config import UNetConfig
from bidm_ref.loading.import_ddim import import_ddim
from bidm_ref.models.unet import UNet

SMALL = UNetConfig(ch=4, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.0,
                   in_channels=3, out_ch=3, resolution=8, groups=2)


def ddim_like_state(seed):
    model = UNet(SMALL, rng=np.random.default_rng(seed))
    return {f"module.{k}": v.copy() for k, v in model.state_dict().items()}


def test_runner_checkpoint_with_ema_round_trips(tmp_path):
    state, ema = ddim_like_state(0), ddim_like_state(1)
    save_torch_zip([state, {"state": {}, "param_groups": []}, 3, 1000, ema], tmp_path / "ckpt.pth")
    import_ddim(str(tmp_path / "ckpt.pth"), str(tmp_path / "out.h5"), SMALL)
    raw, config = load_model(str(tmp_path / "out.h5"), use_ema=False)
    averaged, _ = load_model(str(tmp_path / "out.h5"), use_ema=True)
    for key, value in state.items():
        np.testing.assert_array_equal(raw.state_dict()[key.removeprefix("module.")], value)
        np.testing.assert_array_equal(averaged.state_dict()[key.removeprefix("module.")], ema[key])
    assert config["model"]["ch"] == 4


def test_bare_state_dict_and_mismatches(tmp_path):
    state = {k.removeprefix("module."): v for k, v in ddim_like_state(0).items()}
    save_torch_zip(state, tmp_path / "bare.pth")
    import_ddim(str(tmp_path / "bare.pth"), str(tmp_path / "bare.h5"), SMALL)
    model, _ = load_model(str(tmp_path / "bare.h5"))
    np.testing.assert_array_equal(model.state_dict()["conv_out.weight"], state["conv_out.weight"])
    wider = UNetConfig(**{**SMALL.__dict__, "ch": 8, "groups": 2})
    with pytest.raises(ValueError, match=r"temb.dense.0.weight has shape \(16, 4\), the model config expects \(32, 8\)"):
        import_ddim(str(tmp_path / "bare.pth"), str(tmp_path / "x.h5"), wider)
    save_torch_zip({"conv_in.weight": np.zeros((4, 3, 3, 3), np.float32)}, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match="missing"):
        import_ddim(str(tmp_path / "partial.pth"), str(tmp_path / "x.h5"), SMALL)
    save_torch_zip([1, 2], tmp_path / "other.pth")
    with pytest.raises(ValueError, match="not a ddim checkpoint"):
        import_ddim(str(tmp_path / "other.pth"), str(tmp_path / "x.h5"), SMALL)
    assert not (tmp_path / "x.h5").exists()
