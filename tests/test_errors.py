"""Expected failures of the command line: one line `error: ...` on stderr and exit code 2; --debug re-raises.

Every case goes through cli.main(argv). Where sampling would run, a counting fake replaces the
model's eps function, so a test also proves that nothing was computed before the refusal (and
that `sample` runs exactly the steps it reports).
"""

from __future__ import annotations

import pickle
import struct
import zipfile

import numpy as np
import pytest

import cli
from bidm_ref.data.images import save_npz_batch
from bidm_ref.metrics.classifier import FeatureClassifier, save_classifier
from test_trainer import write_idx_dataset


def os_system_pickle(marker) -> bytes:
    """Protocol-2 pickle of os.system(f"touch {marker}") written opcode by opcode (GLOBAL, BINUNICODE, TUPLE1, REDUCE)."""
    command = f"touch {marker}".encode()
    return b"\x80\x02cos\nsystem\nX" + struct.pack("<I", len(command)) + command + b"\x85R."


def one_line_error(capsys, *words: str) -> str:
    """The single stderr line of a refused command, checked for `words`."""
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ")
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


@pytest.fixture
def eps_calls(monkeypatch) -> list[int]:
    """The timestep of every model evaluation while sampling; the model is a fake that predicts eps = 0."""
    calls: list[int] = []

    def fake_eps_fn(model):
        def eps(x, t):
            calls.append(int(t[0]))
            return np.zeros_like(x)

        return eps

    monkeypatch.setattr("bidm_ref.loading.sampling.sampling_eps_fn", fake_eps_fn)
    return calls


def test_refused_cifar_pickle_is_one_line(tmp_path, capsys):
    marker = tmp_path / "marker"
    data = tmp_path / "cifar"
    data.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (data / name).write_bytes(os_system_pickle(marker))
    argv = ["train", "--dataset", "cifar10", "--data-dir", str(data), "--steps", "1", "--out", str(tmp_path / "run")]
    assert cli.main(argv) == 2
    one_line_error(capsys, "refusing to load os.system", str(data / "data_batch_1"), "CIFAR-10")
    assert not marker.exists()


def test_refused_torch_pickle_is_one_line(tmp_path, capsys):
    marker, ckpt, out = tmp_path / "marker", tmp_path / "evil.pt", tmp_path / "out.h5"
    with zipfile.ZipFile(ckpt, "w") as archive:
        archive.writestr("evil/data.pkl", os_system_pickle(marker))
        archive.writestr("evil/version", b"3\n")
    assert cli.main(["import-ddim", str(ckpt), str(out)]) == 2
    one_line_error(capsys, "refusing to load os.system", str(ckpt))
    assert not marker.exists() and not out.exists()
    with pytest.raises(pickle.UnpicklingError, match="os.system"):
        cli.main(["--debug", "import-ddim", str(ckpt), str(out)])
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy's overflow warnings of the diverging step
def test_diverged_training_is_one_line(tmp_path, capsys):
    write_idx_dataset(tmp_path)
    argv = ["train", "--preset", "tiny", "--data-dir", str(tmp_path), "--steps", "3", "--batch-size", "4",
            "--lr", "1e30", "--out", str(tmp_path / "run")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and err.rstrip().splitlines()[-1] == errors[0]        # after the progress bar
    assert "training diverged" in errors[0] and "--lr" in errors[0]


def test_train_steps_0_names_the_flag(tmp_path, capsys):
    write_idx_dataset(tmp_path)
    assert cli.main(["train", "--data-dir", str(tmp_path), "--steps", "0", "--out", str(tmp_path / "run")]) == 2
    one_line_error(capsys, "--steps", ">= 1")


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--eta", "nan"], ["--eta", "nan"]),
        (["--eta", "inf"], ["--eta", "inf"]),
        (["--eta", "-0.5"], ["--eta", "-0.5"]),
        (["--eta", "1.5"], ["--eta", "[0, 1]"]),
        (["--n", "0"], ["--n 1 or more"]),
        (["--steps", "0"], ["--steps 1 or more"]),
        (["--batch-size", "0"], ["--batch-size 1 or more"]),
    ],
)
def test_sample_settings_are_checked_before_sampling(tmp_path, capsys, eps_calls, flags, words):
    argv = ["sample", "--method", "fp", "--n", "1", "--steps", "2", *flags, "--out", str(tmp_path / "s.png")]
    assert cli.main(argv) == 2
    one_line_error(capsys, *words)
    assert eps_calls == []


def test_sample_runs_exactly_the_steps_it_reports(tmp_path, capsys, eps_calls):
    assert cli.main(["sample", "--method", "fp", "--n", "1", "--steps", "4", "--out", str(tmp_path / "s.png")]) == 0
    assert "ddim 4 steps" in capsys.readouterr().out
    assert eps_calls == [750, 500, 250, 0]


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_sample_refuses_a_step_count_the_skip_cannot_run(tmp_path, capsys, eps_calls, sampler):
    argv = ["sample", "--method", "fp", "--n", "1", "--steps", "600", "--sampler", sampler,
            "--out", str(tmp_path / "s.png")]
    assert cli.main(argv) == 2
    one_line_error(capsys, "--steps 600 would run 1000 steps", "500 or 1000")
    assert eps_calls == [] and not (tmp_path / "s.png").exists()


@pytest.mark.parametrize("flag", ["--out", "--npz", "--out-dir"])
def test_sample_refuses_an_unwritable_output_before_sampling(tmp_path, capsys, eps_calls, flag):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    argv = ["sample", "--method", "fp", "--n", "1", "--steps", "2", "--out", str(tmp_path / "s.png"),
            flag, str(blocker / "inside")]
    assert cli.main(argv) == 2
    one_line_error(capsys, flag, f"{blocker} is a file")
    assert eps_calls == []


def test_sample_refuses_a_folder_as_file_and_a_non_empty_out_dir(tmp_path, capsys, eps_calls):
    base = ["sample", "--method", "fp", "--n", "1", "--steps", "2"]
    assert cli.main([*base, "--out", str(tmp_path)]) == 2
    one_line_error(capsys, "--out", "is a folder")
    (tmp_path / "000000.png").write_bytes(b"an earlier run")
    assert cli.main([*base, "--out", str(tmp_path / "s.png"), "--out-dir", str(tmp_path)]) == 2
    one_line_error(capsys, "--out-dir", "already holds 1 entries", "000000.png", "empty")
    assert eps_calls == []


def test_sample_debug_reraises(tmp_path):
    with pytest.raises(ValueError, match="--eta"):
        cli.main(["--debug", "sample", "--method", "fp", "--eta", "nan", "--out", str(tmp_path / "s.png")])


def test_a_multi_line_message_prints_its_first_line(monkeypatch, capsys):
    def evaluate(*args):
        raise ValueError("first line\nsecond line")

    monkeypatch.setattr("bidm_ref.metrics.run_eval.evaluate", evaluate)
    assert cli.main(["eval", "--samples", "s.npz"]) == 2
    assert one_line_error(capsys, "first line", "--debug") == "error: first line (more with --debug)"


def test_eval_unknown_metric_lists_fdclf(tmp_path, capsys):
    save_npz_batch(np.zeros((2, 1, 32, 32), np.float32), tmp_path / "s.npz")
    argv = ["eval", "--samples", str(tmp_path / "s.npz"), "--ref", str(tmp_path / "s.npz"), "--metrics", "fid,foo",
            "--inception", str(tmp_path / "missing.h5")]
    assert cli.main(argv) == 2
    one_line_error(capsys, "['foo']", "--metrics", "fid, sfid, pr, is, fdclf")


@pytest.mark.parametrize("ref", ["fashion-mnist-test", "gray.npz"])
def test_eval_refuses_rgb_samples_against_a_grayscale_reference(tmp_path, capsys, ref):
    rng = np.random.default_rng(0)
    write_idx_dataset(tmp_path, n=12, split="t10k")
    save_npz_batch(rng.uniform(-1, 1, (4, 3, 32, 32)).astype(np.float32), tmp_path / "rgb.npz")
    save_npz_batch(rng.uniform(-1, 1, (4, 1, 32, 32)).astype(np.float32), tmp_path / "gray.npz")
    save_classifier(FeatureClassifier(1, 10, rng=rng), str(tmp_path / "clf.h5"), "fixture", 0.0)
    ref = ref if ref == "fashion-mnist-test" else str(tmp_path / ref)
    argv = ["eval", "--samples", str(tmp_path / "rgb.npz"), "--ref", ref, "--data-dir", str(tmp_path),
            "--ref-limit", "5", "--metrics", "fdclf", "--classifier", str(tmp_path / "clf.h5")]
    assert cli.main(argv) == 2
    one_line_error(capsys, "have 3 channels", f"{ref} has 1", "same channel count")


def test_eval_refuses_an_unwritable_json_before_evaluating(tmp_path, capsys, monkeypatch):
    calls = []
    monkeypatch.setattr("bidm_ref.metrics.run_eval.evaluate", lambda *args: calls.append(args) or {})
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert cli.main(["eval", "--samples", "s.npz", "--json", str(blocker / "result.json")]) == 2
    one_line_error(capsys, "--json", f"{blocker} is a file")
    assert calls == []
