"""Helpers for tests that run the training commands as real subprocesses.

A reader thread drains the child's stderr into a list, so a test can wait for a line (such as
``PAUSED train_step 5``), send a real signal, and then read the rest without pipe dead-locks.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

# A tiny configuration: 4 symbols x 800 bars, 32 steps per epoch, about a second of training.
# No plots: drawing them is a second per run; tests/test_run_folder.py and test_plots.py cover them.
SMALL = ["--symbols", "4", "--bars", "800", "--epochs", "2", "--batch-size", "64", "--d-model", "16",
         "--heads", "2", "--layers", "1", "--no-progress", "--no-plots"]
STEPS_PER_EPOCH = 32


class Child:
    """A running command whose stderr lines are collected as they come."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_for(self, prefix: str, timeout: float = 120) -> str:
        """Block until a stderr line starts with ``prefix``; fail with the output otherwise."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines:
                    if line.startswith(prefix):
                        return line
                if self.proc.poll() is not None and not self._thread.is_alive():
                    raise AssertionError(f"process exited ({self.proc.returncode}) before "
                                         f"'{prefix}':\n" + self.stderr)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no '{prefix}' within {timeout}s:\n" + self.stderr)
                self._cond.wait(min(left, 0.5))

    def finish(self, timeout: float = 120) -> int:
        """Wait for exit and for the reader; return the exit code."""
        code = self.proc.wait(timeout=timeout)
        self._thread.join(timeout=10)
        return code

    @property
    def stderr(self) -> str:
        return "\n".join(self.lines)


def pause_env(point: str) -> dict[str, str]:
    """Child environment that pauses at ``point`` (see indicator_transformer.faults)."""
    from conftest import child_env

    env = child_env()
    env["INDICATOR_TRANSFORMER_PAUSE_AT"] = point
    return env


def load(path: Path) -> dict:
    """Load a checkpoint the only allowed way."""
    return torch.load(path, weights_only=True)


def assert_same_training_state(a: dict, b: dict) -> None:
    """Model and optimizer tensors bitwise equal, loss histories identical."""
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), f"model tensor {k} differs"
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        for k in sa[i]:
            assert torch.equal(sa[i][k], sb[i][k]), f"optimizer state {i}.{k} differs"
    assert a["scheduler"] == b["scheduler"]
    assert a["loss_history"]["steps"] == b["loss_history"]["steps"]
    # Wall-clock fields (and the resume segment) legitimately differ; every learned figure may not.
    learned = ("epoch", "train_loss", "val_loss", "val_ic", "lr")
    assert [{k: e.get(k) for k in learned} for e in a["loss_history"]["epochs"]] == \
        [{k: e.get(k) for k in learned} for e in b["loss_history"]["epochs"]]
    assert a["global_step"] == b["global_step"]


def pids_alive(pids: list[int]) -> list[int]:
    """The pids among ``pids`` that still exist (zombies count as gone)."""
    import psutil

    alive = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            pass
    return alive




def start(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> Child:
    """``python ARGS`` in ``cwd`` as a Child (SIGINT at its default, so a test can send it)."""
    from conftest import child_env, default_sigint

    return Child(subprocess.Popen([sys.executable, *args], cwd=cwd, env=env or child_env(), text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=default_sigint))


def run(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python ARGS`` in ``cwd`` to its end, output captured."""
    from conftest import child_env, default_sigint

    return subprocess.run([sys.executable, *args], cwd=cwd, env=child_env(), capture_output=True, text=True,
                          timeout=timeout, preexec_fn=default_sigint)
