"""Interruptible parallel preparation: sources -> validated bars -> features -> committed cache.

Symbols are prepared in a ThreadPoolExecutor registered with the SignalHandler. The stop flag is
checked before each submission and inside each task between its stages (hash, load, compute,
write), so a Ctrl-C cancels what has not started, lets running tasks stop at their next stage
boundary, and commits to the manifest everything that finished. The next run then computes only
what is missing.
"""

from __future__ import annotations

import hashlib
import sys
import time
import warnings
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import TextIO

import numpy as np

from .. import faults
from ..config import DataConfig, FeatureConfig
from ..errors import DataError, DataErrors
from ..progress import Progress
from ..shutdown import SignalHandler
from .cache import FeatureCache, cache_key
from .features import compute_features, warmup_bars
from .sources import Source, discover_files, synthetic_sources


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


class _Stopped(Exception):
    """Raised inside a task at a stage boundary when a stop was requested."""


def resolve_sources(cfg: DataConfig) -> list[Source]:
    """The files of ``cfg.data_dir``, or the built-in synthetic market when it is None."""
    if cfg.data_dir is None:
        return synthetic_sources(cfg.symbols, cfg.bars, cfg.data_seed)
    return discover_files(cfg.data_dir)


def prepare(sources: list[Source], features: FeatureConfig, cache: FeatureCache, *,
            handler: SignalHandler | None = None, workers: int = 2, skip_bad_files: bool = False,
            use_adj_close: bool = False, stream: TextIO | None = None,
            show_progress: bool = True) -> PreparedData:
    """Prepare every source's features through ``cache`` with ``workers`` threads.

    Raises :class:`DataErrors` listing every bad file (unless ``skip_bad_files``); good entries
    computed before that are still committed. On a stop request returns with ``interrupted=True``
    after committing everything that completed.
    """
    handler = handler or SignalHandler()
    stream = stream or sys.stderr
    names = list(features.features)
    warmup = warmup_bars(names)
    min_rows = warmup + features.window + features.horizon
    result = PreparedData(feature_names=names, total_sources=len(sources))
    order = {s.symbol: i for i, s in enumerate(sources)}
    done: dict[str, SymbolData] = {}
    errors: list[DataError] = []
    start = time.perf_counter()

    def cached(src: Source, identity: str) -> tuple[str, SymbolData | None]:
        key = cache_key(identity, names, features.horizon)
        arrays = cache.get(key)
        if arrays is None:
            return key, None
        return key, SymbolData(src.symbol, key, arrays["features"], arrays["label"], arrays["time"])

    def task(src: Source) -> tuple[SymbolData, bool]:
        def checkpoint() -> None:
            if handler.should_stop:
                raise _Stopped
        checkpoint()
        key, hit = cached(src, cache.input_identity(src))
        if hit is not None:
            return hit, True
        checkpoint()
        bars = src.load(use_adj_close=use_adj_close)
        if len(bars) < min_rows:
            raise DataError(src.path or src.symbol,
                            f"only {len(bars)} rows (expected at least {min_rows}: {warmup} indicator "
                            f"warm-up + window {features.window} + horizon {features.horizon})")
        checkpoint()
        fs = compute_features(bars, names, features.horizon)
        checkpoint()
        arrays = cache.put(key, src.symbol, fs)
        return SymbolData(src.symbol, key, arrays["features"], arrays["label"], arrays["time"]), False

    executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="prepare")
    handler.register_executor(executor)
    progress = Progress(len(sources), "prepare", unit="sym", stream=stream, enabled=show_progress)
    running: dict[Future, Source] = {}
    bars_done = 0
    last_commit = time.monotonic()
    try:
        # Fast path in this thread: inputs whose identity is known without hashing and whose entry
        # is cached only need their arrays mapped. Handing them to the pool would cost more in
        # thread hand-offs than the work itself (a warm start would be several times slower).
        pending: deque[Source] = deque()
        for src in sources:
            if handler.should_stop:
                break
            identity = cache.known_identity(src)
            hit = cached(src, identity)[1] if identity is not None else None
            if hit is None:
                pending.append(src)
                continue
            done[src.symbol] = hit
            result.hits += 1
            bars_done += len(hit.label)
            progress.update(1)
        while pending or running:
            # Keep at most 2 x workers tasks queued: a stop then has little to cancel, and the
            # flag is checked before every submission.
            while pending and len(running) < 2 * workers and not handler.should_stop:
                src = pending.popleft()
                running[handler.register_future(executor.submit(task, src))] = src
            if handler.should_stop:
                pending.clear()
            # A future cancelled before it started (by the stop request or the executor's
            # shutdown) stays in state CANCELLED, which wait() never counts as done: drop those
            # here, or a stop with queued tasks would spin this loop forever.
            running = {f: s for f, s in running.items() if not f.cancelled()}
            if not running:
                break
            finished, _ = wait(running, timeout=0.2, return_when=FIRST_COMPLETED)
            for fut in finished:
                src = running.pop(fut)
                if fut.cancelled():
                    continue
                exc = fut.exception()
                if isinstance(exc, _Stopped):
                    continue
                if isinstance(exc, DataError):
                    errors.append(exc)
                    if skip_bad_files:
                        warnings.warn(f"skipping bad file: {exc}", stacklevel=2)
                    progress.update(1)
                    continue
                if exc is not None:
                    raise exc
                sd, hit = fut.result()
                done[src.symbol] = sd
                result.hits += hit
                result.misses += not hit
                faults.point("prepare_symbol", len(done))
                bars_done += len(sd.label)  # a running total: summing over done is O(symbols^2)
                progress.update(1, bars_per_s=round(bars_done / max(progress.elapsed, 1e-9)))
            # Commit now and then, not only at the end: a kill -9 (or a second Ctrl-C) then loses
            # at most the last few seconds of preparation.
            if cache.pending and time.monotonic() - last_commit >= COMMIT_EVERY_S:
                cache.commit()
                last_commit = time.monotonic()
                faults.point("prepare_commit", len(done))
    finally:
        # Let running tasks reach a stage boundary (they never leave a partial file), then commit
        # what completed - also on Ctrl-C and on errors: finished work is never thrown away.
        executor.shutdown(wait=True, cancel_futures=True)
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
