"""The walk-forward command as the tests start it, and its figures read back."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import child_env, default_sigint

from indicator_transformer.integrity import check_json


def wf_cmd(args: list[str]) -> list[str]:
    """``python -m indicator_transformer walk-forward ARGS``."""
    return [sys.executable, "-m", "indicator_transformer", "walk-forward", *args]


def wf_run(args: list[str], cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    """Run the command to its end, SIGINT at its default in the child."""
    return subprocess.run(wf_cmd(args), cwd=cwd, env=child_env(), capture_output=True, text=True,
                          timeout=timeout, preexec_fn=default_sigint)


def figures(out: Path) -> dict:
    """The experiment's summary.json, its seal checked and taken off (the figures alone)."""
    doc = check_json(json.loads((out / "summary.json").read_text()))
    doc.pop("sha256")
    return doc


def wf_paused(args: list[str], cwd: Path, point: str, timeout_s: int):  # -> trainproc.Child
    """Start the command with every run pausing at ``point`` for up to ``timeout_s`` seconds (a
    signal ends a pause at once), its output read as it comes."""
    from trainproc import Child

    env = child_env()
    env["INDICATOR_TRANSFORMER_PAUSE_AT"] = point
    env["INDICATOR_TRANSFORMER_PAUSE_TIMEOUT"] = str(timeout_s)
    return Child(subprocess.Popen(wf_cmd(args), cwd=cwd, env=env, text=True, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, preexec_fn=default_sigint))
