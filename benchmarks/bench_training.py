"""Training benchmarks, printed side by side: our trainer against the plain alternative.

    python benchmarks/bench_training.py                      # defaults: about 3 minutes on 2 idle CPU cores
    python benchmarks/bench_training.py --repeats 7 --subprocess-repeats 5
    python benchmarks/bench_training.py --skip-subprocess    # sections 1 and 2 only (in-process)

Four measurements, each printed with its exact figures and its target:

1. Throughput (samples/s) of ``Trainer._train_epoch()`` against a bare PyTorch loop
   (``for x, y in DataLoader(...)``: zero_grad, forward, backward, clip, step, nothing else) on
   the same model class, the same ``WindowDataset``, batch size, AdamW settings, grad clipping and
   number of steps (one epoch each), ``num_workers=0``, in this process, after a warm-up epoch of
   each. Validation is excluded from both. Repeats are interleaved (ours, bare, ours, bare, ...) so
   that background load hits both alike; the median is reported. Target: ratio >= 0.98x.
2. Cost of a periodic checkpoint: ``Trainer._save()`` of a step checkpoint (serialise, temporary
   file, fsync, rename, fsync of the folder), median over ``--checkpoint-repeats``, next to a plain
   ``torch.save`` of the same dict straight to its final name, and as a % of one epoch's training
   time at the default interval (``--checkpoint-every 0``: one checkpoint per epoch) and at
   ``--checkpoint-every 100``. Target: <= 2%.
3. Interrupt latency: ``train_indicator_transformer.py`` as a real subprocess paused right after
   optimizer step n (``INDICATOR_TRANSFORMER_PAUSE_AT=train_step:<n>``); on ``PAUSED`` it gets a
   real SIGINT and we time until it has exited (saving the interrupted checkpoint, joining workers,
   interpreter teardown). Checked each time: exit code 130, the interrupted checkpoint exists at
   global step n, ``Cleanup complete`` printed, no child process left. For ``--num-workers 0`` and
   ``2``. Target: <= one step + 1 s; the pause delivers the signal at a step boundary, so the
   worst case for a signal at a random moment is the measured latency plus one step, and that is
   what is compared with the target.
4. Start-up: wall time from ``Popen`` of ``resume_training.py`` to its first training step
   (``PAUSED train_step <k+1>``, k = the checkpoint's global step), next to the same for a fresh
   ``train_indicator_transformer.py`` (warm feature cache). No target was specified; the yardstick
   printed is "resume costs at most 1 s more than a fresh start".

Everything is written to a temporary folder (``--work-dir`` to choose where: checkpoint figures
depend on the file system, since fsync on tmpfs is free) and removed afterwards (``--keep-work``).
The script never asserts: a failed check is printed as such next to the figures.
"""

from __future__ import annotations

import argparse
import gc
import io
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import torch
from torch import nn
from torch.utils.data import DataLoader

from indicator_transformer import faults
from indicator_transformer.config import Config
from indicator_transformer.data.cache import FeatureCache
from indicator_transformer.data.prepare import prepare, resolve_sources
from indicator_transformer.data.windows import collate_batch, fit_normalisation, make_splits
from indicator_transformer.model import IndicatorTransformer, count_parameters
from indicator_transformer.shutdown import SignalHandler
from indicator_transformer.training import checkpoint as ckpt
from indicator_transformer.training.trainer import Trainer

REPO_ROOT = Path(__file__).resolve().parent.parent
TRAIN_SCRIPT = REPO_ROOT / "train_indicator_transformer.py"
RESUME_SCRIPT = REPO_ROOT / "resume_training.py"
NOISY = 0.05  # epoch-time spread above which section 1 is flagged as disturbed by background load
CHILD_TIMEOUT_S = 180.0  # generous: a child that pauses or exits later than this is reported as failed


# --------------------------------------------------------------------------- small helpers
def median(xs: Sequence[float]) -> float:
    """Median, NaN for no data (a failed measurement must not crash the report)."""
    return statistics.median(xs) if xs else float("nan")


def spread(xs: Sequence[float], scale: float = 1.0, unit: str = "s", digits: int = 3) -> str:
    """'median (min .. max, n=k)' for the per-run figures."""
    if not xs:
        return "no data"
    return (f"{median(xs) * scale:.{digits}f} {unit} (min {min(xs) * scale:.{digits}f} .. max "
            f"{max(xs) * scale:.{digits}f}, n={len(xs)})")


def yes_no(ok: bool | None) -> str:
    return "n/a" if ok is None else ("yes" if ok else "NO")


def load_average() -> str:
    """1/5/15-minute load averages, to tell a quiet machine from a busy one."""
    try:
        return "/".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:  # not available on this platform
        return "n/a"


def section(title: str) -> None:
    print(f"\n=== {title} ===", flush=True)


# --------------------------------------------------------------------------- in-process setup
@dataclass
class Setup:
    """A prepared synthetic cache and a Trainer built on it (sections 1 and 2)."""

    cfg: Config
    trainer: Trainer
    train_windows: int


def build_setup(work: Path, args: argparse.Namespace) -> Setup:
    """Prepare the synthetic market into ``work/cache`` and build the real Trainer on it.

    The handler is never installed: a Ctrl-C of the benchmark stops the benchmark, not a save.
    """
    cfg = Config().replace(symbols=args.symbols, bars=args.bars, batch_size=args.batch_size,
                           device="cpu", num_workers=0, cache_dir=str(work / "cache"),
                           models_dir=str(work / "models"))
    handler = SignalHandler()
    cache = FeatureCache(cfg.data.cache_dir).open()
    data = prepare(resolve_sources(cfg.data), cfg.features, cache, handler=handler,
                   workers=cfg.data.prep_workers, stream=io.StringIO(), show_progress=False)
    splits = make_splits(data.symbols, cfg.features)
    norm = fit_normalisation(data.symbols, splits["train"], cfg.features.window)
    trainer = Trainer(cfg, data, splits, norm, handler=handler, stream=sys.stderr, show_progress=False)
    trainer.models_dir.mkdir(parents=True, exist_ok=True)
    return Setup(cfg, trainer, len(trainer.datasets["train"]))


# --------------------------------------------------------------------------- 1. throughput
def time_ours_epoch(trainer: Trainer) -> float:
    """Seconds for one full ``_train_epoch()`` (no validation, no checkpoint at interval 0)."""
    trainer.step_in_epoch = 0  # _train_epoch runs "the rest of" the epoch: make it a whole one
    gc.collect()  # collect before, not during: the same for both loops
    t0 = time.perf_counter()
    completed = trainer._train_epoch()
    seconds = time.perf_counter() - t0
    if not completed:
        print("  warning: the trainer stopped early (stop flag set?)", flush=True)
    trainer.epoch += 1  # the next epoch's permutation, as a real run would draw
    return seconds


@dataclass
class BareLoop:
    """The plain PyTorch alternative: same model class, data, optimizer, clipping; nothing else."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    dataset: torch.utils.data.Dataset
    batch_size: int
    grad_clip: float
    generator: torch.Generator
    steps: int = 0

    def time_epoch(self) -> float:
        """Seconds for one epoch of the bare loop (DataLoader creation included, as in ours)."""
        loss_fn = nn.MSELoss()
        self.model.train()
        gc.collect()
        steps = 0
        t0 = time.perf_counter()
        # collate_batch: the dataset's __getitems__ already returns a stacked (x, y) batch, which
        # the default collate would try to stack again.
        for x, y in DataLoader(self.dataset, batch_size=self.batch_size, shuffle=True, num_workers=0,
                               collate_fn=collate_batch, generator=self.generator):
            self.optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(self.model(x), y)
            loss.backward()
            nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
            self.optimizer.step()
            steps += 1
        seconds = time.perf_counter() - t0
        self.steps = steps
        return seconds


def make_bare_loop(setup: Setup) -> BareLoop:
    """A fresh model with the trainer's seed and settings, and AdamW with its lr / weight decay."""
    cfg, trainer = setup.cfg, setup.trainer
    torch.manual_seed(cfg.train.seed)
    model = IndicatorTransformer(len(trainer.data.feature_names), cfg.features.window, cfg.model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    return BareLoop(model, optimizer, trainer.datasets["train"], cfg.train.batch_size, cfg.train.grad_clip,
                    torch.Generator().manual_seed(cfg.train.seed))


@dataclass
class ThroughputResult:
    ours_s: list[float]
    bare_s: list[float]
    samples: int
    steps: int
    bare_steps: int
    nw2_epoch_s: float = float("nan")

    @property
    def ours_rate(self) -> float:
        return self.samples / median(self.ours_s)

    @property
    def bare_rate(self) -> float:
        return self.samples / median(self.bare_s)

    @property
    def ratio(self) -> float:
        return self.ours_rate / self.bare_rate

    @property
    def paired_ratio(self) -> float:
        """Median of ours/bare rate per adjacent pair: each pair saw about the same background load."""
        return median([b / o for o, b in zip(self.ours_s, self.bare_s, strict=True)])

    @property
    def min_ratio(self) -> float:
        """Ratio of the fastest epochs: the least disturbed run of each loop."""
        return min(self.bare_s) / min(self.ours_s) if self.ours_s else float("nan")

    @property
    def noise(self) -> float:
        """Largest (max - min) / median of the two loops' epoch times: above ~5%, something else was
        competing for the CPUs and the ratio says more about that than about the trainer."""
        return max((max(x) - min(x)) / median(x) for x in (self.ours_s, self.bare_s))

    @property
    def verdict(self) -> str:
        met = yes_no(self.ratio >= 0.98)
        return met if self.noise <= NOISY else f"{met} (noisy run)"

    @property
    def step_s(self) -> float:
        """Typical optimizer step of our trainer at num_workers=0: epoch time / steps."""
        return median(self.ours_s) / self.steps

    @property
    def step_s_nw2(self) -> float:
        return self.nw2_epoch_s / self.steps


def bench_throughput(setup: Setup, args: argparse.Namespace) -> ThroughputResult:
    """Section 1: interleaved epochs of our trainer and of the bare loop, after one warm-up each."""
    trainer = setup.trainer
    bare = make_bare_loop(setup)
    print(f"model {count_parameters(trainer.model):,} parameters, {setup.train_windows:,} training "
          f"windows, batch {setup.cfg.train.batch_size}, {trainer.steps_per_epoch} steps/epoch, "
          f"torch threads {torch.get_num_threads()}, num_workers=0; validation excluded from both",
          flush=True)
    warm_ours, warm_bare = time_ours_epoch(trainer), bare.time_epoch()
    print(f"  warm-up: ours {warm_ours:.3f} s, bare {warm_bare:.3f} s", flush=True)
    ours, plain = [], []
    for r in range(args.repeats):
        ours.append(time_ours_epoch(trainer))
        plain.append(bare.time_epoch())
        print(f"  repeat {r + 1}/{args.repeats}: ours {ours[-1]:.3f} s "
              f"({setup.train_windows / ours[-1]:,.0f} samples/s), bare {plain[-1]:.3f} s "
              f"({setup.train_windows / plain[-1]:,.0f} samples/s)", flush=True)
    result = ThroughputResult(ours, plain, setup.train_windows, trainer.steps_per_epoch, bare.steps)

    # The step time of the num_workers=2 child (section 3's target): one epoch of the trainer with
    # two workers. Worker start-up is part of every real epoch (the loader is rebuilt per epoch).
    if not args.skip_subprocess:
        trainer.cfg = trainer.cfg.replace(num_workers=2)
        try:
            result.nw2_epoch_s = time_ours_epoch(trainer)
        finally:
            trainer.cfg = trainer.cfg.replace(num_workers=0)
        print(f"  ours with --num-workers 2 (for section 3): {result.nw2_epoch_s:.3f} s/epoch = "
              f"{result.step_s_nw2 * 1e3:.1f} ms/step", flush=True)

    print(f"steps per epoch: ours {result.steps}, bare {result.bare_steps}"
          f"{'' if result.steps == result.bare_steps else '  <-- DIFFERENT'}")
    print(f"epoch time   ours {spread(ours)}")
    print(f"             bare {spread(plain)}")
    print(f"samples/s    ours {result.ours_rate:,.0f}   bare {result.bare_rate:,.0f}   "
          f"ratio {result.ratio:.3f}x   target >= 0.98x   met: {result.verdict}")
    print(f"             (same ratio from paired repeats {result.paired_ratio:.3f}x, from the fastest "
          f"epochs {result.min_ratio:.3f}x: a big gap between these means background load)")
    if result.noise > NOISY:
        print(f"WARNING: epoch times vary by up to {result.noise:.0%} between repeats: background load; "
              f"rerun on a quiet machine (or with more --repeats) before trusting the ratio")
    print(f"step time    ours {result.step_s * 1e3:.1f} ms (median epoch / {result.steps} steps)")
    return result


# --------------------------------------------------------------------------- 2. checkpoint cost
@dataclass
class CheckpointResult:
    save_s: list[float]
    retention_s: list[float]
    plain_s: list[float]
    epoch_end_s: list[float]
    size: int
    pct_default: float = float("nan")
    pct_every_100: float = float("nan")


def bench_checkpoint(setup: Setup, tp: ThroughputResult, args: argparse.Namespace) -> CheckpointResult:
    """Section 2: our atomic step checkpoint vs a plain torch.save of the same dict, interleaved."""
    trainer = setup.trainer
    plain_path = trainer.models_dir.parent / "plain" / "plain.pth"
    plain_path.parent.mkdir(parents=True, exist_ok=True)
    save, retention, plain, epoch_end = [], [], [], []
    size = 0
    for i in range(args.checkpoint_repeats):
        # A new global step each time, as in a run, so retention has old files to delete.
        name = ckpt.step_checkpoint_name(trainer.epoch, trainer.global_step + 1 + i)
        t0 = time.perf_counter()
        path = trainer._save(name, interrupted=False)
        t1 = time.perf_counter()
        ckpt.apply_retention(trainer.models_dir, trainer.cfg.train.keep)
        t2 = time.perf_counter()
        save.append(t1 - t0)
        retention.append(t2 - t1)
        size = path.stat().st_size

        # The plain alternative: what a bare loop does, torch.save straight to the final name (a
        # crash mid-write leaves a truncated file), of the very same state.
        t0 = time.perf_counter()
        torch.save(trainer.state_dict(interrupted=False), plain_path)
        plain.append(time.perf_counter() - t0)

        # What the default interval really writes at epoch end: the epoch checkpoint, best.pth
        # when validation improved (same bytes, second atomic write), then retention.
        t0 = time.perf_counter()
        trainer._save(ckpt.epoch_checkpoint_name(trainer.epoch), interrupted=False, also_best=True)
        ckpt.apply_retention(trainer.models_dir, trainer.cfg.train.keep)
        epoch_end.append(time.perf_counter() - t0)

    res = CheckpointResult(save, retention, plain, epoch_end, size)
    epoch_s = median(tp.ours_s)
    cost = median(save)
    res.pct_default = 100 * cost / epoch_s
    # checkpoint_every=100: on average steps/100 step checkpoints per epoch plus the epoch-end one.
    per_epoch_100 = 1 + tp.steps / 100
    res.pct_every_100 = 100 * cost * per_epoch_100 / epoch_s
    print(f"checkpoint size {size / 1024:.0f} KiB; models dir {trainer.models_dir} "
          f"(fsync costs depend on this file system)")
    print(f"Trainer._save (step checkpoint)        {spread(save, 1e3, 'ms', 2)}")
    print(f"  + apply_retention after it            {spread(retention, 1e3, 'ms', 2)}")
    print(f"plain torch.save of the same state     {spread(plain, 1e3, 'ms', 2)}")
    print(f"epoch end: epoch ckpt + best.pth + retention {spread(epoch_end, 1e3, 'ms', 2)}")
    print(f"% of one epoch's training ({epoch_s:.3f} s, {tp.steps} steps, validation excluded):")
    print(f"  --checkpoint-every 0 (default, 1 per epoch): {cost * 1e3:.2f} ms / {epoch_s:.3f} s = "
          f"{res.pct_default:.3f}%   (epoch-end incl. best.pth + retention: "
          f"{100 * median(epoch_end) / epoch_s:.3f}%)   target <= 2%   met: {yes_no(res.pct_default <= 2)}")
    print(f"  --checkpoint-every 100 ({per_epoch_100:.2f} per epoch): {res.pct_every_100:.3f}%   "
          f"target <= 2%   met: {yes_no(res.pct_every_100 <= 2)}")
    return res


# --------------------------------------------------------------------------- subprocess plumbing
def _default_sigint() -> None:
    """preexec_fn: SIGINT back to its default in the child (a background shell starts it ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def child_env(pause_at: str | None) -> dict[str, str]:
    """Unbuffered child environment, pausing at ``pause_at`` ("train_step:5") when given."""
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env.pop(faults.ENV, None)
    if pause_at:
        env[faults.ENV] = pause_at
    return env


class Child:
    """A command run as a real subprocess; a reader thread timestamps each output line on arrival.

    stdout and stderr share one pipe, drained continuously, so the child never blocks on a full
    pipe and the ``PAUSED`` line is seen the moment it is written.
    """

    # Children not yet reaped: main() kills them (by handle) if the benchmark itself fails, so that
    # a paused child never outlives it and trains on in the background.
    live: set[Child] = set()

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path) -> None:
        self.start = time.perf_counter()
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env=env, cwd=cwd, preexec_fn=_default_sigint, bufsize=1)
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

    def wait_for(self, prefix: str, timeout: float = CHILD_TIMEOUT_S) -> float | None:
        """Arrival time (perf_counter) of the first line starting with ``prefix``; None if the
        child exited or ``timeout`` passed first."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                t = self.first(prefix)
                if t is not None:
                    return t
                if not self._thread.is_alive() or time.monotonic() > deadline:
                    return None
                self._cond.wait(0.5)

    def first(self, prefix: str) -> float | None:
        """Arrival time of the first line so far starting with ``prefix``, seconds after start."""
        for t, line in self.lines:
            if line.startswith(prefix):
                return t
        return None

    def finish(self, timeout: float = CHILD_TIMEOUT_S) -> int:
        """Wait for the exit (killing the child if it hangs) and for the reader; the exit code."""
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            code = self.proc.wait()
        self._thread.join(timeout=10)
        Child.live.discard(self)
        return code

    def kill(self) -> None:
        """SIGKILL this child (our own, by its handle) if it is still running."""
        if self.proc.poll() is None:
            self.proc.kill()

    @property
    def output(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def tail(self, n: int = 15) -> str:
        return "\n".join("    | " + line for _, line in self.lines[-n:])


def train_argv(work: Path, args: argparse.Namespace, models_dir: Path, *extra: str) -> list[str]:
    """The training command of sections 3 and 4: small synthetic market, same model and batch."""
    return [sys.executable, str(TRAIN_SCRIPT), "--symbols", str(args.sub_symbols), "--bars",
            str(args.sub_bars), "--epochs", "2", "--batch-size", str(args.batch_size), "--device", "cpu",
            "--no-progress", "--models-dir", str(models_dir), "--cache-dir", str(work / "sub_cache"),
            *extra]


def warm_subprocess_cache(work: Path, args: argparse.Namespace) -> bool:
    """Prepare the children's feature cache once (untimed), so every timed run finds it warm."""
    child = Child(train_argv(work, args, work / "warm_models", "--prepare-only"), child_env(None), work)
    code = child.finish()
    if code != 0:
        print(f"  cache warm-up failed (exit {code}):\n{child.tail()}", flush=True)
    return code == 0


# --------------------------------------------------------------------------- 3. interrupt latency
# Lines of a graceful stop, in the order the shutdown contract prints them; their arrival times
# after the SIGINT show where the latency goes.
STOP_LINES = (("received", "Received SIGINT"), ("checkpoint saved", "Checkpoint saved: "),
              ("cleanup complete", "Cleanup complete"))


@dataclass
class InterruptRun:
    """One paused child stopped by one SIGINT."""

    latency_s: float | None = None
    failure: str = ""
    checkpoint: Path | None = None
    phases: dict[str, float] = field(default_factory=dict)


@dataclass
class InterruptResult:
    num_workers: int
    step_s: float
    latency_s: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    phases: dict[str, list[float]] = field(default_factory=dict)
    runs: int = 0
    checkpoint: Path | None = None  # one interrupted checkpoint, reused by section 4

    @property
    def worst_case_s(self) -> float:
        """A signal at a random moment waits for the step in flight: latency + one step."""
        return median(self.latency_s) + self.step_s

    @property
    def target_s(self) -> float:
        return self.step_s + 1.0

    @property
    def met(self) -> bool:
        return self.worst_case_s <= self.target_s and not self.failures


def wait_exit(child: Child, timeout: float) -> int | None:
    """Block until the child exits; None (and the child killed) after ``timeout``.

    ``Popen.wait(timeout=...)`` polls with sleeps of up to 50 ms, which would quantise the latency;
    a plain blocking ``wait()`` returns at once, and a watchdog timer bounds it instead.
    """
    fired = threading.Event()

    def watchdog() -> None:
        fired.set()
        child.kill()

    timer = threading.Timer(timeout, watchdog)
    timer.start()
    try:
        code = child.proc.wait()
    finally:
        timer.cancel()
    return None if fired.is_set() else code


def interrupt_once(work: Path, args: argparse.Namespace, nw: int, run: int) -> InterruptRun:
    """Start a training child paused after step n, SIGINT it, time the exit and check the result."""
    n = args.interrupt_step
    models = work / f"intr_nw{nw}_{run}"
    child = Child(train_argv(work, args, models, "--num-workers", str(nw)),
                  child_env(f"train_step:{n}"), work)
    if child.wait_for(f"PAUSED train_step {n}") is None:
        code = child.finish()
        return InterruptRun(failure=f"no 'PAUSED train_step {n}' (exit {code}):\n{child.tail()}")
    try:
        descendants = [p.pid for p in psutil.Process(child.proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        descendants = []
    t0 = time.perf_counter()
    os.kill(child.proc.pid, signal.SIGINT)
    code = wait_exit(child, CHILD_TIMEOUT_S)
    latency = time.perf_counter() - t0
    child.finish()
    if code is None:
        return InterruptRun(failure=f"still running {CHILD_TIMEOUT_S:.0f} s after SIGINT (killed):\n"
                                    f"{child.tail()}")
    out = InterruptRun(latency_s=latency)
    for label, prefix in STOP_LINES:
        at = child.first(prefix)
        if at is not None:
            out.phases[label] = at - t0

    problems = []
    if code != 130:
        problems.append(f"exit code {code}, expected 130")
    path = models / ckpt.interrupted_checkpoint_name(1)
    if not path.exists():
        problems.append(f"{path.name} missing")
    else:
        out.checkpoint = path
        step = int(ckpt.load_checkpoint(path)["global_step"])
        if step != n:
            problems.append(f"{path.name} is at global step {step}, expected {n}")
    if "Cleanup complete" not in child.output:
        problems.append("no 'Cleanup complete'")
    left = [pid for pid in descendants if _alive(pid)]
    if left:
        problems.append(f"child processes left: {left}")
    if problems:
        out.failure = "; ".join(problems) + "\n" + child.tail()
    return out


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie (a zombie has exited; only its entry remains)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def bench_interrupt(work: Path, args: argparse.Namespace, nw: int, step_s: float) -> InterruptResult:
    """Section 3 for one --num-workers value: ``--subprocess-repeats`` paused children."""
    res = InterruptResult(nw, step_s)
    for run in range(args.subprocess_repeats):
        one = interrupt_once(work, args, nw, run)
        res.runs += 1
        if one.latency_s is not None:
            res.latency_s.append(one.latency_s)
        if one.failure:
            res.failures.append(one.failure)
        if one.checkpoint is not None and res.checkpoint is None:
            res.checkpoint = one.checkpoint
        for label, t in one.phases.items():
            res.phases.setdefault(label, []).append(t)
        shown = f"{one.latency_s:.3f} s" if one.latency_s is not None else "-"
        checks = "ok" if not one.failure else "FAILED: " + one.failure
        print(f"  run {run + 1}: SIGINT -> exit {shown}  checks: {checks}", flush=True)
    ok_runs = res.runs - len(res.failures)
    print(f"--num-workers {nw}: latency {spread(res.latency_s)}; checks ok in {ok_runs}/{res.runs} runs")
    parts = ", ".join(f"{label} {median(v) * 1e3:.0f} ms" for label, v in res.phases.items())
    print(f"  after SIGINT (median): {parts}, exit {median(res.latency_s) * 1e3:.0f} ms")
    print(f"  step {step_s * 1e3:.1f} ms; worst case (signal mid-step) = latency + step = "
          f"{res.worst_case_s:.3f} s   target <= step + 1 s = {res.target_s:.3f} s   "
          f"met: {yes_no(res.met)}", flush=True)
    return res


# --------------------------------------------------------------------------- 4. start-up time
@dataclass
class StartupResult:
    resume_s: list[float] = field(default_factory=list)
    fresh_s: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    k: int = 0
    phases: dict[str, dict[str, list[float]]] = field(default_factory=dict)


PHASES = (("first output", ""), ("preparation done", "Prepared "), ("trainer built", "Training "))


def time_to_first_step(argv: list[str], pause_step: int, work: Path,
                       phases: dict[str, list[float]]) -> tuple[float | None, str]:
    """Popen -> ``PAUSED train_step <pause_step>``, then SIGINT it (it saves and exits 130)."""
    child = Child(argv, child_env(f"train_step:{pause_step}"), work)
    t = child.wait_for(f"PAUSED train_step {pause_step}")
    if t is None:
        code = child.finish()
        return None, f"no 'PAUSED train_step {pause_step}' (exit {code}):\n{child.tail()}"
    for label, prefix in PHASES:  # where the start-up time goes, from the line arrival times
        at = child.first(prefix)  # "" matches the first line
        if at is not None:
            phases.setdefault(label, []).append(at - child.start)
    os.kill(child.proc.pid, signal.SIGINT)
    code = child.finish()
    return t - child.start, "" if code == 130 else f"exit code {code} after SIGINT, expected 130"


def bench_startup(work: Path, args: argparse.Namespace, source: Path) -> StartupResult:
    """Section 4: resume_training.py vs a fresh train_indicator_transformer.py, interleaved."""
    res = StartupResult()
    res.k = int(ckpt.load_checkpoint(source)["global_step"])
    res.phases = {"resume": {}, "fresh": {}}
    for run in range(args.subprocess_repeats):
        # A fresh copy each time: the resumed child overwrites the interrupted checkpoint on SIGINT.
        models = work / f"resume_{run}"
        models.mkdir()
        shutil.copy2(source, models / source.name)
        resume_argv = [sys.executable, str(RESUME_SCRIPT), "--models-dir", str(models), "--no-progress"]
        fresh_argv = train_argv(work, args, work / f"fresh_{run}")
        for name, argv, pause_step, out in (("resume", resume_argv, res.k + 1, res.resume_s),
                                            ("fresh", fresh_argv, 1, res.fresh_s)):
            seconds, failure = time_to_first_step(argv, pause_step, work, res.phases[name])
            if seconds is not None:
                out.append(seconds)
            if failure:
                res.failures.append(f"{name}: {failure}")
            shown = f"{seconds:.3f} s" if seconds is not None else "-"
            print(f"  run {run + 1} {name:6s}: start -> first step {shown}"
                  f"{'' if not failure else '  FAILED: ' + failure}", flush=True)
    print(f"resume_training.py (checkpoint at global step {res.k}, pause at {res.k + 1}): "
          f"{spread(res.resume_s)}")
    print(f"train_indicator_transformer.py, fresh, warm cache (pause at 1):   {spread(res.fresh_s)}")
    for who, phases in res.phases.items():
        parts = ", ".join(f"{label} {median(v):.2f} s" for label, v in phases.items())
        print(f"  {who} phases (median, from Popen): {parts}")
    diff = median(res.resume_s) - median(res.fresh_s)
    print(f"resume - fresh = {diff:+.3f} s   yardstick <= +1 s (no target was specified)   "
          f"met: {yes_no(diff <= 1.0 and not res.failures)}", flush=True)
    return res


# --------------------------------------------------------------------------- summary
def print_summary(tp: ThroughputResult, cp: CheckpointResult, intr: list[InterruptResult],
                  st: StartupResult | None) -> None:
    """metric | ours | plain alternative | target | met?"""
    rows = [
        ["training throughput, samples/s (nw=0)", f"{tp.ours_rate:,.0f}",
         f"{tp.bare_rate:,.0f} (bare loop)", f"ratio >= 0.98x (is {tp.ratio:.3f}x)",
         tp.verdict],
        ["step checkpoint, Trainer._save", f"{median(cp.save_s) * 1e3:.2f} ms",
         f"{median(cp.plain_s) * 1e3:.2f} ms (torch.save)", "-", "n/a"],
        ["  % of epoch, --checkpoint-every 0", f"{cp.pct_default:.3f}%", "-", "<= 2%",
         yes_no(cp.pct_default <= 2)],
        ["  % of epoch, --checkpoint-every 100", f"{cp.pct_every_100:.3f}%", "-", "<= 2%",
         yes_no(cp.pct_every_100 <= 2)],
    ]
    for r in intr:
        checks = f", checks {r.runs - len(r.failures)}/{r.runs}"
        rows.append([f"SIGINT -> exit, --num-workers {r.num_workers}",
                     f"{median(r.latency_s):.3f} s (worst {r.worst_case_s:.3f} s{checks})",
                     "- (bare loop: dies, saves nothing)", f"<= step + 1 s = {r.target_s:.3f} s",
                     yes_no(r.met)])
    if st is not None:
        diff = median(st.resume_s) - median(st.fresh_s)
        rows.append(["start -> first step, resume_training.py", f"{median(st.resume_s):.3f} s",
                     f"{median(st.fresh_s):.3f} s (fresh train)",
                     f"<= fresh + 1 s (own yardstick; is {diff:+.3f} s)",
                     yes_no(diff <= 1.0 and not st.failures)])
    headers = ["metric", "ours", "plain alternative", "target", "met?"]
    widths = [max(len(str(row[i])) for row in [headers, *rows]) for i in range(len(headers))]
    section("summary")
    for row in [headers, ["-" * w for w in widths], *rows]:
        print(" | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


# --------------------------------------------------------------------------- main
def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--symbols", type=int, default=16, help="in-process synthetic market: symbols "
                   "(the CLI default, so the checkpoint %% refers to a default-size epoch)")
    p.add_argument("--bars", type=int, default=2500, help="in-process synthetic market: bars per symbol")
    p.add_argument("--batch-size", type=int, default=256, help="batch size everywhere (CLI default)")
    p.add_argument("--repeats", type=int, default=5, help="interleaved timed epochs of each loop")
    p.add_argument("--checkpoint-repeats", type=int, default=20, help="checkpoint saves to time")
    p.add_argument("--subprocess-repeats", type=int, default=5,
                   help="children per interrupt setting, and per start-up command")
    p.add_argument("--sub-symbols", type=int, default=4, help="subprocess synthetic market: symbols")
    p.add_argument("--sub-bars", type=int, default=1500, help="subprocess synthetic market: bars")
    p.add_argument("--interrupt-step", type=int, default=5, help="global step at which to pause")
    p.add_argument("--skip-subprocess", action="store_true", help="skip sections 3 and 4")
    p.add_argument("--work-dir", default=None, help="parent of the temporary folder (None: system temp)")
    p.add_argument("--keep-work", action="store_true", help="do not delete the temporary folder")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench_training_", dir=args.work_dir))
    started = time.perf_counter()
    print(f"bench_training: torch {torch.__version__}, {os.cpu_count()} CPUs, python "
          f"{sys.version.split()[0]}, work dir {work}, load average {load_average()}", flush=True)
    try:
        setup = build_setup(work, args)
        section("1. training throughput: Trainer._train_epoch() vs bare PyTorch loop")
        tp = bench_throughput(setup, args)
        section("2. periodic checkpoint cost")
        cp = bench_checkpoint(setup, tp, args)
        intr: list[InterruptResult] = []
        st = None
        if not args.skip_subprocess:
            section(f"3. interrupt latency (SIGINT at a PAUSE after step {args.interrupt_step})")
            print(f"children: {args.sub_symbols} symbols x {args.sub_bars} bars, batch {args.batch_size}, "
                  f"default model, warm cache", flush=True)
            if warm_subprocess_cache(work, args):
                intr.append(bench_interrupt(work, args, 0, tp.step_s))
                intr.append(bench_interrupt(work, args, 2, tp.step_s_nw2))
                section("4. start-up: process start -> first training step")
                source = intr[0].checkpoint
                if source is None:
                    print("  no interrupted checkpoint from section 3 to resume from: skipped")
                else:
                    st = bench_startup(work, args, source)
        print_summary(tp, cp, intr, st)
    finally:
        for child in list(Child.live):
            child.kill()
        if args.keep_work:
            print(f"work dir kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\ntotal benchmark time {time.perf_counter() - started:.0f} s; load average now {load_average()} "
          f"(other processes on these {os.cpu_count()} CPUs distort every figure above)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
