"""Interruptible parallel preparation: sources -> validated bars -> features -> committed cache.

Symbols are prepared by a pool registered with the SignalHandler: worker processes for a large
preparation (TA-Lib holds the GIL, so threads could not compute two symbols at once), threads
otherwise. Each task reads and hashes one input, and on a miss parses it, computes its features
and writes its cache file; the main thread commits the records to the manifest. The stop flag is
checked before each submission, so a Ctrl-C cancels what has not started, lets the running tasks
finish (a thread stops at its next stage boundary: hash, load, compute, write; a worker process,
which ignores the stop signals so that a terminal's Ctrl-C to the whole process group does not kill
it mid-task, finishes its one symbol), and commits to the manifest everything that finished. The
pool is shut down and joined before ``prepare`` returns, so no worker outlives it; a worker process
also dies with its parent (``PR_SET_PDEATHSIG``) if the parent is killed outright. The next run
computes only what is missing.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import multiprocessing
import os
import signal
import sys
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import (
    FIRST_COMPLETED,
    Executor,
    Future,
    ProcessPoolExecutor,
    ThreadPoolExecutor,
    wait,
)
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any, Literal, TextIO

import numpy as np

from .. import faults
from ..atomic import storage_error
from ..config import DataConfig, FeatureConfig
from ..errors import DataError, DataErrors, PreparationFailed, too_many_open_files
from ..progress import Progress
from ..shutdown import SignalHandler
from .cache import FeatureCache, cache_key, write_entry
from .features import compute_features, required_columns, warmup_bars
from .folder import discover_files
from .ohlcv import OHLCV, DataNote, RawInput
from .panel import data_file_sources
from .sources import Source, synthetic_sources


@dataclass(frozen=True)
class SymbolData:
    """One symbol's cached arrays (memory-mapped, read-only)."""

    symbol: str
    key: str
    features: np.ndarray   # (T, F) float32
    label: np.ndarray      # (T,) float32
    time: np.ndarray       # (T,) int64 ns


@dataclass
class PreparedData:
    """What preparation produced, with the figures for its summary."""

    symbols: list[SymbolData] = field(default_factory=list)
    feature_names: list[str] = field(default_factory=list)
    hits: int = 0
    misses: int = 0
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0
    interrupted: bool = False
    total_sources: int = 0

    @property
    def bars(self) -> int:
        return sum(len(s.label) for s in self.symbols)

    @property
    def fingerprint(self) -> str:
        """sha256 over the sorted cache keys: changes whenever any input or feature setting does."""
        keys = sorted(f"{s.symbol}:{s.key}" for s in self.symbols)
        return hashlib.sha256("\n".join(keys).encode()).hexdigest()

    def summary(self) -> str:
        """A few human lines for the end of preparation."""
        f = len(self.feature_names)
        lines = [
            f"Prepared {len(self.symbols)}/{self.total_sources} symbols, {self.bars:,} bars x {f} "
            f"features in {self.seconds:.2f}s (cache hits {self.hits}, misses {self.misses})",
        ]
        if self.skipped:
            lines.append(f"Skipped {len(self.skipped)} bad file(s): {', '.join(self.skipped)}")
        return "\n".join(lines)


COMMIT_EVERY_S = 2.0  # how often preparation commits finished symbols to the manifest
# "auto" uses worker processes from this many symbols to compute on: below it, starting the pool
# (about 0.1 s) costs more than a second core gains.
PROCESS_POOL_MIN_SYMBOLS = 32
Pool = Literal["auto", "process", "thread"]


class _Stopped(Exception):
    """Raised inside a task at a stage boundary when a stop was requested."""


def feature_settings(features: FeatureConfig, use_adj_close: bool) -> dict[str, Any]:
    """Every setting that changes what preparation computes from one input: the cache key's
    ``settings`` (see ``tests/test_cache_key_settings.py``, which classifies every config field).

    ``window``, the split fractions and the data-folder settings are not here: windows and splits
    are cut from the cached arrays later, the input itself is keyed by its bytes. Declared features
    are, in their canonical form (every parameter spelt out), but only those in use: a declaration
    that is not in ``features`` computes nothing. Without any, the settings (and so every existing
    key) are what they were before features could be declared.
    """
    settings: dict[str, Any] = {"features": list(features.features), "horizon": int(features.horizon),
                                "use_adj_close": bool(use_adj_close)}
    declared = {d["name"]: d for d in features.custom_features}
    used = [declared[n] for n in features.features if n in declared]
    if used:
        settings["custom_features"] = used
    return settings


def expected_keys(data: DataConfig, features: FeatureConfig) -> dict[str, str]:
    """symbol -> the cache key that preparation would use for ``data`` and ``features``
    (hashes every input; reads no cache)."""
    settings = feature_settings(features, data.use_adj_close)
    return {src.symbol: cache_key(src.read().sha256, src.symbol, settings) for src in resolve_sources(data)}


def resolve_sources(cfg: DataConfig) -> list[Source]:
    """The symbols of ``cfg.data_file`` (a panel file, or a folder partitioned by symbol, read
    once here), the files of ``cfg.data_dir``, or the built-in synthetic market when neither is set."""
    if cfg.data_file is not None:
        return data_file_sources(cfg.data_file)
    if cfg.data_dir is None:
        return synthetic_sources(cfg.symbols, cfg.bars, cfg.data_seed)
    return discover_files(cfg.data_dir)


def known_identity(cache: FeatureCache, src: Source) -> str | None:
    """A source's identity when it costs no reading: a panel already loaded (its symbols' rows were
    hashed once, when it was read), or what the cache knows of an unchanged file."""
    if src.panel is not None:
        return src.panel.known_identity(src.symbol)
    return cache.known_identity(src)


def warn_flat_volume(src: Source, bars: OHLCV, names: list[str],
                     custom: Sequence[Mapping[str, Any]] = ()) -> None:
    """Warn when a chosen feature reads a volume that never changes (all zero, or one value):
    the volume features would then be constant, silently."""
    users = [n for n in names if "volume" in required_columns([n], custom)]
    if not users or len(bars) == 0 or not np.all(bars.volume == bars.volume[0]):
        return
    what = "zero in every row" if bars.volume[0] == 0 else f"the same ({bars.volume[0]:g}) in every row"
    warnings.warn(f"{src.where}: volume is {what}, so {', '.join(users)} carry no information (choose "
                  f"--features without them, or check the volume column)", DataNote, stacklevel=2)


@dataclass(frozen=True)
class _Plan:
    """What every task needs to know, the same for all symbols (sent to worker processes)."""

    root: str
    names: tuple[str, ...]
    horizon: int
    custom: tuple[Mapping[str, Any], ...]
    required: frozenset[str]
    use_adj_close: bool
    settings: Mapping[str, Any]
    min_rows: int
    warmup: int
    window: int


@dataclass(frozen=True)
class _Outcome:
    """What a task hands back: small, so a worker process sends a record, never the arrays."""

    key: str = ""
    hit: bool = False                        # the key was already in the cache: the main thread maps it
    entry: dict[str, Any] | None = None      # the record of a data file the task wrote
    rows: int = 0
    memo: tuple[str, dict[str, int], str] | None = None  # (path, stat signature, sha256) of the input
    notes: tuple[tuple[type[Warning], str], ...] = ()    # warnings raised in a worker process
    error: tuple[str, str, int | None, str | None] | None = None  # a DataError from a worker process


def _check_rows(plan: _Plan, src: Source, rows: int) -> None:
    # The same check for a hit as for a miss: a cached entry prepared for a shorter window
    # must not slip through when the window grows.
    if rows < plan.min_rows:
        raise DataError(src.where,
                        f"only {rows} rows (expected at least {plan.min_rows}: {plan.warmup} indicator "
                        f"warm-up + window {plan.window} + horizon {plan.horizon})")


def _prepare_one(plan: _Plan, src: Source, known: frozenset[str],
                 should_stop: Callable[[], bool] | None = None) -> _Outcome:
    """One symbol: read and hash its input; unless its key is ``known`` (already cached), parse,
    compute and write its cache file. ``should_stop`` is checked between the stages (threads)."""
    def checkpoint() -> None:
        if should_stop is not None and should_stop():
            raise _Stopped
    checkpoint()
    # Read once: the key comes from the hash of exactly the bytes that are parsed, so a file
    # that changes on disk meanwhile can never put its features under another content's key.
    raw = src.read()
    key = cache_key(raw.sha256, src.symbol, plan.settings)
    # Remembered only for inputs that were used: nothing is kept of a bad file.
    memo = (raw.path, raw.signature, raw.sha256) if raw.path is not None and raw.signature is not None \
        else None
    if key in known:
        return _Outcome(key, hit=True, memo=memo)
    checkpoint()
    bars = src.parse(raw, use_adj_close=plan.use_adj_close, required=plan.required)
    _check_rows(plan, src, len(bars))
    warn_flat_volume(src, bars, list(plan.names), plan.custom)
    checkpoint()
    fs = compute_features(bars, plan.names, plan.horizon, plan.custom)
    checkpoint()
    entry = write_entry(plan.root, key, src.symbol, fs, input_rows=len(bars))
    return _Outcome(key, entry=entry, rows=len(bars), memo=memo)


def _in_worker_process(plan: _Plan, src: Source, known: frozenset[str]) -> _Outcome:
    """:func:`_prepare_one` in a worker process: its warnings and data errors travel back as data
    (a DataError does not survive pickling; warnings in a child would bypass the parent's filters)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            out = _prepare_one(plan, src, known)
        except DataError as e:
            return _Outcome(error=(e.path, e.problem, e.row, e.column))
    notes = tuple((w.category, str(w.message)) for w in caught)
    return _Outcome(out.key, out.hit, out.entry, out.rows, out.memo, notes)


def _init_worker_process(parent: int) -> None:
    """A preparation worker ignores the stop signals: a Ctrl-C in a terminal reaches the whole
    process group, and the parent decides (it cancels what has not started and waits for the
    running symbols). On Linux the kernel kills the worker when the parent dies, even by kill -9,
    so it never outlives it."""
    for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGUSR1"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1  # noqa: N806 - the kernel's name
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the parent died before the call (we were re-parented)
        os._exit(0)


def _use_processes(pool: Pool, workers: int, pending: Sequence[Source]) -> bool:
    """Worker processes when asked, or ("auto") for enough plain file or synthetic symbols on
    Linux with 2+ workers. A panel's symbols stay in threads (each task would pickle the whole
    panel), as do Source subclasses (they may hold what cannot cross a process boundary)."""
    plain = all(type(s) is Source and s.panel is None for s in pending)
    if pool == "process":
        if not plain:
            raise ValueError("pool='process' needs plain file or synthetic sources")
        return True
    return (pool == "auto" and workers >= 2 and sys.platform.startswith("linux") and plain
            and len(pending) >= PROCESS_POOL_MIN_SYMBOLS)


def _process_pool(workers: int) -> ProcessPoolExecutor:
    # fork: the worker starts in milliseconds with every module already imported, and runs no code
    # of the parent's other threads (it only reads, computes with NumPy/TA-Lib and writes a file).
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork"),
                               initializer=_init_worker_process, initargs=(os.getpid(),))


class _PoolWatch:
    """The worker processes and manager thread of a process pool, noted while the pool runs.

    ``ProcessPoolExecutor.shutdown`` forgets both (and a stop request shuts the pool down from the
    SignalHandler before :func:`_shut_down` runs), but they are what must be watched until they end.
    """

    def __init__(self) -> None:
        self.workers: list[multiprocessing.process.BaseProcess] = []
        self.manager: threading.Thread | None = None

    def note(self, executor: Executor) -> None:
        """Remember the pool's workers and manager thread (once: a fork pool starts all its
        workers at the first submission). Uses the pool's own bookkeeping (CPython 3.9+)."""
        if self.manager is None and isinstance(executor, ProcessPoolExecutor):
            self.workers = list((getattr(executor, "_processes", None) or {}).values())
            self.manager = getattr(executor, "_executor_manager_thread", None)


def _kill_started(executor: Executor) -> None:
    """SIGKILL the workers a process pool did start before starting another failed: without its
    manager thread nobody would ever tell them to exit, and the interpreter's exit waits for them."""
    for proc in list((getattr(executor, "_processes", None) or {}).values()):
        with contextlib.suppress(Exception):
            proc.kill()
            proc.join(5)


def _start_failure(e: OSError) -> str:
    """The one-line reason a preparation worker could not start, and what to do about it."""
    why = f"could not start a preparation worker process ({e.strerror or e})"
    if e.errno in (errno.EMFILE, errno.ENFILE):
        return f"{too_many_open_files(why)}; the symbols finished so far are committed"
    return f"{why}; the symbols finished so far are committed, run the command again"


def _shut_down(executor: Executor, watch: _PoolWatch) -> None:
    """Shut the pool down and join everything it started, even when a worker process died.

    When one worker dies, the pool's manager thread fails the futures still pending and stops the
    other workers with SIGTERM, which ours ignore (see :func:`_init_worker_process`); a survivor
    blocked on the task queue's lock, left held by the dead worker, then never exits, and the
    manager (and with it ``shutdown(wait=True)``, or the interpreter's exit) waits for it for ever -
    also when no future was pending any more. So the wait is a loop: as soon as a worker has died,
    the survivors are SIGKILLed. Their results are lost with the pool anyway: a file one was writing
    has a temporary name, and one it wrote but could not hand back is listed by no manifest, so
    neither is ever read (``validate_cache.py`` removes both; the rerun computes the symbol again).
    """
    if not isinstance(executor, ProcessPoolExecutor):
        executor.shutdown(wait=True, cancel_futures=True)
        return
    executor.shutdown(wait=False, cancel_futures=True)
    while watch.manager is not None and watch.manager.is_alive():
        if any(w.exitcode not in (None, 0) for w in watch.workers):  # one died: the pool is broken
            for w in watch.workers:
                if w.is_alive():
                    w.kill()
        watch.manager.join(0.1)


def prepare(sources: list[Source], features: FeatureConfig, cache: FeatureCache, *,
            handler: SignalHandler | None = None, workers: int = 2, skip_bad_files: bool = False,
            use_adj_close: bool = False, stream: TextIO | None = None,
            show_progress: bool = True, pool: Pool = "auto") -> PreparedData:
    """Prepare every source's features through ``cache`` with ``workers`` threads or processes
    (``pool``: "auto" picks processes for a large preparation on Linux, see :func:`_use_processes`).

    Raises :class:`DataErrors` listing every bad file (unless ``skip_bad_files``); good entries
    computed before that are still committed. On a stop request returns with ``interrupted=True``
    after committing everything that completed. Holds the cache :meth:`~FeatureCache.in_use`
    throughout, so that no repair or --clear-all removes what it writes before the commit.
    """
    with cache.in_use():
        return _prepare(sources, features, cache, handler=handler, workers=workers,
                        skip_bad_files=skip_bad_files, use_adj_close=use_adj_close, stream=stream,
                        show_progress=show_progress, pool=pool)


def _prepare(sources: list[Source], features: FeatureConfig, cache: FeatureCache, *,
             handler: SignalHandler | None, workers: int, skip_bad_files: bool, use_adj_close: bool,
             stream: TextIO | None, show_progress: bool, pool: Pool) -> PreparedData:
    handler = handler or SignalHandler()
    stream = stream or sys.stderr
    names = list(features.features)
    custom = features.custom_features  # declared TA-Lib features the names may refer to
    warmup = warmup_bars(names, custom)
    settings = feature_settings(features, use_adj_close)
    plan = _Plan(str(cache.root), tuple(names), int(features.horizon), tuple(custom),
                 required_columns(names, custom), use_adj_close, settings,
                 warmup + features.window + features.horizon, warmup, features.window)
    result = PreparedData(feature_names=names, total_sources=len(sources))
    order = {s.symbol: i for i, s in enumerate(sources)}
    done: dict[str, SymbolData] = {}
    errors: list[DataError] = []
    start = time.perf_counter()

    def cached(src: Source, key: str) -> SymbolData | None:
        arrays = cache.get(key)
        if arrays is None:
            return None
        rows = cache.input_rows(key)
        _check_rows(plan, src, len(arrays["label"]) + warmup if rows is None else rows)
        return SymbolData(src.symbol, key, arrays["features"], arrays["label"], arrays["time"])

    def failed(exc: DataError) -> None:
        # A problem of a whole panel file (a missing column) is the same for each of its symbols:
        # reported once.
        if any(str(e) == str(exc) for e in errors):
            progress.update(1)
            return
        errors.append(exc)
        if skip_bad_files:
            warnings.warn(f"skipping bad file: {exc}", stacklevel=3)
        progress.update(1)

    def finished(src: Source, out: _Outcome) -> SymbolData | None:
        """The main thread's half of a task: map a hit or adopt a written file (None: the cached
        entry turned out damaged and was dropped; the symbol must be computed after all)."""
        for category, message in out.notes:
            warnings.warn(message, category, stacklevel=2)
        if out.error is not None:
            path, problem, row, column = out.error
            raise DataError(path, problem, row=row, column=column)
        if out.hit:
            sd = cached(src, out.key)
            if sd is None:
                return None
        else:
            assert out.entry is not None
            arrays = cache.adopt(out.key, out.entry)
            sd = SymbolData(src.symbol, out.key, arrays["features"], arrays["label"], arrays["time"])
        if out.memo is not None:
            path, sig, sha = out.memo
            cache.remember_input(RawInput(sha, None, path, sig))
        return sd

    progress = Progress(len(sources), "prepare", unit="sym", stream=stream, enabled=show_progress)
    running: dict[Future, Source] = {}
    bars_done = 0
    last_commit = time.monotonic()
    executor: Executor | None = None
    watch = _PoolWatch()
    try:
        # Fast path in this thread: inputs whose identity is known without hashing and whose entry
        # is cached only need their arrays mapped. Handing them to the pool would cost more in
        # hand-offs than the work itself (a warm start would be several times slower).
        pending: deque[Source] = deque()
        for src in sources:
            if handler.should_stop:
                break
            try:
                identity = known_identity(cache, src)
                hit = cached(src, cache_key(identity, src.symbol, settings)) if identity is not None else None
            except DataError as e:
                failed(e)
                continue
            if hit is None:
                pending.append(src)
                continue
            done[src.symbol] = hit
            result.hits += 1
            bars_done += len(hit.label)
            progress.update(1)
        # The keys already cached per symbol: a task that hashes its input to one of them maps it
        # instead of computing (an input whose stat signature changed but not its bytes).
        known: dict[str, set[str]] = {}
        for key, entry in list(cache.entries.items()):
            known.setdefault(entry["symbol"], set()).add(key)
        recompute: set[str] = set()  # symbols whose cached entry was found damaged meanwhile
        if pending and not handler.should_stop:
            if _use_processes(pool, workers, pending):
                executor = _process_pool(workers)
                task: Callable[..., _Outcome] = _in_worker_process
            else:
                executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="prepare")
                task = functools.partial(_prepare_one, should_stop=lambda: handler.should_stop)
            handler.register_executor(executor)
        fatal: BaseException | None = None  # the first unexpected error of a task
        while pending or running:
            # Keep at most 2 x workers tasks queued: a stop then has little to cancel, and the
            # flag is checked before every submission.
            while pending and len(running) < 2 * workers and not handler.should_stop:
                src = pending.popleft()
                keys = frozenset() if src.symbol in recompute else frozenset(known.get(src.symbol, ()))
                assert executor is not None
                try:
                    fut = executor.submit(task, plan, src, keys)
                except BrokenProcessPool as e:
                    # A worker died: take in what already came back (below), then report it.
                    fatal = fatal or e
                    pending.clear()
                    break
                except OSError as e:  # a worker could not be started (no descriptors, no memory)
                    _kill_started(executor)
                    fatal = fatal or PreparationFailed(_start_failure(e))
                    pending.clear()
                    break
                watch.note(executor)
                running[handler.register_future(fut)] = src
            if handler.should_stop:
                pending.clear()
            # A future cancelled before it started (by the stop request or the executor's
            # shutdown) stays in state CANCELLED, which wait() never counts as done: drop those
            # here, or a stop with queued tasks would spin this loop forever.
            running = {f: s for f, s in running.items() if not f.cancelled()}
            if not running:
                break
            complete, _ = wait(running, timeout=0.2, return_when=FIRST_COMPLETED)
            for fut in complete:
                src = running.pop(fut)
                if fut.cancelled():
                    continue
                exc = fut.exception()
                if isinstance(exc, _Stopped):
                    continue
                if isinstance(exc, DataError):
                    failed(exc)
                    continue
                if exc is not None:
                    # Keep what the other tasks finish (their files are written: adopt them so the
                    # final commit lists them), submit nothing more, then raise this.
                    fatal = fatal or exc
                    pending.clear()
                    continue
                out = fut.result()
                try:
                    sd = finished(src, out)
                except DataError as e:
                    failed(e)
                    continue
                except OSError as e:  # its file could not be read back (no descriptor left...):
                    # as a task's error, so that what the others finish is still adopted
                    fatal = fatal or storage_error(e.filename or cache.root, e, "could not be read") or e
                    pending.clear()
                    continue
                if sd is None:
                    recompute.add(src.symbol)
                    pending.appendleft(src)
                    continue
                done[src.symbol] = sd
                result.hits += out.hit
                result.misses += not out.hit
                faults.point("prepare_symbol", len(done))
                bars_done += len(sd.label)  # a running total: summing over done is O(symbols^2)
                progress.update(1, bars_per_s=round(bars_done / max(progress.elapsed, 1e-9)))
            # Commit now and then, not only at the end: a kill -9 (or a second Ctrl-C) then loses
            # at most the last few seconds of preparation.
            if cache.pending and time.monotonic() - last_commit >= COMMIT_EVERY_S:
                cache.commit()
                last_commit = time.monotonic()
                faults.point("prepare_commit", len(done))
        if fatal is not None:
            raise fatal
    except BrokenProcessPool:
        raise PreparationFailed(f"a preparation worker process died (killed, or out of memory); the "
                                f"{len(done)} finished symbol(s) are committed to the cache, run the "
                                f"command again to compute the rest") from None
    finally:
        # Let running tasks finish or reach a stage boundary (they never leave a partial file) and
        # join every worker, then commit what completed - also on Ctrl-C and on errors: finished
        # work is never thrown away, and no worker outlives this call.
        if executor is not None:
            _shut_down(executor, watch)
            handler.register_executor(None)
        progress.close()
        cache.commit()
    result.interrupted = handler.should_stop
    result.seconds = time.perf_counter() - start
    result.symbols = sorted(done.values(), key=lambda d: order[d.symbol])
    result.skipped = [str(e.path) for e in errors]
    if errors and not skip_bad_files and not result.interrupted:
        raise DataErrors(sorted(errors, key=lambda e: e.path))
    return result
