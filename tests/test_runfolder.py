"""Run folders (issue 19, items 1-4): owned folders, locks, resume from the checkpoint alone, signals, kill -9.

In-process cases go through cli.main; the signal and kill cases run `cli.py train` as a subprocess and
compare the interrupted-then-resumed run with a straight one (same bytes: one thread each).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import cli
from bidm_ref.storage.atomic import remove_stale_temps
from bidm_ref.storage.checkpoint import load_checkpoint
from bidm_ref.train.runfolder import claim_run_folder, RunFolderError
from test_trainer import write_idx_dataset

CLI = str(Path(__file__).resolve().parent.parent / "cli.py")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("idx")
    write_idx_dataset(folder)
    return folder


def train_argv(data_dir, out, steps, *more):
    return ["--threads", "1", "train", "--preset", "tiny", "--data-dir", str(data_dir), "--steps", str(steps),
            "--batch-size", "4", "--lr", "5e-4", "--out", str(out), *more]


def run_cli(argv, capsys):
    """(exit code, stderr lines) of cli.main(argv)."""
    capsys.readouterr()                                                         # drop earlier calls' output
    code = cli.main(argv)
    return code, capsys.readouterr().err.strip().splitlines()


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def rows(out: Path) -> list[str]:
    return (out / "loss.tsv").read_text().splitlines()


def assert_same_run(a: Path, b: Path) -> None:
    ckpt_a, ckpt_b = load_checkpoint(a / "ckpt.h5"), load_checkpoint(b / "ckpt.h5")
    assert ckpt_a.step == ckpt_b.step
    for name, value in ckpt_a.params.items():
        np.testing.assert_array_equal(value, ckpt_b.params[name], err_msg=name)
    for name, value in ckpt_a.ema.items():
        np.testing.assert_array_equal(value, ckpt_b.ema[name], err_msg=name)
    assert rows(a) == rows(b)


# ---- item 1: a run folder is owned ----------------------------------------------------------------------------


def test_new_run_into_a_run_folder_is_refused_and_force_starts_over(data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(train_argv(data_dir, out, 3)) == 0
    before = (out / "ckpt.h5").read_bytes()
    code, err = run_cli(train_argv(data_dir, out, 1), capsys)
    assert code == 2 and len(err) == 1 and "--resume" in err[0] and "--force" in err[0]
    assert (out / "ckpt.h5").read_bytes() == before and len(rows(out)) == 4     # the old run is untouched
    assert cli.main(train_argv(data_dir, out, 1, "--force")) == 0
    assert load_checkpoint(out / "ckpt.h5").step == 1 and len(rows(out)) == 2    # header + 1 row: a new run


def test_a_live_writer_is_refused_and_a_dead_ones_lock_taken_over(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    lock = folder / ".lock"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock.write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname()}))
        with pytest.raises(RunFolderError, match=f"process {sleeper.pid}"):
            with claim_run_folder(folder, resume=False):
                pass
    finally:
        sleeper.kill()
        sleeper.wait()
    lock.write_text(json.dumps({"pid": dead_pid(), "host": socket.gethostname()}))
    with claim_run_folder(folder, resume=False):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert not lock.exists()                                                     # released at the end
    lock.write_text(json.dumps({"pid": 1, "host": "another-host"}))
    with pytest.raises(RunFolderError, match="another-host"):
        with claim_run_folder(folder, resume=False):
            pass


def test_two_live_trainings_on_one_folder(data_dir, tmp_path):
    out = tmp_path / "run"
    first = subprocess.Popen([sys.executable, CLI, *train_argv(data_dir, out, 100000)], stderr=subprocess.PIPE,
                             stdout=subprocess.DEVNULL, text=True)
    try:
        wait_for(lambda: (out / ".lock").exists(), first)
        second = subprocess.run([sys.executable, CLI, *train_argv(data_dir, out, 5)], capture_output=True, text=True)
        assert second.returncode == 2 and f"process {first.pid}" in second.stderr
        assert len(second.stderr.strip().splitlines()) == 1
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=120)


def test_an_out_that_cannot_be_created_is_refused_before_any_work(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    missing_data = tmp_path / "no-data"                                        # loading data would fail later
    for out in (tmp_path / "file", tmp_path / "file" / "run"):
        code, err = run_cli(train_argv(missing_data, out, 1), capsys)
        assert code == 2 and len(err) == 1 and "choose another --out" in err[0], err


# ---- item 2: --resume takes every setting from the checkpoint -------------------------------------------------


def test_resume_takes_the_settings_from_the_checkpoint(data_dir, tmp_path, capsys):
    straight, pieces = tmp_path / "straight", tmp_path / "pieces"
    assert cli.main(train_argv(data_dir, straight, 5, "--ckpt-every", "2")) == 0
    assert cli.main(train_argv(data_dir, pieces, 2, "--ckpt-every", "2")) == 0
    # the README's line: no --lr, no --batch-size (they differ from the defaults), --preset given
    assert cli.main(["--threads", "1", "train", "--preset", "tiny", "--steps", "5", "--out", str(pieces),
                     "--resume"]) == 0
    assert_same_run(straight, pieces)
    code, err = run_cli(["train", "--steps", "9", "--out", str(pieces), "--resume", "--batch-size", "8"], capsys)
    assert code == 2 and len(err) == 1 and "--batch-size 8" in err[0] and "train.batch_size = 4" in err[0]
    code, err = run_cli(["train", "--steps", "9", "--out", str(pieces), "--resume", "--method", "bidm"], capsys)
    assert code == 2 and "--method" in err[0] and "student.method = absent" in err[0]


def test_a_resume_may_start_the_lr_decay_and_a_later_resume_keeps_it(data_dir, tmp_path, capsys):
    straight, pieces = tmp_path / "straight", tmp_path / "pieces"
    assert cli.main(train_argv(data_dir, straight, 6, "--lr-decay-from", "2")) == 0
    assert cli.main(train_argv(data_dir, pieces, 2)) == 0                        # constant lr so far
    assert cli.main(["--threads", "1", "train", "--steps", "6", "--out", str(pieces), "--resume",
                     "--lr-decay-from", "2"]) == 0
    assert_same_run(straight, pieces)
    assert cli.main(["--threads", "1", "train", "--steps", "7", "--out", str(pieces), "--resume"]) == 0
    assert load_checkpoint(pieces / "ckpt.h5").config["train"]["lr_decay_from"] == 2
    code, err = run_cli(["train", "--steps", "6", "--out", str(tmp_path / "new"), "--lr-decay-from", "6"], capsys)
    assert code == 2 and len(err) == 1 and "--lr-decay-from below --steps" in err[0]


def test_a_resume_keeps_the_checkpoint_and_snapshot_intervals_unless_given(data_dir, tmp_path):
    out = tmp_path / "run"
    assert cli.main(train_argv(data_dir, out, 2, "--ckpt-every", "3", "--snapshot-every", "2")) == 0
    assert cli.main(["--threads", "1", "train", "--steps", "4", "--out", str(out), "--resume"]) == 0
    assert sorted(path.name for path in (out / "snapshots").iterdir()) == ["step-0000002.h5", "step-0000004.h5"]
    train = load_checkpoint(out / "ckpt.h5").config["train"]
    assert (train["ckpt_every"], train["snapshot_every"]) == (3, 2)
    assert cli.main(["--threads", "1", "train", "--steps", "6", "--out", str(out), "--resume", "--snapshot-every",
                     "3"]) == 0
    assert sorted(path.name for path in (out / "snapshots").iterdir())[-1] == "step-0000006.h5"
    assert load_checkpoint(out / "ckpt.h5").config["train"]["snapshot_every"] == 3


def test_resume_below_the_saved_step_and_without_a_checkpoint(data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(train_argv(data_dir, out, 3)) == 0
    code, err = run_cli(["train", "--steps", "2", "--out", str(out), "--resume"], capsys)
    assert code == 2 and len(err) == 1 and "at step 3, beyond --steps 2" in err[0]
    code, err = run_cli(["train", "--steps", "2", "--out", str(tmp_path / "empty"), "--resume"], capsys)
    assert code == 2 and len(err) == 1 and "nothing to resume" in err[0]


# ---- items 3 and 4: signals, kill -9, stale temp files, loss rows ---------------------------------------------


def wait_for(condition, process, timeout=120.0):
    start = time.monotonic()
    while not condition():
        assert process.poll() is None, f"training exited early: {process.stderr.read()}"
        assert time.monotonic() - start < timeout, "timed out waiting for the training subprocess"
        time.sleep(0.05)


def steps_done(out: Path) -> int:
    path = out / "loss.tsv"
    return len(path.read_text().splitlines()) - 1 if path.exists() else 0


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_finishes_the_step_writes_the_checkpoint_and_resume_continues(data_dir, tmp_path, signum, code):
    straight, cut = tmp_path / "straight", tmp_path / "cut"
    assert cli.main(train_argv(data_dir, straight, 12, "--ckpt-every", "100")) == 0
    proc = subprocess.Popen([sys.executable, CLI, *train_argv(data_dir, cut, 12, "--ckpt-every", "3")],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    wait_for(lambda: steps_done(cut) >= 3, proc)
    proc.send_signal(signum)
    err = proc.stderr.read().strip().splitlines()[-1]
    assert proc.wait(timeout=120) == code
    step = load_checkpoint(cut / "ckpt.h5").step
    assert f"interrupted by {signum.name} after step {step}" in err and "--resume" in err
    assert 3 <= step < 12 and steps_done(cut) == step                         # rows up to the checkpoint, no more
    assert not (cut / ".lock").exists()
    assert cli.main(["--threads", "1", "train", "--steps", "12", "--out", str(cut), "--resume"]) == 0
    assert_same_run(straight, cut)


def test_kill_9_leaves_nothing_a_resume_cannot_repair(data_dir, tmp_path):
    """SIGKILL at arbitrary moments of a run that checkpoints every step: the stale lock is taken over, stale temp
    files go, loss rows beyond the checkpoint are dropped, and the final run equals a straight one."""
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    steps = 14
    assert cli.main(train_argv(data_dir, straight, steps, "--ckpt-every", "1")) == 0
    kills = 0
    for target in (3, 6, 9):
        argv = train_argv(data_dir, killed, steps, "--ckpt-every", "1", *(("--resume",) if kills else ()))
        proc = subprocess.Popen([sys.executable, CLI, *argv], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                text=True)
        wait_for(lambda: steps_done(killed) >= target, proc)
        proc.kill()
        proc.wait()
        kills += 1
        assert (killed / ".lock").exists()                                      # a kill -9 cannot clean up
    (killed / f".ckpt.h5.tmp-{dead_pid()}").write_bytes(b"half a checkpoint")  # what a kill inside a save leaves
    assert cli.main(["--threads", "1", "train", "--steps", str(steps), "--out", str(killed), "--resume"]) == 0
    assert not list(killed.glob(".*.tmp-*")) and not (killed / ".lock").exists()
    assert_same_run(straight, killed)


def test_remove_stale_temps_keeps_the_temp_files_of_live_writers(tmp_path):
    live = tmp_path / f".ckpt.h5.tmp-{os.getpid()}"
    dead = tmp_path / f".loss.tsv.tmp-{dead_pid()}"
    other = tmp_path / ".notes.tmp-abc"
    for path in (live, dead, other):
        path.write_text("x")
    assert remove_stale_temps(tmp_path) == [dead]
    assert live.exists() and other.exists() and not dead.exists()


def test_torn_and_extra_loss_rows_are_cut_back_to_the_checkpoint(data_dir, tmp_path):
    straight, out = tmp_path / "straight", tmp_path / "run"
    assert cli.main(train_argv(data_dir, straight, 4, "--ckpt-every", "2")) == 0
    assert cli.main(train_argv(data_dir, out, 2, "--ckpt-every", "2")) == 0
    with open(out / "loss.tsv", "a") as f:                                      # rows of steps the ckpt lacks
        f.write("3\t1.0\t2.0\n4\t1.5")
    assert cli.main(["--threads", "1", "train", "--steps", "4", "--out", str(out), "--resume"]) == 0
    assert_same_run(straight, out)
