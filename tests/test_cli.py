"""The command line: train -> sample round trip on fixtures, errors as one line with exit code 2."""

from __future__ import annotations

import argparse

import numpy as np
from PIL import Image

import cli
from bidm_ref.storage.checkpoint import load_checkpoint
from test_trainer import write_idx_dataset


def test_train_then_sample_png_and_npz(tmp_path, capsys):
    write_idx_dataset(tmp_path)
    out = tmp_path / "run"
    assert cli.main(["train", "--preset", "tiny", "--data-dir", str(tmp_path), "--steps", "2", "--batch-size", "4",
                     "--out", str(out)]) == 0
    grid, npz, pngs = tmp_path / "grid.png", tmp_path / "grid.npz", tmp_path / "pngs"
    assert cli.main(["sample", "--weights", str(out / "ckpt.h5"), "--n", "3", "--steps", "2", "--out", str(grid),
                     "--npz", str(npz), "--out-dir", str(pngs)]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {grid}" in printed and f"wrote 3 PNGs to {pngs}" in printed
    batch = np.load(npz)["arr_0"]
    assert batch.shape == (3, 32, 32, 1) and batch.dtype == np.uint8
    assert Image.open(grid).mode == "L"
    assert sorted(p.name for p in pngs.iterdir()) == ["000000.png", "000001.png", "000002.png"]
    for k in range(3):
        image = Image.open(pngs / f"{k:06d}.png")
        assert image.mode == "L"
        np.testing.assert_array_equal(np.asarray(image), batch[k, :, :, 0])
    again = tmp_path / "again.npz"
    cli.main(["sample", "--weights", str(out / "ckpt.h5"), "--n", "3", "--steps", "2", "--out", str(tmp_path / "a.png"),
              "--npz", str(again)])
    np.testing.assert_array_equal(np.load(again)["arr_0"], batch)


def test_errors_are_one_line_with_exit_code_2(tmp_path, capsys):
    assert cli.main(["sample", "--weights", str(tmp_path / "missing.h5")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "missing.h5" in err and "\n" not in err
    assert cli.main(["train", "--method", "bidm", "--steps", "1"]) == 2
    assert "--teacher" in capsys.readouterr().err
    assert cli.main(["train", "--data-dir", str(tmp_path), "--steps", "1", "--out", str(tmp_path / "r")]) == 2
    assert "fashion-mnist" in capsys.readouterr().err


def test_every_flag_has_help_and_shows_its_default():
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    for name, sub in {"": parser, **commands}.items():
        for action in sub._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"cli.py {name} {action.option_strings[0]} has no help text"
        text = sub.format_help()
        for action in sub._actions:
            shown = action.option_strings and action.dest != "help" and action.default is not False
            if shown and isinstance(action.default, (int, float, str)):
                assert f"(default: {action.default})" in " ".join(text.split()) or "default" in action.help, \
                    f"cli.py {name} {action.option_strings[0]}: default {action.default} not shown"


def test_train_init_takes_the_model_of_its_weights_and_refuses_another_preset(tmp_path, capsys):
    write_idx_dataset(tmp_path)
    first, second = tmp_path / "first", tmp_path / "second"
    flags = ["--data-dir", str(tmp_path), "--steps", "1", "--batch-size", "4"]
    assert cli.main(["train", "--preset", "tiny", *flags, "--out", str(first)]) == 0
    assert cli.main(["train", "--init", str(first / "ckpt.h5"), *flags, "--out", str(second)]) == 0
    config = load_checkpoint(second / "ckpt.h5").config
    assert config["init"]["weights"] == str(first / "ckpt.h5") and config["model"]["ch"] == 16
    capsys.readouterr()
    assert cli.main(["train", "--init", str(first / "ckpt.h5"), "--preset", "small", *flags,
                     "--out", str(tmp_path / "third")]) == 2
    assert "drop --preset" in capsys.readouterr().err
