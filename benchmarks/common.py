"""Helpers shared by the benchmark scripts: statistics, machine facts, real training children.

Every benchmark script is runnable on its own and writes its figures with ``--json PATH``;
``run_all.py`` runs them as subprocesses and turns the JSON into BENCHMARKS.md.
"""

from __future__ import annotations

import io
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = REPO_ROOT / "benchmarks"
TRAIN_SCRIPT = REPO_ROOT / "train_indicator_transformer.py"
RESUME_SCRIPT = REPO_ROOT / "resume_training.py"
LIGHTNING_SCRIPT = BENCH_DIR / "lightning_model.py"
CHILD_TIMEOUT_S = 180.0  # a child that pauses or exits later than this is reported as failed
PAUSE_ENV = "INDICATOR_TRANSFORMER_PAUSE_AT"  # see indicator_transformer/faults.py

# The small synthetic market of the subprocess benchmarks (interrupt, resume, start-up): epochs of
# a few seconds, so each child spends its time in start-up and the measured event, not in training.
SUB_SYMBOLS, SUB_BARS, SUB_BATCH = 4, 1500, 256


# --------------------------------------------------------------------------- statistics
def stats(xs: Sequence[float]) -> dict[str, Any]:
    """min / median / max / n of the repeats (None values for no data: a failed run)."""
    xs = [float(x) for x in xs if x is not None]
    if not xs:
        return {"min": None, "median": None, "max": None, "n": 0}
    return {"min": min(xs), "median": statistics.median(xs), "max": max(xs), "n": len(xs)}


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, None when either is missing or b is zero."""
    return a / b if a is not None and b else None


def paired_ratios(ours: Sequence[float], other: Sequence[float]) -> dict[str, Any]:
    """Stats of ours[i] / other[i]: each interleaved pair saw about the same background load."""
    return stats([o / b for o, b in zip(ours, other, strict=False) if b])


# --------------------------------------------------------------------------- machine
def load_average() -> str:
    """1/5/15-minute load averages, to tell a quiet machine from a busy one."""
    try:
        return "/".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict[str, Any]:
    """The facts every table needs beside it: CPU, cores, OS, versions, load."""
    import numpy
    import talib
    import torch

    try:
        import pytorch_lightning

        lightning = pytorch_lightning.__version__
    except ImportError:
        lightning = "not installed"
    return {
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pytorch_lightning": lightning,
        "numpy": numpy.__version__,
        "talib": talib.__version__,
        "load_average": load_average(),
    }


def write_json(path: str | None, result: dict[str, Any]) -> None:
    """Write a script's figures for run_all (nothing when ``path`` is None)."""
    if path:
        Path(path).write_text(json.dumps(result, indent=1, default=str))


# --------------------------------------------------------------------------- in-process setup
@dataclass
class Setup:
    """A prepared synthetic cache, our Trainer on it and the config it was built from."""

    cfg: Any
    trainer: Any
    train_windows: int


def build_setup(work: Path, symbols: int, bars: int, batch_size: int, **overrides: Any) -> Setup:
    """Prepare the synthetic market into ``work/cache`` and build the real Trainer on it.

    The signal handler is never installed: a Ctrl-C of the benchmark stops the benchmark.
    """
    from indicator_transformer.config import Config
    from indicator_transformer.data.cache import FeatureCache
    from indicator_transformer.data.prepare import prepare, resolve_sources
    from indicator_transformer.data.windows import fit_normalisation, make_splits
    from indicator_transformer.shutdown import SignalHandler
    from indicator_transformer.training.trainer import Trainer

    cfg = Config().replace(
        symbols=symbols,
        bars=bars,
        batch_size=batch_size,
        device="cpu",
        num_workers=0,
        cache_dir=str(work / "cache"),
        models_dir=str(work / "models"),
        **overrides,
    )
    handler = SignalHandler()
    cache = FeatureCache(cfg.data.cache_dir).open()
    data = prepare(
        resolve_sources(cfg.data),
        cfg.features,
        cache,
        handler=handler,
        workers=cfg.data.prep_workers,
        stream=io.StringIO(),
        show_progress=False,
    )
    splits = make_splits(data.symbols, cfg.features)
    norm = fit_normalisation(data.symbols, splits["train"], cfg.features.window)
    trainer = Trainer(cfg, data, splits, norm, handler=handler, stream=sys.stderr, show_progress=False)
    trainer.models_dir.mkdir(parents=True, exist_ok=True)
    return Setup(cfg, trainer, len(trainer.datasets["train"]))


# --------------------------------------------------------------------------- real children
def _default_sigint() -> None:
    """preexec_fn: SIGINT back to its default in the child (a background shell starts it ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def child_env(pause_at: str | None = None) -> dict[str, str]:
    """Unbuffered child environment that imports this checkout, pausing at ``pause_at``."""
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH", "")]))
    env.pop(PAUSE_ENV, None)
    if pause_at:
        env[PAUSE_ENV] = pause_at
    return env


class Child:
    """A command run as a real subprocess; a reader thread timestamps each output line on arrival.

    stdout and stderr share one pipe, drained continuously, so the child never blocks on a full
    pipe and a ``PAUSED`` line is seen the moment it is written.
    """

    live: set[Child] = set()  # not yet reaped: kill_all() stops them if the benchmark fails

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path) -> None:
        self.argv = argv
        self.start = time.perf_counter()
        self.proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=cwd,
            preexec_fn=_default_sigint,
            bufsize=1,
        )
        Child.live.add(self)
        self.lines: list[tuple[float, str]] = []
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append((time.perf_counter(), line.rstrip("\n")))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def first(self, text: str) -> float | None:
        """Arrival time of the first line so far containing ``text``."""
        for t, line in self.lines:
            if text in line:
                return t
        return None

    def wait_for(self, text: str, timeout: float = CHILD_TIMEOUT_S) -> float | None:
        """Arrival time of the first line containing ``text``; None if the child exited first."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                t = self.first(text)
                if t is not None:
                    return t
                if not self._thread.is_alive() or time.monotonic() > deadline:
                    return None
                self._cond.wait(0.5)

    def descendants(self) -> list[int]:
        """pids of every process below the child (DataLoader workers)."""
        import psutil

        try:
            return [p.pid for p in psutil.Process(self.proc.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def wait_exit(self, timeout: float = CHILD_TIMEOUT_S) -> int | None:
        """Block until the child exits; None (and the child killed) after ``timeout``.

        A plain blocking ``wait()`` returns the instant the child is reaped (``wait(timeout=)``
        polls in sleeps of up to 50 ms, which would quantise an exit latency); a timer bounds it.
        """
        fired = threading.Event()

        def watchdog() -> None:
            fired.set()
            self.kill()

        timer = threading.Timer(timeout, watchdog)
        timer.start()
        try:
            code = self.proc.wait()
        finally:
            timer.cancel()
        return None if fired.is_set() else code

    def finish(self, timeout: float = CHILD_TIMEOUT_S) -> int | None:
        """Wait for the exit and the reader; the exit code (None when it had to be killed)."""
        code = self.wait_exit(timeout)
        self._thread.join(timeout=10)
        Child.live.discard(self)
        return code

    def kill(self) -> None:
        """SIGKILL this child (our own, by its handle) if it is still running."""
        if self.proc.poll() is None:
            self.proc.kill()

    @classmethod
    def kill_all(cls) -> None:
        for child in list(cls.live):
            child.kill()

    @property
    def output(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def tail(self, n: int = 12) -> str:
        return "\n".join("    | " + line for _, line in self.lines[-n:])


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _market_argv(cache: Path, epochs: int) -> list[str]:
    """The subprocess market, model batch and warm cache both children share."""
    return ["--symbols", str(SUB_SYMBOLS), "--bars", str(SUB_BARS), "--epochs", str(epochs),
            "--batch-size", str(SUB_BATCH), "--cache-dir", str(cache)]


def ours_argv(cache: Path, models: Path, *extra: str, epochs: int = 2) -> list[str]:
    """Our training command on the subprocess market (default model, warm cache, no plots)."""
    return [sys.executable, str(TRAIN_SCRIPT), *_market_argv(cache, epochs), "--device", "cpu",
            "--no-progress", "--no-plots", "--models-dir", str(models), "--runs-dir",
            str(models.parent / "runs"), *extra]


def lightning_argv(cache: Path, out: Path, *extra: str, epochs: int = 2) -> list[str]:
    """The Lightning child on the same market, model, batch and cache (lightning_model.py)."""
    return [sys.executable, str(LIGHTNING_SCRIPT), *_market_argv(cache, epochs), "--out", str(out), *extra]


def run_area(args: Any, prefix: str, run: Callable[[Any, Path], dict[str, Any]], keep: bool = False) -> int:
    """An area's main: ``run(args, work)`` in a fresh temporary folder (removed unless ``keep``),
    every child it started killed on the way out, its result written to ``args.json``."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        result = run(args, work)
    finally:
        Child.kill_all()
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    write_json(args.json, result)
    return 0


def warm_cache(work: Path) -> Path:
    """Prepare the subprocess market's feature cache once (untimed) in ``work/cache``, the folder
    :func:`build_setup` and :func:`steps_per_epoch` use too; its folder."""
    cache = work / "cache"
    child = Child(ours_argv(cache, work / "warm_models", "--prepare-only"), child_env(), work)
    code = child.finish()
    if code != 0:
        raise SystemExit(f"cache warm-up failed (exit {code}):\n{child.tail()}")
    return cache


def steps_per_epoch(work: Path) -> int:
    """Optimizer steps per epoch of the subprocess market (the CLI's windows, on the warm cache)."""
    return int(build_setup(work, SUB_SYMBOLS, SUB_BARS, SUB_BATCH).trainer.steps_per_epoch)


def newest_step(folder: Path) -> int | None:
    """Global step of the newest checkpoint in ``folder`` (ours: *.pth, Lightning: *.ckpt, any
    depth); None when there is none. Read with weights_only=True: nothing loaded runs code."""
    import torch

    steps = []
    for path in [*folder.rglob("*.pth"), *folder.rglob("*.ckpt")]:
        if path.name in ("best.pth", "final.pt"):
            continue
        try:
            steps.append(int(torch.load(path, map_location="cpu", weights_only=True)["global_step"]))
        except Exception:  # noqa: BLE001 - an unreadable file holds no steps; the table says so
            continue
    return max(steps) if steps else None


def command_line() -> str:
    """The command that produced a result, as a user would type it from the repository root."""
    script = Path(sys.argv[0]).resolve()
    shown = script.relative_to(REPO_ROOT) if script.is_relative_to(REPO_ROOT) else script
    return " ".join(["python", str(shown), *sys.argv[1:]])


def result_header() -> dict[str, Any]:
    """What every area's JSON starts with: the exact command and the machine."""
    return {"command": command_line(), "machine": machine()}


def sub_market() -> dict[str, int]:
    """The subprocess market of the interrupt, resume and start-up areas, for their ``setup``."""
    return {"symbols": SUB_SYMBOLS, "bars": SUB_BARS, "batch_size": SUB_BATCH}
