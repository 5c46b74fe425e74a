"""Walk-forward folds: K contiguous test periods at the end of the data's calendar, each preceded
by its training period, as the date cuts of ordinary runs.

    folds = plan_folds(symbols, window=32, horizon=1, folds=4, test_bars=250)
    cfg_k = cfg.replace(**folds[k].cuts())       # train_start, val_start, test_start, test_end

A fold is nothing but date cuts (:mod:`..data.windows`): its run trains from ``train_start`` (a
rolling window; expanding: from the first full window), validates on the last share of the windows
before ``test_start`` (``val_frac / (train_frac + val_frac)``, as ``--test-start`` alone does), and
tests the windows that end in ``[test_start, test_end)``; the purge gaps of ``horizon`` bars before
validation and test stay. The test periods tile the end of the calendar, so every window there is
tested by exactly one fold, and no fold trains on a label from its own test period or later.

The calendar is the union of every symbol's window end bars that have a label (one panel sharing
dates). Fold boundaries are placed on it: the last ``folds * test_bars`` end times, or periods of
``test_period`` (``90d``, ``6w``, ``3m``, ``1q``, ``1y``) counted back from the last one.
"""

from __future__ import annotations

import calendar
import datetime
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..cutoffs import cut_time_text
from ..data.prepare import SymbolData
from ..errors import UserError

WINDOW_KINDS = ("expanding", "rolling")
_PERIOD = re.compile(r"(?P<n>[1-9]\d{0,4})(?P<unit>[dwmqy])")
_UNIT_WORDS = {"d": "day", "w": "week", "m": "month", "q": "quarter", "y": "year"}
_EPOCH = datetime.datetime(1970, 1, 1)


@dataclass(frozen=True)
class Period:
    """A calendar length: ``n`` days, weeks, months, quarters or years."""

    n: int
    unit: str

    def __str__(self) -> str:
        return f"{self.n}{self.unit}"

    def before(self, ns: int, times: int = 1) -> int:
        """The time ``times`` periods before ``ns`` (months clamp to the month's last day)."""
        t = _EPOCH + datetime.timedelta(microseconds=ns // 1000)
        k = self.n * times
        if self.unit in "dw":
            t -= datetime.timedelta(days=k * (7 if self.unit == "w" else 1))
        else:
            months = k * {"m": 1, "q": 3, "y": 12}[self.unit]
            y, m = divmod(t.year * 12 + (t.month - 1) - months, 12)
            if y < 1678:
                return np.iinfo(np.int64).min
            t = t.replace(year=y, month=m + 1, day=min(t.day, calendar.monthrange(y, m + 1)[1]))
        delta = t - _EPOCH
        return (delta.days * 86_400 + delta.seconds) * 10**9 + delta.microseconds * 1000 + ns % 1000


def parse_period(text: str, flag: str) -> Period:
    """``90d``, ``6w``, ``3m``, ``1q``, ``1y``; a UserError naming ``flag`` otherwise."""
    m = _PERIOD.fullmatch(text.strip().lower()) if isinstance(text, str) else None
    if m is None:
        raise UserError(f"{flag} {text!r}: expected a whole number and a unit: d (days), w (weeks), m "
                        f"(months), q (quarters) or y (years), such as 90d, 6m or 1y")
    return Period(int(m["n"]), m["unit"])


@dataclass(frozen=True)
class Fold:
    """One fold's date cuts (canonical text; ``None``: not bounded on that side)."""

    index: int                 # 0 is the oldest test period
    train_start: str | None    # rolling windows only
    test_start: str
    test_end: str | None       # None: the last fold, to the last bar with a label

    def cuts(self) -> dict[str, str | None]:
        """The configuration keys that make an ordinary run this fold."""
        return {"train_start": self.train_start, "val_start": None, "test_start": self.test_start,
                "test_end": self.test_end}


def end_calendar(symbols: Sequence[SymbolData], window: int, horizon: int) -> np.ndarray:
    """Sorted distinct times of every symbol's window end bars that have a label."""
    pieces = [np.asarray(s.time[window - 1: len(s.time) - horizon]) for s in symbols]
    pieces = [p for p in pieces if len(p)]
    return np.unique(np.concatenate(pieces)) if pieces else np.zeros(0, np.int64)


def plan_folds(symbols: Sequence[SymbolData], *, window: int, horizon: int, folds: int,
               test_bars: int | None = None, test_period: Period | None = None,
               kind: str = "expanding", train_bars: int | None = None,
               train_period: Period | None = None) -> list[Fold]:
    """The folds, oldest first; a UserError naming the flags when the data cannot hold them
    (each fold needs a test period, and training and validation end bars before it)."""
    if kind not in WINDOW_KINDS:
        raise UserError(f"--window-kind {kind!r}: expected {' or '.join(WINDOW_KINDS)}")
    if (test_bars is None) == (test_period is None):
        raise UserError("give one of --test-bars N and --test-period P (such as 1y) for the length of each "
                        "fold's test period")
    if kind == "rolling" and (train_bars is None) == (train_period is None):
        raise UserError("--window-kind rolling needs one of --train-bars N and --train-period P for the "
                        "length of each fold's training period")
    if kind == "expanding" and (train_bars is not None or train_period is not None):
        raise UserError("--train-bars and --train-period set a rolling window's length; add --window-kind "
                        "rolling, or leave them out (expanding: each fold trains on everything before it)")
    if not 1 <= folds <= 1000:
        raise UserError(f"--folds {folds}: expected 1 to 1,000")
    cal = end_calendar(symbols, window, horizon)
    if test_bars is not None:
        if test_bars < 1:
            raise UserError(f"--test-bars {test_bars}: expected a positive number of bars")
        need = folds * test_bars
        if need >= len(cal):
            raise UserError(f"--folds {folds} x --test-bars {test_bars:,} = {need:,} test bars, but the "
                            f"data's calendar has {len(cal):,} window end bars with a label (window "
                            f"{window}, horizon {horizon}), and training needs some before them; use "
                            f"fewer or shorter folds")
        starts = [len(cal) - (folds - k) * test_bars for k in range(folds)]
    else:
        assert test_period is not None
        last = int(cal[-1]) if len(cal) else 0
        starts = [int(np.searchsorted(cal, test_period.before(last, folds - k), side="right"))
                  for k in range(folds)]
        if len(cal) == 0 or starts[0] <= 0 or len(set(starts)) < folds:
            raise UserError(f"--folds {folds} x --test-period {test_period} does not fit the data's calendar "
                            f"({_span(cal)}): each fold needs its own test bars and training before the "
                            f"first; use fewer or shorter folds")
    out = []
    for k, i in enumerate(starts):
        begin = None
        if kind == "rolling":
            if train_bars is not None:
                if train_bars < 2 or i - train_bars < 0:
                    raise UserError(f"--train-bars {train_bars:,}: fold {k + 1}'s training period would "
                                    f"start before the data's first window end bar ({i:,} of them come "
                                    f"before its test period); use fewer bars or fewer folds")
                begin = cut_time_text(int(cal[i - train_bars]))
            else:
                assert train_period is not None
                t = train_period.before(int(cal[i]))
                if t < int(cal[0]):
                    raise UserError(f"--train-period {train_period}: fold {k + 1}'s training period would "
                                    f"start before the data's first window end bar ({_span(cal)}); use a "
                                    f"shorter period or fewer folds")
                begin = cut_time_text(t)
        end = cut_time_text(int(cal[starts[k + 1]])) if k + 1 < folds else None
        out.append(Fold(k, begin, cut_time_text(int(cal[i])), end))
    return out


def describe_period(p: Period) -> str:
    """``1 year``, ``6 months``."""
    word = _UNIT_WORDS[p.unit]
    return f"{p.n} {word}{'s' if p.n != 1 else ''}"


def _span(cal: np.ndarray) -> str:
    if len(cal) == 0:
        return "no window end bars with a label"
    return f"{cut_time_text(int(cal[0]))[:10]} to {cut_time_text(int(cal[-1]))[:10]}, {len(cal):,} end bars"
