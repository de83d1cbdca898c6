"""Sampling and evaluation sharded over a real Dask LocalCluster of 2 worker processes (issue 21).

The single-process results they are compared with run on one thread (runtime.ThreadPolicy(1, 1)), as every
worker does (scaleout/cluster.py): the same seed and thread count give the same bytes (docs/ENGINE.md).
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

import cli
from bidm_ref.data.images import save_npz_batch
from bidm_ref.diffusion.generate import SampleConfig
from bidm_ref.loading.load import load_model
from bidm_ref.loading.sampling import draw_images
from bidm_ref.metrics import evaluate as evaluate_module
from bidm_ref.metrics.classifier import FeatureClassifier, save_classifier
from bidm_ref.metrics.evaluate import serial_map, summarize
from bidm_ref.metrics.inception import inception_features, load_inception
from bidm_ref.metrics.run_eval import evaluate
from bidm_ref.runtime import ThreadPolicy, configure, current_policy
from bidm_ref.scaleout import cluster
from bidm_ref.scaleout.cluster import DaskMap, dask_client
from bidm_ref.scaleout.sample_shards import SamplingModel, draw_sharded, make_manifest, open_shard_folder
from test_packed import write_student


@pytest.fixture(scope="module")
def client():
    with dask_client(2, None) as dask:
        yield dask


@pytest.fixture
def one_thread():
    before = current_policy()
    configure(ThreadPolicy(1, 1))
    yield
    configure(before)


@pytest.fixture(scope="module")
def student(tmp_path_factory) -> str:
    """A float BiDM student with 2 TBS connections (its mixer caches outputs across a trajectory)."""
    path = tmp_path_factory.mktemp("student") / "student.h5"
    write_student(path, "bidm", 2)
    return str(path)


def test_cli_workers_2_equals_one_process_byte_for_byte_and_resume_redraws_only_a_deleted_shard(tmp_path, student,
                                                                                              capsys):
    common = ["--weights", student, "--n", "10", "--batch-size", "3", "--steps", "2"]
    assert cli.main(["--threads", "1", "sample", *common, "--out", str(tmp_path / "one.png"),
                     "--npz", str(tmp_path / "one.npz")]) == 0
    assert cli.main(["sample", *common, "--workers", "2", "--out", str(tmp_path / "d.png"),
                     "--npz", str(tmp_path / "d.npz")]) == 0
    assert (tmp_path / "d.npz").read_bytes() == (tmp_path / "one.npz").read_bytes()
    assert (tmp_path / "d.png").read_bytes() == (tmp_path / "one.png").read_bytes()
    shards = sorted((tmp_path / "d.shards").glob("shard-*.npz"))
    assert [p.name for p in shards] == [f"shard-{b:06d}.npz" for b in range(4)]            # 3 + 3 + 3 + 1 images
    assert [np.load(p)["images"].shape[0] for p in shards] == [3, 3, 3, 1]
    kept = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in shards}
    shards[2].unlink()
    capsys.readouterr()
    assert cli.main(["sample", *common, "--workers", "2", "--out", str(tmp_path / "d.png"),
                     "--npz", str(tmp_path / "again.npz")]) == 0
    assert "1 drawn, 3 finished before" in capsys.readouterr().out
    assert (tmp_path / "again.npz").read_bytes() == (tmp_path / "one.npz").read_bytes()
    for p in sorted((tmp_path / "d.shards").glob("shard-*.npz")):
        same = (p.stat().st_ino, p.stat().st_mtime_ns) == kept[p.name]
        assert same == (p.name != shards[2].name), p.name                     # only the deleted shard is new
    assert cli.main(["sample", *common, "--seed", "1", "--workers", "2", "--out", str(tmp_path / "d.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "sample.seed = 0, this run has 1" in err and "delete" in err


def dies_once(fn, log: Path, doomed: int):
    """fn(b, ...) that logs each attempt; shard `doomed` draws, then SIGKILLs its own worker on its first attempt."""
    def run(b, *shared):
        (log / f"{b}-{time.time_ns()}").touch()
        images = fn(b, *shared)
        if b == doomed and not (log / "killed").exists():
            (log / "killed").touch()
            time.sleep(0.5)                                                   # the results of earlier shards arrive
            os.kill(os.getpid(), signal.SIGKILL)
        return images
    return run


def test_a_worker_killed_mid_shard_is_redone_and_the_result_is_identical(client, tmp_path, student, one_thread):
    model, run_config = load_model(student)
    cfg = SampleConfig(n=12, steps=2, seed=3, batch_size=2)
    expected = draw_images(model, run_config, cfg, progress=False)            # [12, 1, 32, 32]
    log = tmp_path / "attempts"
    log.mkdir()
    dask_map = DaskMap(client)

    def dying_map(fn, items, shared, desc, on_done):
        return dask_map(dies_once(fn, log, doomed=2), items, shared, desc, on_done)

    folder = tmp_path / "s.shards"
    open_shard_folder(folder, make_manifest(student, True, cfg))
    images, before = draw_sharded(SamplingModel(model, run_config, None), cfg, folder, dying_map)
    assert (log / "killed").exists() and before == 0
    attempts = [int(re.match(r"(\d+)-", p.name).group(1)) for p in log.iterdir() if p.name != "killed"]
    # shard 2 again after its worker died; another shard runs twice only if it had finished on the killed worker
    # before the client fetched it (Dask keeps a result on its worker until then), which load can make happen
    assert set(attempts) == set(range(6)) and attempts.count(2) >= 2
    assert images.tobytes() == expected.tobytes()


def fake_inception_file(path: Path, width: int = 2, seed: int = 0) -> None:
    """A tiny network with the FID Inception's layer names and map sizes (299 -> 35 -> 17 -> 8): every
    size-keeping layer a 1x1 conv, `width` channels except mixed_6.conv (7, for sFID) and mixed_10's branches
    (2048 together, pool_3's size)."""
    rng = np.random.default_rng(seed)
    layers = {}

    def conv(name, c_in, c_out, k=1, stride=1):
        layers[name] = (rng.normal(0, np.sqrt(2 / (k * k * c_in)), (c_out, c_in, k, k)), stride)
        return c_out

    def chain(prefix, c, depth, last_k=1, last_stride=1):
        for i in range(depth):
            last = i == depth - 1
            c = conv(f"{prefix}.conv" + (f"_{i}" if i else ""), c, width, last_k if last else 1, last_stride if last else 1)
        return c

    c = conv("conv_2", conv("conv_1", conv("conv", 3, width, 3, 2), width, 3), width)  # 299 -> 149 -> 147
    c = conv("conv_4", conv("conv_3", c, width), width, 3)                            # pool 73, then 71; pool 35
    for p in ("mixed", "mixed_1", "mixed_2"):
        c = conv(f"{p}.conv", c, width) + chain(f"{p}.tower", c, 2) + chain(f"{p}.tower_1", c, 3) + conv(
            f"{p}.tower_2.conv", c, width)
    c = conv("mixed_3.conv", c, width, 3, 2) + chain("mixed_3.tower", c, 3, 3, 2) + c                 # 35 -> 17
    for p in ("mixed_4", "mixed_5", "mixed_6", "mixed_7"):
        c = conv(f"{p}.conv", c, 7 if p == "mixed_6" else width) + chain(f"{p}.tower", c, 3) + chain(
            f"{p}.tower_1", c, 5) + conv(f"{p}.tower_2.conv", c, width)
    c = chain("mixed_8.tower", c, 2, 3, 2) + chain("mixed_8.tower_1", c, 4, 3, 2) + c                # 17 -> 8
    names = ("conv", "tower_mixed_conv", "tower_mixed_conv_1", "tower_1_mixed_conv", "tower_1_mixed_conv_1",
             "tower_2_conv")
    for p, outs in (("mixed_9", (width,) * 6), ("mixed_10", (320, 384, 384, 384, 384, 192))):
        a = conv(f"{p}.tower_conv", c, width)
        b = conv(f"{p}.tower_1_conv_1", conv(f"{p}.tower_1_conv", c, width), width)
        c = sum(conv(f"{p}.{name}", source, o) for name, source, o in zip(names, (c, a, a, b, b, c), outs))
    assert c == 2048
    with h5py.File(path, "w") as h5:
        h5.attrs.update(format="bidm-inception-fid", format_version=1, source_sha256="0" * 64)
        for name, (weight, stride) in layers.items():
            o = weight.shape[0]
            h5[f"params/{name}.weight"] = weight.astype(np.float32)
            h5[f"params/{name}.weight"].attrs.update(stride=stride, padding=[0, 0])
            h5[f"params/{name}.beta"] = rng.uniform(0.0, 0.1, o).astype(np.float32)
            h5[f"params/{name}.mean"] = np.zeros(o, np.float32)
            h5[f"params/{name}.var"] = np.ones(o, np.float32)


def test_merged_eval_statistics_equal_one_process(client, tmp_path, one_thread, monkeypatch):
    monkeypatch.setattr(evaluate_module, "EVAL_SHARD", 16)                    # shards of 16, 16, 8 and 16, 16, 4
    rng = np.random.default_rng(0)
    ref = np.clip(rng.normal(0, 0.4, (36, 1, 32, 32)), -1, 1).astype(np.float32)
    fake = np.clip(rng.normal(0.2, 0.5, (40, 1, 32, 32)), -1, 1).astype(np.float32)
    save_npz_batch(ref, tmp_path / "ref.npz")
    save_npz_batch(fake, tmp_path / "fake.npz")
    fake_inception_file(tmp_path / "inception.h5")
    save_classifier(FeatureClassifier(1, 10, rng=rng), str(tmp_path / "clf.h5"), "fixture", 0.0)
    weights = load_inception(tmp_path / "inception.h5")
    images = np.load(tmp_path / "fake.npz")["arr_0"]                          # [40, 32, 32, 1] uint8
    merged = summarize(images, weights, shard_map=DaskMap(client))
    direct = np.concatenate([inception_features(images[s:s + 8], weights)[0] for s in range(0, 40, 8)])  # [40, 2048]
    np.testing.assert_allclose(merged.pool3_mean, direct.astype(np.float64).mean(0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(merged.pool3_cov, np.cov(direct.astype(np.float64), rowvar=False), rtol=1e-9,
                               atol=1e-12)
    files = ["--samples", str(tmp_path / "fake.npz"), "--ref", str(tmp_path / "ref.npz"), "--inception",
             str(tmp_path / "inception.h5"), "--classifier", str(tmp_path / "clf.h5")]
    assert cli.main(["--threads", "1", "eval", *files, "--metrics", "fid,sfid,pr,fdclf", "--workers", "2",
                     "--json", str(tmp_path / "eval.json")]) == 0
    sharded = json.loads((tmp_path / "eval.json").read_text())
    single = evaluate(str(tmp_path / "fake.npz"), str(tmp_path / "ref.npz"), ["fid", "sfid", "pr", "fdclf"],
                      str(tmp_path / "inception.h5"), str(tmp_path / "clf.h5"), shard_map=serial_map)
    assert sharded["fid"] > 1e-3 and sharded["fd_clf"] > 1e-6                  # two different sets
    for key in ("fid", "sfid", "fd_clf", "clf_score"):
        assert abs(sharded[key] - single[key]) <= 1e-9, key
    for key in ("precision", "recall", "clf_confident", "clf_confident_reference", "n_samples", "n_reference"):
        assert sharded[key] == single[key], key


def test_bad_cluster_flags_are_one_line_errors(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cluster, "CONNECT_TIMEOUT", "1s")
    for flags, message in ((["--workers", "0"], "--workers must be >= 1, got 0"),
                           (["--scheduler", "tcp://127.0.0.1:9"], "cannot reach the Dask scheduler at tcp://127.0.0.1:9"),
                           (["--workers", "2", "--scheduler", "tcp://127.0.0.1:9"], "not both")):
        assert cli.main(["sample", "--n", "2", "--steps", "2", "--out", str(tmp_path / "x.png"), *flags]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("error: ") and message in err, err
    assert not (tmp_path / "x.png").exists()


class FakeFuture:
    def __init__(self, fn, args, lost):
        self.fn, self.args, self.lost = fn, args, lost

    def result(self):
        if self.lost:
            raise cluster.CancelledError("already forgotten")  # as distributed's FutureCancelledError
        return self.fn(*self.args)


class LosingClient:
    """A client whose scattered data is lost (its futures cancelled) for the items in `lose[attempt]`."""

    def __init__(self, lose: list[set[int]]):
        self.lose, self.scatters, self.submitted = lose, 0, []

    def scatter(self, obj, broadcast, hash):
        self.scatters += 1
        return obj

    def submit(self, wrapper, fn, item, *shared, pure):
        self.submitted.append(item)
        attempt = self.scatters - 1
        return FakeFuture(fn, (item, *shared), attempt < len(self.lose) and item in self.lose[attempt])


def test_lost_shared_data_is_scattered_again_and_only_the_unfinished_shards_rerun(monkeypatch):
    import distributed

    monkeypatch.setattr(distributed, "as_completed", lambda futures: iter(futures))  # completion order: submission
    fake = LosingClient([{2}])
    done = []
    results = DaskMap(fake)(lambda b, base: base + b, [0, 1, 2, 3], shared=(10,),
                            on_done=lambda k, r: done.append(k))
    assert results == [10, 11, 12, 13] and fake.scatters == 2
    assert fake.submitted == [0, 1, 2, 3, 2, 3] and sorted(done) == [0, 1, 2, 3]   # 0, 1 finished: never rerun
    always = LosingClient([{0}] * cluster.SCATTER_ATTEMPTS)
    with pytest.raises(OSError, match="lost the shared data 3 times"):
        DaskMap(always)(lambda b, base: b, [0, 1], shared=(0,))
