"""bench_train's PyTorch twin in a process of its own, where PyTorch runs in its default environment.

PyTorch's OpenMP runtime reads OMP_WAIT_POLICY and GOMP_SPINCOUNT when torch loads. In the bench's own process those
are the defaults `import bidm_ref` sets (runtime.prepare_environment), which moved PyTorch's step times by up to
1.7x either way (docs/ENGINE.md, "Against PyTorch"). `TorchWorker` starts `python -m bench.torch_worker` with the
environment the parent found (runtime.user_environment); the worker imports torch before anything else, builds the
same seeded teacher and its twin as bench_train.torch_steps (which checks both give the same eps), and runs one
training step or one sampling forward per request. The bench times each request from its own process, in turn with
the project's calls (bench_kernels.time_interleaved with a settle pause), so the two never run at once; a request
costs the pipe's round trip on top (well below a millisecond, against steps of 30 ms and more).

Protocol: one JSON object per line. Requests on the worker's stdin: {"preset", "train_batch", "sample_batch",
"threads"} first (reply {"ready": true}), then {"run": "train" | "sample"} (reply {"done": true}); end of input
stops it. An error is one reply {"error": "..."}.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]


def torch_installed() -> bool:
    """Whether the worker could import torch (without importing it here)."""
    try:
        return importlib.util.find_spec("torch") is not None
    except ValueError:                                                            # sys.modules["torch"] is None
        return False


class TorchWorker:
    """A running worker process; `run("train")` / `run("sample")` return when the worker's call has returned."""

    def __init__(self, preset: str, train_batch: int, sample_batch: int, threads: int) -> None:
        from bidm_ref.runtime import user_environment

        self.process = subprocess.Popen([sys.executable, "-m", "bench.torch_worker"], cwd=REPOSITORY, text=True,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=user_environment())
        self.request({"preset": preset, "train_batch": train_batch, "sample_batch": sample_batch, "threads": threads})

    def request(self, message: dict) -> dict:
        self.process.stdin.write(json.dumps(message) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        reply = json.loads(line) if line else {"error": f"the PyTorch worker ended (exit {self.process.wait()})"}
        if "error" in reply:
            raise RuntimeError(f"bench PyTorch worker: {reply['error']}")
        return reply

    def run(self, what: str) -> None:
        self.request({"run": what})

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()


def serve() -> None:
    """The worker's loop (module docstring)."""
    importlib.import_module("torch")  # first: its OpenMP runtime reads the environment as the parent found it

    import numpy as np

    from bidm_ref.models.config import preset
    from bidm_ref.models.unet import UNet
    from bidm_ref.runtime import ThreadPolicy, configure

    from .bench_train import TrainCase, torch_steps

    steps = {}
    for line in sys.stdin:
        message = json.loads(line)
        try:
            if "run" in message:
                steps[message["run"]]()
                reply = {"done": True}
            else:
                configure(ThreadPolicy(message["threads"], message["threads"]))
                case = TrainCase(message["preset"], message["train_batch"], message["sample_batch"])
                teacher = UNet(preset(case.preset), rng=np.random.default_rng(0))  # bench_train.bench_case's teacher
                steps["train"], steps["sample"] = torch_steps(teacher, case)
                reply = {"ready": True}
        except Exception as error:  # noqa: BLE001  reported to the parent, which raises it
            reply = {"error": f"{type(error).__name__}: {error}"}
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    serve()
