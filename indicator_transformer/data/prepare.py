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
from collections.abc import Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, TextIO

import numpy as np

from .. import faults
from ..config import DataConfig, FeatureConfig
from ..errors import DataError, DataErrors
from ..progress import Progress
from ..shutdown import SignalHandler
from .cache import FeatureCache, cache_key
from .features import compute_features, required_columns, warmup_bars
from .panel import data_file_sources
from .sources import OHLCV, DataNote, Source, discover_files, synthetic_sources


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
    custom = features.custom_features  # declared TA-Lib features the names may refer to
    warmup = warmup_bars(names, custom)
    min_rows = warmup + features.window + features.horizon
    result = PreparedData(feature_names=names, total_sources=len(sources))
    order = {s.symbol: i for i, s in enumerate(sources)}
    done: dict[str, SymbolData] = {}
    errors: list[DataError] = []
    start = time.perf_counter()

    settings = feature_settings(features, use_adj_close)
    required = required_columns(names, custom)

    def check_rows(src: Source, rows: int) -> None:
        # The same check for a hit as for a miss: a cached entry prepared for a shorter window
        # must not slip through when the window grows.
        if rows < min_rows:
            raise DataError(src.where,
                            f"only {rows} rows (expected at least {min_rows}: {warmup} indicator "
                            f"warm-up + window {features.window} + horizon {features.horizon})")

    def cached(src: Source, identity: str) -> SymbolData | None:
        key = cache_key(identity, src.symbol, settings)
        arrays = cache.get(key)
        if arrays is None:
            return None
        rows = cache.input_rows(key)
        check_rows(src, len(arrays["label"]) + warmup if rows is None else rows)
        return SymbolData(src.symbol, key, arrays["features"], arrays["label"], arrays["time"])

    def task(src: Source) -> tuple[SymbolData, bool]:
        def checkpoint() -> None:
            if handler.should_stop:
                raise _Stopped
        checkpoint()
        # Read once: the key comes from the hash of exactly the bytes that are parsed, so a file
        # that changes on disk meanwhile can never put its features under another content's key.
        raw = src.read()
        hit = cached(src, raw.sha256)
        if hit is not None:
            cache.remember_input(raw)
            return hit, True
        checkpoint()
        bars = src.parse(raw, use_adj_close=use_adj_close, required=required)
        check_rows(src, len(bars))
        warn_flat_volume(src, bars, names, custom)
        checkpoint()
        fs = compute_features(bars, names, features.horizon, custom)
        checkpoint()
        key = cache_key(raw.sha256, src.symbol, settings)
        arrays = cache.put(key, src.symbol, fs, input_rows=len(bars))
        cache.remember_input(raw)  # only for inputs that were used: nothing is kept of a bad file
        return SymbolData(src.symbol, key, arrays["features"], arrays["label"], arrays["time"]), False

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
            try:
                identity = known_identity(cache, src)
                hit = cached(src, identity) if identity is not None else None
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
                    failed(exc)
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
