"""The sweep command as the tests start it, and its study read back from the real database."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import child_env, default_sigint

# Tiny trials: 4 symbols x 600 bars, 2 epochs of 22 steps, one thread (results bit-exact).
TINY = ["--symbols", "4", "--bars", "600", "--epochs", "2", "--batch-size", "64", "--heads", "2",
        "--layers", "1", "--no-progress", "--no-plots", "--window", "16", "--threads", "1"]
SPACE = 'lr = {low = 1e-4, high = 1e-2, log = true}\nd_model = {choices = [8, 16]}\n'


def sweep_cmd(args: list[str]) -> list[str]:
    """``python -m indicator_transformer sweep ARGS``."""
    return [sys.executable, "-m", "indicator_transformer", "sweep", *args]


def sweep_run(args: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the command to its end, SIGINT at its default in the child."""
    return subprocess.run(sweep_cmd(args), cwd=cwd, env=child_env(), capture_output=True, text=True,
                          timeout=timeout, preexec_fn=default_sigint)


def sweep_paused(args: list[str], cwd: Path, point: str, timeout_s: int = 120):  # -> trainproc.Child
    """Start the command with every trial pausing at ``point`` (a signal ends a pause at once)."""
    from trainproc import Child

    env = child_env()
    env["INDICATOR_TRANSFORMER_PAUSE_AT"] = point
    env["INDICATOR_TRANSFORMER_PAUSE_TIMEOUT"] = str(timeout_s)
    return Child(subprocess.Popen(sweep_cmd(args), cwd=cwd, env=env, text=True, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, preexec_fn=default_sigint))


def outcomes(out: Path, study: str = "sweep") -> list[tuple]:
    """Every trial of the study: (number, state, params, value, per-epoch values)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    s = optuna.load_study(study_name=study, storage=f"sqlite:///{(out / 'sweep.db').absolute()}")
    return [(t.number, t.state.name, dict(sorted(t.params.items())), t.value,
             dict(sorted(t.intermediate_values.items())))
            for t in sorted(s.get_trials(deepcopy=False), key=lambda t: t.number)]
