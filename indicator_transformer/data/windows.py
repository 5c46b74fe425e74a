"""Time-ordered splits, train-only normalisation and lazily built windows.

A *sample* is (symbol s, end bar t): the input is features[s][t - L + 1 : t + 1] (shape (L, F)) and
the target is label[s][t], the forward return from t to t + h. Samples are never materialised:
each split stores, per symbol, one contiguous range of end bars, and a flat sample index is turned
into (s, t) with a binary search over the cumulative range lengths. Memory is O(symbols), and the
feature arrays stay memory-mapped from the cache.

Split policy (``--split``): ``global`` time cut-offs (the 70% / 85% quantiles of all sample end
times by default), so every symbol's validation data lies after every symbol's training data, right
for a panel sharing one calendar; ``per-symbol``, each symbol's own time-ordered cut, for files
covering different years; ``auto`` (default) keeps global cut-offs unless they starve a symbol of a
split. The last h samples before a cut are dropped, so no training label reaches into the
validation period (a gap of h bars); the same between validation and test.

Date cuts (``--val-start`` / ``--test-start``, config keys ``val_start`` / ``test_start``) replace
the fractions and the policy, for a test period fixed in the calendar (the same years for every
model compared) or per symbol for files covering different years: validation begins at the first
bar whose time is at or after val_start, test at the first at or after test_start, with the same
purge gap of h end bars before each cut. ``--train-start`` starts training at the first end bar at
or after it (a rolling window: the inputs may reach back before it, no label does), ``--test-end``
ends the test split before the first bar at or after it (a walk-forward fold's test period; its
last labels may reach into the next period, which is only tested, never trained on, in this
fold). ``--test-start`` alone takes validation from the windows
before it: the last val_frac / (train_frac + val_frac) of each symbol's. A date outside a symbol's
bars leaves the splits on that side empty for that symbol (a test date after its last bar: no
test windows of it; before its first full window: no training or validation windows).
:func:`split_dates` says which dates each symbol's splits cover.

Normalisation (``--normalise``) is fitted on training rows only: per symbol by default (each
symbol's own feature and label mean/std), or pooled over all symbols.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..config import DATE_KEYS, FeatureConfig
from ..cutoffs import ANY_SYMBOL, cut_for, parse_cuts
from .prepare import SymbolData

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class SplitIndex:
    """Per-symbol [start, stop) ranges of window end bars for one split."""

    starts: np.ndarray  # (S,) int64
    stops: np.ndarray   # (S,) int64

    @property
    def counts(self) -> np.ndarray:
        return np.maximum(self.stops - self.starts, 0)

    @property
    def offsets(self) -> np.ndarray:
        """Cumulative counts with a leading 0: sample i of symbol s is offsets[s] <= i < offsets[s+1]."""
        return np.concatenate([[0], np.cumsum(self.counts)])

    def __len__(self) -> int:
        return int(self.counts.sum())


# Under ``auto``, global cut-offs are kept when every symbol gets at least this share of the
# windows its split fractions would give it on its own (and at least one): a panel sharing one
# calendar passes easily; files covering different years do not.
AUTO_MIN_SHARE = 0.5


@dataclass(frozen=True)
class SplitChoice:
    """The splits, the policy that made them and, for ``auto``, why."""

    splits: dict[str, SplitIndex]
    policy: str          # "global", "per-symbol" or "dates"
    reason: str


def _valid_ranges(symbols: list[SymbolData], cfg: FeatureConfig) -> tuple[list[int], list[int]]:
    """Per symbol, [first, last) end bars with a full window behind and a known label ahead."""
    return [cfg.window - 1 for _ in symbols], [len(s.label) - cfg.horizon for s in symbols]


def _cut(f: int, a1: int, a2: int, la: int, h: int) -> dict[str, tuple[int, int]]:
    """Train/val/test end-bar ranges given the first bars after the two cuts; the last h end bars
    before a cut are dropped, so no label reaches into the next split (the gap rule)."""
    a1 = max(a1, f)
    a2 = max(a2, a1)
    return {"train": (f, min(a1 - h, la)), "val": (a1, min(a2 - h, la)), "test": (a2, la)}


def _assemble(per_symbol: list[dict[str, tuple[int, int]]]) -> dict[str, SplitIndex]:
    return {k: SplitIndex(np.asarray([r[k][0] for r in per_symbol], np.int64),
                          np.asarray([max(r[k][1], r[k][0]) for r in per_symbol], np.int64))
            for k in SPLITS}


def global_splits(symbols: list[SymbolData], cfg: FeatureConfig) -> dict[str, SplitIndex]:
    """One pair of time cut-offs for every symbol (quantiles of all valid end times), so every
    symbol's validation data lies after every symbol's training data."""
    firsts, lasts = _valid_ranges(symbols, cfg)
    pieces = [np.asarray(s.time[f:la]) for s, f, la in zip(symbols, firsts, lasts, strict=True) if la > f]
    if not pieces:  # no symbol is long enough for one window and its label
        return _assemble([_cut(0, 0, 0, 0, cfg.horizon) for _ in symbols])
    all_times = np.concatenate(pieces)
    cut1 = np.quantile(all_times, cfg.train_frac, method="lower")
    cut2 = np.quantile(all_times, cfg.train_frac + cfg.val_frac, method="lower")
    ranges = []
    for s, f, la in zip(symbols, firsts, lasts, strict=True):
        t = np.asarray(s.time)
        ranges.append(_cut(f, int(np.searchsorted(t, cut1, side="right")),
                           int(np.searchsorted(t, cut2, side="right")), la, cfg.horizon))
    return _assemble(ranges)


def per_symbol_splits(symbols: list[SymbolData], cfg: FeatureConfig) -> dict[str, SplitIndex]:
    """Each symbol's own time-ordered train/val/test over its valid end bars, with the same
    fractions and gap rule."""
    firsts, lasts = _valid_ranges(symbols, cfg)
    ranges = []
    for f, la in zip(firsts, lasts, strict=True):
        n = max(la - f, 0)
        ranges.append(_cut(f, f + int(n * cfg.train_frac), f + int(n * (cfg.train_frac + cfg.val_frac)),
                           max(la, f), cfg.horizon))
    return _assemble(ranges)


def date_splits(symbols: list[SymbolData], cfg: FeatureConfig) -> dict[str, SplitIndex]:
    """Cuts at dates (``cfg.val_start`` / ``cfg.test_start``, per symbol where given so) on the
    symbols' real time stamps; see the module docstring. A symbol without a date of its own and no
    ``*`` default is a ConfigError naming the key and the symbol: a guess would put it in the wrong
    split (:func:`choose_splits` also names entries for symbols that are not in the data)."""
    test = parse_cuts(cfg.test_start, "test_start")
    val = parse_cuts(cfg.val_start, "val_start") if cfg.val_start is not None else None
    first = _optional_cuts(cfg, "train_start")
    end = _optional_cuts(cfg, "test_end")
    firsts, lasts = _valid_ranges(symbols, cfg)
    share = cfg.train_frac / (cfg.train_frac + cfg.val_frac)
    ranges = []
    for s, f, la in zip(symbols, firsts, lasts, strict=True):
        t = np.asarray(s.time)

        def at(cuts: dict[str, int], key: str, sym: str = s.symbol, times: np.ndarray = t) -> int:
            return int(np.searchsorted(times, cut_for(cuts, sym, key), side="left"))

        if first is not None:  # a rolling training window: end bars from the first at train_start
            f = max(f, at(first, "train_start"))
        if end is not None:  # the test windows end before test_end (the next fold's period)
            la = min(la, at(end, "test_end"))
        a2 = at(test, "test_start")
        if val is not None:
            a1 = at(val, "val_start")
        else:  # the last val share of the valid end bars before the test cut
            a1 = f + int(max(min(a2, la) - f, 0) * share)
        ranges.append(_cut(f, a1, a2, max(la, f), cfg.horizon))
    return _assemble(ranges)


def _optional_cuts(cfg: FeatureConfig, key: str) -> dict[str, int] | None:
    text = getattr(cfg, key, None)
    return parse_cuts(text, key) if text is not None else None


def make_splits(symbols: list[SymbolData], cfg: FeatureConfig) -> dict[str, SplitIndex]:
    """Train/val/test end-bar ranges per symbol under ``cfg.split`` (see :func:`choose_splits`)."""
    return choose_splits(symbols, cfg).splits


def choose_splits(symbols: list[SymbolData], cfg: FeatureConfig) -> SplitChoice:
    """Apply the split policy: date cuts when ``test_start`` is set (policy "dates"), else ``split``.
    ``auto`` keeps global cut-offs when every symbol has enough windows
    in each split under them, and otherwise splits each symbol on its own, saying which symbol
    decided it."""
    if getattr(cfg, "test_start", None) is not None:  # dates override the fractions and the policy
        return SplitChoice(date_splits(symbols, cfg), "dates",
                           _date_cuts_text(cfg, "--") + _stray_note(symbols, cfg))
    policy = getattr(cfg, "split", "global")
    if policy == "global":
        return SplitChoice(global_splits(symbols, cfg), "global", "--split global")
    if policy == "per-symbol":
        return SplitChoice(per_symbol_splits(symbols, cfg), "per-symbol", "--split per-symbol")
    glob = global_splits(symbols, cfg)
    short = _short_under_global(symbols, glob, cfg)
    if short is None:
        return SplitChoice(glob, "global", "auto: every symbol has enough windows in each split under "
                                           "global time cut-offs")
    return SplitChoice(per_symbol_splits(symbols, cfg), "per-symbol",
                       f"auto: global time cut-offs would leave {short}, so each symbol is split on "
                       f"its own")


def _short_under_global(symbols: list[SymbolData], glob: dict[str, SplitIndex], cfg: FeatureConfig
                        ) -> str | None:
    """The first symbol (with what it lacks) that global cut-offs starve, or None."""
    firsts, lasts = _valid_ranges(symbols, cfg)
    fracs = {"train": cfg.train_frac, "val": cfg.val_frac, "test": 1.0 - cfg.train_frac - cfg.val_frac}
    for i, (s, f, la) in enumerate(zip(symbols, firsts, lasts, strict=True)):
        n = la - f
        if n <= 0:
            continue  # too short for any window: no policy helps it
        for k in SPLITS:
            got = int(glob[k].counts[i])
            expected = n * fracs[k]
            if expected >= 2 and got < max(1.0, AUTO_MIN_SHARE * expected):
                return f"{s.symbol} with {got:,} {k} windows (about {int(expected):,} of its own)"
    return None


def require_windows(splits: dict[str, SplitIndex], cfg: FeatureConfig) -> None:
    """Refuse splits a run cannot report on: no training or no test windows (an empty validation
    split is allowed: the run then has no validation loss, and says so). The message names what
    made the cuts, the dates or the fractions, since that is what the user has to change."""
    from ..errors import UserError

    for k in ("train", "test"):
        if len(splits[k]) == 0 and getattr(cfg, "test_start", None) is not None:
            raise UserError(
                f"the {k} split has no windows ({_date_cuts_text(cfg, '')}; window {cfg.window}, "
                f"horizon {cfg.horizon}): "
                + ("no symbol has a full window and its label before its cut" if k == "train"
                   else "no symbol has a full window at or after its test date")
                + "; choose dates inside the data")
        if len(splits[k]) == 0:
            raise UserError(
                f"the {k} split has no windows (train_frac {cfg.train_frac}, val_frac {cfg.val_frac}, "
                f"window {cfg.window}, horizon {cfg.horizon}: each split loses the last {cfg.horizon} "
                f"window(s) before the next one); use more bars or other fractions")


def _date_cuts_text(cfg: FeatureConfig, prefix: str) -> str:
    """``--val-start X --test-start Y`` (prefix "--") or ``val_start X, test_start Y`` (prefix "")."""
    parts = [(k, getattr(cfg, k, None)) for k in DATE_KEYS if getattr(cfg, k, None) is not None]
    if prefix:
        return " ".join(f"{prefix}{k.replace('_', '-')} {v}" for k, v in parts)
    return ", ".join(f"{k} {v}" for k, v in parts)


def _stray_note(symbols: list[SymbolData], cfg: FeatureConfig) -> str:
    """``"; note: ..."`` naming date entries for symbols that are not in the data, else "". Not an
    error (evaluating a checkpoint on other data meets it legitimately), but never silent: a typo
    (GOGL for GOOG) leaves that symbol on the ``*`` default."""
    names = {s.symbol for s in symbols}
    notes = []
    for key in DATE_KEYS:
        text = getattr(cfg, key, None)
        stray = sorted(set(parse_cuts(text, key)) - names - {ANY_SYMBOL}) if text is not None else []
        if stray:
            notes.append(f"{key} names symbol(s) not in the data: {_names(stray)}")
    return "".join(f"; note: {n}" for n in notes)


def split_dates(symbols: list[SymbolData], splits: dict[str, SplitIndex]) -> dict[str, dict[str, Any]]:
    """Per symbol name, per split: ``{"from": ISO time of its first window end bar, "to": of its last,
    "windows": n}``, or None when the symbol has no window in that split. Times are UTC with
    seconds precision and no zone suffix (``2016-01-04T00:00:00``). JSON-able: summary.json records
    it and ``predict`` tags rows with it, so a row can say which split its bar belonged to."""
    out: dict[str, dict[str, Any]] = {}
    for i, s in enumerate(symbols):
        row: dict[str, Any] = {}
        for k in SPLITS:
            lo, hi = int(splits[k].starts[i]), int(splits[k].stops[i])
            row[k] = None if hi <= lo else {"from": _second(int(s.time[lo])),
                                            "to": _second(int(s.time[hi - 1])), "windows": hi - lo}
        out[s.symbol] = row
    return out


def _second(ns: int) -> str:
    return str(np.datetime64(ns, "ns").astype("datetime64[s]"))


def split_summary(symbols: list[SymbolData], splits: dict[str, SplitIndex]) -> dict[str, Any]:
    """Per split: how many symbols, first and last end-bar date, windows; and the warnings
    (symbols without training windows, splits holding different symbols). JSON-able."""
    out: dict[str, Any] = {}
    holders = {}
    for k in SPLITS:
        sp = splits[k]
        have = [i for i in range(len(symbols)) if sp.counts[i] > 0]
        holders[k] = {symbols[i].symbol for i in have}
        first = min((int(symbols[i].time[sp.starts[i]]) for i in have), default=None)
        last = max((int(symbols[i].time[sp.stops[i] - 1]) for i in have), default=None)
        out[k] = {"symbols": len(have), "from": _day(first) if first is not None else None,
                  "to": _day(last) if last is not None else None, "windows": len(sp)}
    warnings = []
    no_train = [s.symbol for s in symbols if s.symbol not in holders["train"]]
    if no_train:
        warnings.append(f"{len(no_train)} symbol(s) have no training windows: {_names(no_train)}")
    for k in ("val", "test"):
        only = sorted(holders[k] - holders["train"])
        if only:
            warnings.append(f"the {k} split holds symbol(s) the model never trains on: {_names(only)}")
        absent = sorted(holders["train"] - holders[k])
        if absent:
            warnings.append(f"the {k} split holds {len(holders[k])} of the {len(holders['train'])} "
                            f"training symbols; it says nothing about {_names(absent)}")
    flat = flat_label_symbols(symbols, splits["train"])
    if flat:
        warnings.append(f"{len(flat)} symbol(s) have training returns that never change (a price that "
                        f"does not move?); they are scaled with the pooled statistics: {_names(flat)}")
    out["warnings"] = warnings
    return out


def split_table(symbols: list[SymbolData], splits: dict[str, SplitIndex]) -> tuple[list[str], list[str]]:
    """Lines of a table (per split: symbols, first and last end-bar date, windows) and the
    warnings of :func:`split_summary`."""
    summary = split_summary(symbols, splits)
    lines = [f"  {'split':<6} {'symbols':>7}  {'from':<10}  {'to':<10}  {'windows':>10}"]
    for k in SPLITS:
        r = summary[k]
        lines.append(f"  {k:<6} {r['symbols']:>7}  {r['from'] or '-':<10}  {r['to'] or '-':<10}  "
                     f"{r['windows']:>10,}")
    return lines, summary["warnings"]


def _day(ns: int) -> str:
    return str(np.datetime64(ns, "ns").astype("datetime64[D]"))


def _names(names: list[str], limit: int = 8) -> str:
    return ", ".join(names[:limit]) + (f" ... ({len(names) - limit} more)" if len(names) > limit else "")


# A symbol needs this many training labels for statistics of its own; fewer get the pooled ones.
MIN_OWN_ROWS = 50


@dataclass(frozen=True)
class Normalisation:
    """Feature and label statistics fitted on training rows only.

    The pooled fields (``mean``, ``std``, ``label_mean``, ``label_std``) cover all training rows.
    With per-symbol statistics (``symbols`` not empty), symbol ``symbols[i]`` uses row i of the
    ``sym_*`` arrays: assets whose prices, volatility and bar frequency differ 10-20x then train
    together on comparable inputs and targets. A symbol without statistics of its own (too few
    training rows, or new data) uses the pooled ones.

    The model is trained on the standardised label; predictions are turned back into returns with
    ``label_mean + label_std * prediction`` of the sample's symbol.
    """

    mean: np.ndarray  # (F,) float32
    std: np.ndarray   # (F,) float32
    label_mean: float = 0.0
    label_std: float = 1.0
    symbols: tuple[str, ...] = ()
    sym_mean: np.ndarray | None = None        # (S, F) float32
    sym_std: np.ndarray | None = None         # (S, F) float32
    sym_label_mean: np.ndarray | None = None  # (S,) float64
    sym_label_std: np.ndarray | None = None   # (S,) float64

    @property
    def per_symbol(self) -> bool:
        return bool(self.symbols)

    def scales(self, names: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(mean (S, F), std (S, F), label_mean (S,), label_std (S,)) for the symbols ``names``,
        the pooled statistics for any symbol without its own."""
        n = len(names)
        mean = np.tile(self.mean, (n, 1))
        std = np.tile(self.std, (n, 1))
        lm = np.full(n, self.label_mean, np.float64)
        ls = np.full(n, self.label_std, np.float64)
        if self.per_symbol:
            row = {s: i for i, s in enumerate(self.symbols)}
            for j, name in enumerate(names):
                i = row.get(name)
                if i is not None:
                    mean[j], std[j] = self.sym_mean[i], self.sym_std[i]
                    lm[j], ls[j] = self.sym_label_mean[i], self.sym_label_std[i]
        return mean.astype(np.float32), std.astype(np.float32), lm, ls

    def to_dict(self) -> dict[str, Any]:
        """Tensors, and a list of symbol names, so that a checkpoint holding it loads with
        ``weights_only=True``."""
        d: dict[str, Any] = {
            "mean": torch.from_numpy(self.mean.copy()), "std": torch.from_numpy(self.std.copy()),
            "label_mean": torch.tensor(self.label_mean, dtype=torch.float64),
            "label_std": torch.tensor(self.label_std, dtype=torch.float64)}
        if self.per_symbol:
            d.update(symbols=list(self.symbols),
                     sym_mean=torch.from_numpy(np.ascontiguousarray(self.sym_mean, np.float32)),
                     sym_std=torch.from_numpy(np.ascontiguousarray(self.sym_std, np.float32)),
                     sym_label_mean=torch.from_numpy(np.asarray(self.sym_label_mean, np.float64)),
                     sym_label_std=torch.from_numpy(np.asarray(self.sym_label_std, np.float64)))
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Normalisation:
        """The inverse of :meth:`to_dict` (a checkpoint's dict was validated on load)."""
        base = (d["mean"].numpy().astype(np.float32), d["std"].numpy().astype(np.float32),
                float(d["label_mean"]), float(d["label_std"]))
        if not d.get("symbols"):
            return cls(*base)
        return cls(*base, tuple(str(s) for s in d["symbols"]),
                   d["sym_mean"].numpy().astype(np.float32), d["sym_std"].numpy().astype(np.float32),
                   d["sym_label_mean"].numpy().astype(np.float64),
                   d["sym_label_std"].numpy().astype(np.float64))


def _moments(rows: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    rows = np.asarray(rows, dtype=np.float64)
    return rows.shape[0], rows.sum(0), (rows * rows).sum(0)


def _mean_std(n: int, s1: np.ndarray, s2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = s1 / n
    std = np.sqrt(np.maximum(s2 / n - mean * mean, 0.0))
    std = np.where(std < 1e-8, 1.0, std)  # a constant feature: leave it centred, do not blow it up
    return mean, std


# A symbol whose training labels do not vary (a price that never moves) has no scale of its
# own: dividing by its own near-zero std, or by the fallback 1.0, turns the model's output
# into returns thousands of times too large. Such a symbol takes the pooled statistics.
FLAT_LABEL_STD = 1e-12


# The scale of labels that do not vary at all (every training price flat): tiny, so that the
# model's output, whatever it is, turns into returns of about 0 around the training mean. A scale
# of 1.0 here made it predict returns of +8.7% for prices that never move.
FLAT_LABEL_SCALE = 1e-8


def _label_stats(y: np.ndarray) -> tuple[float, float]:
    sd = float(y.std()) if y.size > 1 else 0.0
    return float(y.mean()), (sd if sd > FLAT_LABEL_STD else FLAT_LABEL_SCALE)


def flat_label_symbols(symbols: list[SymbolData], train: SplitIndex) -> list[str]:
    """The symbols whose training labels are all (nearly) the same value."""
    out = []
    for s, lo, hi in zip(symbols, train.starts, train.stops, strict=True):
        if hi - lo > 1 and float(np.asarray(s.label[lo:hi], np.float64).std()) <= FLAT_LABEL_STD:
            out.append(s.symbol)
    return out


def fit_normalisation(symbols: list[SymbolData], train: SplitIndex, window: int,
                      per_symbol: bool = False) -> Normalisation:
    """Mean/std over every feature row that any training window reads (and nothing later), and
    of the training labels: pooled, and with ``per_symbol`` also for each symbol with at least
    ``MIN_OWN_ROWS`` training labels that vary (see ``FLAT_LABEL_STD``)."""
    F = symbols[0].features.shape[1]
    n = 0
    s1 = np.zeros(F, np.float64)
    s2 = np.zeros(F, np.float64)
    labels = []
    own: dict[str, tuple[np.ndarray, np.ndarray, float, float]] = {}
    for s, lo, hi in zip(symbols, train.starts, train.stops, strict=True):
        if hi <= lo:
            continue
        k, a, b = _moments(s.features[max(lo - window + 1, 0):hi])
        n, s1, s2 = n + k, s1 + a, s2 + b
        y = np.asarray(s.label[lo:hi], dtype=np.float64)
        labels.append(y)
        if per_symbol and len(y) >= MIN_OWN_ROWS and float(y.std()) > FLAT_LABEL_STD:
            own[s.symbol] = (*_mean_std(k, a, b), *_label_stats(y))
    if n == 0:
        return Normalisation(np.zeros(F, np.float32), np.ones(F, np.float32))
    mean, std = _mean_std(n, s1, s2)
    lm, ls = _label_stats(np.concatenate(labels))
    pooled = Normalisation(mean.astype(np.float32), std.astype(np.float32), lm, ls)
    if not own:
        return pooled
    names = tuple(own)
    return dataclasses.replace(
        pooled, symbols=names,
        sym_mean=np.stack([own[x][0] for x in names]).astype(np.float32),
        sym_std=np.stack([own[x][1] for x in names]).astype(np.float32),
        sym_label_mean=np.asarray([own[x][2] for x in names], np.float64),
        sym_label_std=np.asarray([own[x][3] for x in names], np.float64))


class WindowDataset(Dataset):
    """Windows of one split, built on demand from the memory-mapped cache arrays.

    ``dataset[i]`` -> (x (L, F) float32 normalised and clipped to +-10, y () float32 standardised
    label).
    ``dataset.__getitems__(indices)`` builds a whole batch at once (used by the DataLoader).
    """

    CLIP = 10.0

    def __init__(self, symbols: list[SymbolData], split: SplitIndex, window: int,
                 norm: Normalisation) -> None:
        self.symbols = symbols
        self.split = split
        self.window = window
        self.norm = norm
        mean, std, lm, ls = norm.scales([s.symbol for s in symbols])
        self.mean = mean                                   # (S, F): row s for symbol s
        self.inv_std = (1.0 / std).astype(np.float32)
        self.label_mean = lm.astype(np.float32)            # (S,)
        self.label_inv_std = (1.0 / ls).astype(np.float32)
        self._label_mean64, self._label_std64 = lm, ls
        self._offsets = split.offsets
        self._starts = split.starts

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def locate(self, i: int) -> tuple[int, int]:
        """Flat sample index -> (symbol index, end bar)."""
        if not 0 <= i < len(self):
            raise IndexError(f"sample {i} out of range for a split of {len(self)}")
        s = int(np.searchsorted(self._offsets, i, side="right") - 1)
        return s, int(self._starts[s] + (i - self._offsets[s]))

    def symbol_index(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """The symbol index of samples ``start .. stop`` (vectorised :meth:`locate`)."""
        idx = np.arange(start, len(self) if stop is None else stop)
        return (np.searchsorted(self._offsets, idx, side="right") - 1).astype(np.int64)

    def labels(self) -> np.ndarray:
        """Every sample's forward return as stored (float64), in sample order: the realised
        returns a report scores against. Not the standardised labels turned back, whose float32
        round trip makes an unchanged price (return 0) a move of about 1e-12."""
        sym = self.symbol_index()
        local = np.arange(len(self)) - self._offsets[sym] + self._starts[sym]
        out = np.empty(len(self), np.float64)
        for s in np.unique(sym).tolist():
            rows = sym == s
            out[rows] = np.asarray(self.symbols[s].label, np.float64)[local[rows]]
        return out

    def to_returns(self, standardised: np.ndarray, start: int = 0) -> np.ndarray:
        """Standardised values of samples ``start .. start + len(standardised)`` of this split
        (predictions or labels, as the model sees them) -> forward returns (float64), each with the
        statistics of its own symbol."""
        v = np.asarray(standardised, np.float64)
        s = self.symbol_index(start, start + len(v))
        return self._label_mean64[s] + self._label_std64[s] * v

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = self.__getitems__([i])
        return xs[0], ys[0]

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        xs = np.empty((len(indices), self.window, self.mean.shape[1]), np.float32)  # (B, L, F)
        ys = np.empty(len(indices), np.float32)
        sym = np.empty(len(indices), np.int64)
        for j, i in enumerate(indices):
            s, t = self.locate(int(i))
            sym[j] = s
            xs[j] = self.symbols[s].features[t - self.window + 1: t + 1]
            ys[j] = self.symbols[s].label[t]
        xs -= self.mean[sym][:, None, :]
        xs *= self.inv_std[sym][:, None, :]
        np.clip(xs, -self.CLIP, self.CLIP, out=xs)
        ys -= self.label_mean[sym]
        ys *= self.label_inv_std[sym]
        return torch.from_numpy(xs), torch.from_numpy(ys)


def collate_batch(batch):
    """``__getitems__`` already returns a stacked (x, y) batch: pass it through."""
    return batch
