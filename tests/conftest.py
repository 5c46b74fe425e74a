"""Shared fixtures: real OHLCV files, real caches, real subprocesses.

Nothing here is a mock. Helpers build real CSV/Parquet files from the synthetic market, run real
child interpreters (with SIGINT reset to its default: a background shell starts its children with
SIGINT ignored, and a test that sends SIGINT must not depend on how pytest itself was started), and
make sure no child outlives its test.

``--run-slow`` enables the tests marked ``slow`` (long fuzzing); they are skipped otherwise.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import settings

from indicator_transformer.config import FeatureConfig
from indicator_transformer.data.ohlcv import OHLCV
from indicator_transformer.data.synthetic import synthetic_symbol

REPO_ROOT = Path(__file__).resolve().parent.parent

# No example database: a test run must not leave a .hypothesis/ folder in the work tree.
settings.register_profile("indicator_transformer", database=None)
settings.load_profile("indicator_transformer")


# --------------------------------------------------------------------------- the slow marker
def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", default=False,
                     help="also run the tests marked 'slow' (long fuzzing / soak tests)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


# --------------------------------------------------------------------------- subprocesses
def default_sigint() -> None:
    """preexec_fn for children: SIGINT back to its default (a background shell ignores it)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def child_env() -> dict[str, str]:
    """The environment for child interpreters: unbuffered, no colour, the repo importable."""
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env.pop("PYTHONWARNINGS", None)
    return env


@pytest.fixture
def spawn() -> Iterator[Callable[..., subprocess.Popen]]:
    """``spawn(args, **popen_kwargs)`` starts a child interpreter (text pipes, SIGINT default).

    ``args`` is the list after ``python``. Every child still running at teardown is killed, so a
    failing test never leaves a process behind.
    """
    procs: list[subprocess.Popen] = []

    def _spawn(args: list[str], **kwargs) -> subprocess.Popen:
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
        kwargs.setdefault("text", True)
        kwargs.setdefault("env", child_env())
        kwargs.setdefault("cwd", str(REPO_ROOT))
        proc = subprocess.Popen([sys.executable, *args], preexec_fn=default_sigint, **kwargs)
        procs.append(proc)
        return proc

    yield _spawn
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        with contextlib.suppress(Exception):
            proc.communicate(timeout=10)


@pytest.fixture
def run_python() -> Callable[..., subprocess.CompletedProcess]:
    """``run_python(args, timeout=..., cwd=...)``: run a child interpreter to completion."""

    def _run(args: list[str], *, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
        kwargs.setdefault("cwd", str(REPO_ROOT))
        kwargs.setdefault("env", child_env())
        return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout,
                              preexec_fn=default_sigint, **kwargs)

    return _run


# --------------------------------------------------------------------------- OHLCV data
def ohlcv_frame(x: OHLCV, *, names: dict[str, str] | None = None, date_format: str = "%Y-%m-%d"
                ) -> pd.DataFrame:
    """A DataFrame as a downloader would write it: Date, Open, High, Low, Close, Volume."""
    names = names or {}
    dates = pd.to_datetime(x.time).strftime(date_format)
    return pd.DataFrame({
        names.get("time", "Date"): dates,
        names.get("open", "Open"): x.open,
        names.get("high", "High"): x.high,
        names.get("low", "Low"): x.low,
        names.get("close", "Close"): x.close,
        names.get("volume", "Volume"): x.volume,
    })


def write_symbol_csv(path: Path, x: OHLCV, **kwargs) -> Path:
    """Write one symbol's bars as a CSV file at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ohlcv_frame(x, **kwargs).to_csv(path, index=False)
    return path


@pytest.fixture
def make_data_dir(tmp_path: Path) -> Callable[..., Path]:
    """``make_data_dir(symbols, bars, seed=3, name='data')``: a folder of real CSV files."""

    def _make(symbols: int, bars: int, *, seed: int = 3, name: str = "data") -> Path:
        d = tmp_path / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(symbols):
            write_symbol_csv(d / f"S{i:03d}.csv", synthetic_symbol(1, seed, i, bars))
        return d

    return _make


@pytest.fixture
def small_features() -> FeatureConfig:
    """The default features with a short window, so a few hundred bars make a usable symbol."""
    return FeatureConfig(window=8, horizon=1)



# --------------------------------------------------------------------------- real checkpoints
TINY_RUN = ["--symbols", "3", "--bars", "600", "--epochs", "2", "--window", "8", "--batch-size", "64",
            "--d-model", "8", "--heads", "2", "--layers", "1", "--checkpoint-every", "5", "--keep", "10",
            "--no-progress", "--no-plots"]


@pytest.fixture(scope="session")
def real_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One finished tiny training run (real preparation, training and checkpoints), made once per
    session: its folder holds ``models/`` (step, epoch and best checkpoints, evaluation.json) and
    ``cache/``. Tests copy what they need and never change it."""
    root = tmp_path_factory.mktemp("real_run")
    r = subprocess.run([sys.executable, str(REPO_ROOT / "train_indicator_transformer.py"), *TINY_RUN],
                       cwd=root, env=child_env(), capture_output=True, text=True, timeout=300,
                       preexec_fn=default_sigint)
    assert r.returncode == 0, r.stderr
    return root
