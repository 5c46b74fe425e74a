"""Bar frequency of each symbol, read from its timestamps, and a warning when a folder mixes them.

A horizon of h bars is h days on daily files and h hours on hourly ones: a folder mixing the two
trains one model on targets that mean different things, and annualising a strategy needs the bars
per year. The frequency is the median time step, so weekends, holidays and session gaps do not
count; it is rounded to the nearest usual bar size for display.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .prepare import SymbolData

SECOND = 10**9
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
DAY = 24 * HOUR
# Usual bar sizes, for naming a median step (each within a factor of about 1.5 of its neighbours).
NAMED_STEPS = [(SECOND, "1s"), (5 * SECOND, "5s"), (15 * SECOND, "15s"), (30 * SECOND, "30s"),
               (MINUTE, "1min"), (5 * MINUTE, "5min"), (15 * MINUTE, "15min"), (30 * MINUTE, "30min"),
               (HOUR, "1h"), (2 * HOUR, "2h"), (4 * HOUR, "4h"), (DAY, "1d"), (7 * DAY, "1w"),
               (30 * DAY, "1mo"), (91 * DAY, "3mo"), (365 * DAY, "1y")]


def median_step(times_ns: np.ndarray) -> int | None:
    """The median time between consecutive bars, in nanoseconds (None with fewer than 2 bars)."""
    t = np.asarray(times_ns, np.int64)
    if len(t) < 2:
        return None
    return int(np.median(np.diff(t)))


def step_name(step_ns: int | None) -> str:
    """'1d', '1h', '5min'... the usual bar size nearest (in ratio) to ``step_ns``."""
    if step_ns is None or step_ns <= 0:
        return "?"
    ratios = [abs(np.log(step_ns / size)) for size, _ in NAMED_STEPS]
    best = int(np.argmin(ratios))
    if ratios[best] < np.log(1.25):
        return NAMED_STEPS[best][1]
    return f"{step_ns / MINUTE:.3g}min" if step_ns < DAY else f"{step_ns / DAY:.3g}d"


def frequencies(symbols: Sequence[SymbolData]) -> dict[str, list[str]]:
    """Bar size name -> the symbols with that median step, most common size first."""
    groups: dict[str, list[str]] = {}
    for s in symbols:
        groups.setdefault(step_name(median_step(s.time)), []).append(s.symbol)
    return dict(sorted(groups.items(), key=lambda kv: -len(kv[1])))


def describe(groups: dict[str, list[str]], limit: int = 4) -> str:
    """'1d (AAPL, SPY), 1h (EURUSD)'."""
    parts = []
    for name, syms in groups.items():
        shown = ", ".join(syms[:limit]) + (f" +{len(syms) - limit} more" if len(syms) > limit else "")
        parts.append(f"{name} ({shown})")
    return "; ".join(parts)


def mixed_warning(groups: dict[str, list[str]], horizon: int) -> str | None:
    """A warning when the symbols do not share one bar size, else None."""
    if len(groups) <= 1:
        return None
    return (f"the data mixes bar frequencies: {describe(groups)}. A horizon of {horizon} bar(s) "
            f"then means a different time span per symbol; per-symbol normalisation makes the "
            f"targets comparable in scale, but consider training one frequency at a time")
