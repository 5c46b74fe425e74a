"""A signal that arrives after a graceful stop was handled (while the interpreter exits) changes
nothing: exit code 130, 'Cleanup complete' the last line, no traceback."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO_ROOT, default_sigint
from trainproc import SMALL, Child, pause_env


@pytest.mark.parametrize("delay", [0.0, 0.05])
def test_a_second_ctrl_c_right_after_cleanup_complete_changes_nothing(tmp_path, delay: float) -> None:
    child = Child(subprocess.Popen(
        [sys.executable, str(REPO_ROOT / "train_indicator_transformer.py"), *SMALL], cwd=tmp_path,
        env=pause_env("train_step:5"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=default_sigint))
    child.wait_for("PAUSED")
    child.proc.send_signal(signal.SIGINT)
    child.wait_for("Cleanup complete")
    time.sleep(delay)
    try:
        child.proc.send_signal(signal.SIGINT)  # the interpreter is exiting now
    except ProcessLookupError:
        pass
    assert child.finish() == 130, child.stderr
    assert child.lines[-1] == "Cleanup complete", child.stderr
    assert "Traceback" not in child.stderr and "KeyboardInterrupt" not in child.stderr
