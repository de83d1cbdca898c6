"""bench_train's PyTorch twin in a process of its own, where PyTorch runs in its default environment.

PyTorch's OpenMP runtime reads OMP_WAIT_POLICY and GOMP_SPINCOUNT when torch loads. In the bench's own process those
are the defaults `import bidm_ref` sets (runtime.prepare_environment), which moved PyTorch's step times by up to
1.7x either way (docs/ENGINE.md, "Against PyTorch"). `TorchWorker` starts `python -m bench.torch_server` with the
environment the parent found (runtime.user_environment); the worker imports torch before anything else, builds the
same seeded teacher and its twin (torch_server.torch_steps, which checks both give the same eps), and runs one
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

        self.process = subprocess.Popen([sys.executable, "-m", "bench.torch_server"], cwd=REPOSITORY, text=True,
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
