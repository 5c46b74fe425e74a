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
``test_period`` (``90d``, ``6w``, ``3m``, ``1q``, ``1y``) counted back from the last one. For files
covering different years (a symbol without a test window in some fold on that calendar) they are
placed on each symbol's own end bars instead, and the cuts are written per symbol
(``A=2012-01-03,B=2017-06-01``), as single runs split such files per symbol.
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


CALENDARS = ("auto", "common", "per-symbol")


@dataclass(frozen=True)
class FoldPlan:
    """The folds and which calendar placed them (with, for ``auto``, why)."""

    folds: list[Fold]
    calendar: str      # "common" or "per-symbol"
    reason: str
    warning: str | None = None  # per-symbol folds whose test periods start on different dates


def plan_folds(symbols: Sequence[SymbolData], *, window: int, horizon: int, folds: int,
               test_bars: int | None = None, test_period: Period | None = None,
               kind: str = "expanding", train_bars: int | None = None,
               train_period: Period | None = None, calendar: str = "common") -> list[Fold]:
    """The folds, oldest first (see :func:`plan`, whose ``folds`` this returns)."""
    return plan(symbols, window=window, horizon=horizon, folds=folds, test_bars=test_bars,
                test_period=test_period, kind=kind, train_bars=train_bars, train_period=train_period,
                calendar=calendar).folds


def plan(symbols: Sequence[SymbolData], *, window: int, horizon: int, folds: int,
         test_bars: int | None = None, test_period: Period | None = None, kind: str = "expanding",
         train_bars: int | None = None, train_period: Period | None = None,
         calendar: str = "auto") -> FoldPlan:
    """The folds, oldest first; a UserError naming the flags when the data cannot hold them
    (each fold needs a test period, and training and validation end bars before it).

    ``calendar``: ``common`` places the fold boundaries on the union of every symbol's end bars
    (one panel sharing dates: every fold tests the same dates of every symbol); ``per-symbol`` on
    each symbol's own bars (files covering different years: each symbol's last periods are its
    test periods, the cuts are written per symbol); ``auto`` (default) keeps the common calendar
    unless a symbol would have no test window in some fold under it."""
    if kind not in WINDOW_KINDS:
        raise UserError(f"--window-kind {kind!r}: expected {' or '.join(WINDOW_KINDS)}")
    if calendar not in CALENDARS:
        raise UserError(f"--fold-calendar {calendar!r}: expected one of {', '.join(CALENDARS)}")
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
    if test_bars is not None and test_bars < 1:
        raise UserError(f"--test-bars {test_bars}: expected a positive number of bars")

    def on(cal: np.ndarray, whose: str) -> list[tuple[int | None, int, int | None]]:
        return _place(cal, whose, folds, test_bars, test_period, kind, train_bars, train_period)

    cal = end_calendar(symbols, window, horizon)
    own = {s.symbol: end_calendar([s], window, horizon) for s in symbols}
    own = {sym: c for sym, c in own.items() if len(c)}
    if calendar != "per-symbol":
        common = on(cal, "the data's calendar")
        starved = _starved(own, common)
        if calendar == "common" or starved is None or len(own) < 2:
            reason = ("--fold-calendar common" if calendar == "common" else
                      "auto: every symbol has test windows in every fold on the common calendar")
            untested = (f"on the common calendar {starved}: that fold's figures leave it out "
                        f"(--fold-calendar per-symbol tests each symbol on its own last bars)"
                        if starved is not None else None)
            return FoldPlan([Fold(k, _text(b), _text(t), _text(e)) for k, (b, t, e) in enumerate(common)],
                            "common", reason, untested)
        reason = f"auto: on the common calendar {starved}, so each symbol's folds are placed on its own bars"
    else:
        reason = "--fold-calendar per-symbol"
    placed = {sym: on(c, f"{sym}'s calendar") for sym, c in own.items()}
    # A symbol too short for any window gets the latest cut (it has no windows either way): every
    # symbol of the data must have a date, or the run refuses the cuts.
    rest = len(own) < len({s.symbol for s in symbols})

    def joined(k: int, part: int) -> str | None:
        cuts = [(sym, p[k][part]) for sym, p in placed.items()]
        if all(t is None for _, t in cuts):
            return None
        text = ",".join(f"{sym}={_text(t)}" for sym, t in cuts if t is not None)
        return text + (f",*={_text(max(t for _, t in cuts if t is not None))}" if rest else "")

    out = []
    for k in range(folds):
        start = joined(k, 1)
        assert start is not None
        out.append(Fold(k, joined(k, 0), start, joined(k, 2)))
    return FoldPlan(out, "per-symbol", reason, _look_ahead(placed))


def _look_ahead(placed: dict[str, list[tuple[int | None, int, int | None]]]) -> str | None:
    """Per-symbol folds train some symbols on bars after another symbol's test period began: said
    plainly (the model is one model over every symbol, so their later bars reach its predictions)."""
    worst = None
    for k in range(len(next(iter(placed.values()), []))):
        starts = {sym: p[k][1] for sym, p in placed.items()}
        early = min(starts, key=lambda sym: starts[sym])
        late = [sym for sym, t in starts.items() if t > starts[early]]
        if late:
            gap = max(starts[sym] for sym in late) - starts[early]
            if worst is None or gap > worst[0]:
                worst = (gap, k, early, late, max(starts[sym] for sym in late), starts[early])
    if worst is None:
        return None
    _, k, early, late, until, since = worst
    names = ", ".join(late[:4]) + (f" +{len(late) - 4}" if len(late) > 4 else "")
    return (f"with folds per symbol, fold {k} tests {early} from {_text(since)[:10]} while {names} train "
            f"up to {_text(until)[:10]}: one model over every symbol learns from bars after {early}'s test "
            f"dates (cross-symbol look-ahead, as a single run split per symbol has). --fold-calendar "
            f"common tests every symbol on the same dates")


def _text(ns: int | None) -> str | None:
    return None if ns is None else cut_time_text(int(ns))


def _starved(own: dict[str, np.ndarray], placed: list[tuple[int | None, int, int | None]]) -> str | None:
    """The first symbol (and fold) without a test window under common-calendar folds, or None."""
    for sym, c in own.items():
        for k, (_, start, end) in enumerate(placed):
            hi = np.iinfo(np.int64).max if end is None else end
            if not np.any((c >= start) & (c < hi)):
                return f"{sym} would have no test window in fold {k} ({_text(start)[:10]} ..)"
    return None


def _place(cal: np.ndarray, whose: str, folds: int, test_bars: int | None, test_period: Period | None,
           kind: str, train_bars: int | None, train_period: Period | None
           ) -> list[tuple[int | None, int, int | None]]:
    """(train start or None, test start, test end or None) in ns of each fold on ``cal``."""
    if test_bars is not None:
        need = folds * test_bars
        if need >= len(cal):
            raise UserError(f"--folds {folds} x --test-bars {test_bars:,} = {need:,} test bars, but "
                            f"{whose} has {len(cal):,} window end bars with a label, and training needs "
                            f"some before them; use fewer or shorter folds")
        starts = [len(cal) - (folds - k) * test_bars for k in range(folds)]
    else:
        assert test_period is not None
        last = int(cal[-1]) if len(cal) else 0
        starts = [int(np.searchsorted(cal, test_period.before(last, folds - k), side="right"))
                  for k in range(folds)]
        if len(cal) == 0 or starts[0] <= 0 or len(set(starts)) < folds:
            raise UserError(f"--folds {folds} x --test-period {test_period} does not fit {whose} "
                            f"({_span(cal)}): each fold needs its own test bars and training before the "
                            f"first; use fewer or shorter folds")
    out: list[tuple[int | None, int, int | None]] = []
    for k, i in enumerate(starts):
        begin = None
        if kind == "rolling":
            if train_bars is not None:
                if train_bars < 2 or i - train_bars < 0:
                    raise UserError(f"--train-bars {train_bars:,}: fold {k + 1}'s training period would "
                                    f"start before the first window end bar of {whose} ({i:,} of them "
                                    f"come before its test period); use fewer bars or fewer folds")
                begin = int(cal[i - train_bars])
            else:
                assert train_period is not None
                t = train_period.before(int(cal[i]))
                if t < int(cal[0]):
                    raise UserError(f"--train-period {train_period}: fold {k + 1}'s training period would "
                                    f"start before the first window end bar of {whose} ({_span(cal)}); use "
                                    f"a shorter period or fewer folds")
                begin = t
        end = int(cal[starts[k + 1]]) if k + 1 < folds else None
        out.append((begin, int(cal[i]), end))
    return out


def describe_period(p: Period) -> str:
    """``1 year``, ``6 months``."""
    word = _UNIT_WORDS[p.unit]
    return f"{p.n} {word}{'s' if p.n != 1 else ''}"


def _span(cal: np.ndarray) -> str:
    if len(cal) == 0:
        return "no window end bars with a label"
    return f"{cut_time_text(int(cal[0]))[:10]} to {cut_time_text(int(cal[-1]))[:10]}, {len(cal):,} end bars"
