"""Prediction metrics for forward returns, each with its sample count and a significance figure.

One module owns every number a report prints, so the model and every baseline are scored by the
same code on exactly the same samples. All inputs are forward returns (not standardised). An
undefined value (too few samples, a constant series) is NaN here and ``null`` in JSON.

    point metrics      mse, mse_ratio (vs the training-mean constant), ic (Pearson), rank_ic
                       (Spearman with average ranks for ties), hit_rate next to always_long
    by symbol          the same per symbol, and the mean of the per-symbol ICs with its standard error
    cross-section      per-date IC and rank IC over symbols, their mean, ICIR (mean / std) and t
    standard errors    of a correlation, a proportion, a mean and an annualised Sharpe ratio, so a
                       report can say whether one figure is ahead of another by more than its noise
    strategies         sign-following per symbol, a top-minus-bottom quantile long-short and the
                       buy-and-hold reference: annualised return, Sharpe, max drawdown, turnover,
                       after a cost in bps; each can also give its per-date return series

Strategy accounting: a sample's forward return spans ``horizon`` bars, so each date opens a
tranche of 1/horizon of the book held for ``horizon`` bars. Turnover is the traded notional per
period as a fraction of capital (every leg; flipping a book from long 1 to short 1 trades 2), and the
cost in bps is charged on all of it. t-statistics treat samples as independent; with overlapping
labels use :func:`overlap_adjusted_t`. :mod:`indicator_transformer.report` assembles all of this.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

NAN = float("nan")


# ----------------------------------------------------------------------------- building blocks
def _group_starts(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and end offsets of the runs of equal values in an already sorted array."""
    n = len(keys)
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    # np.concatenate, not np.r_: these run once per date and np.r_ costs more than the work.
    starts = np.flatnonzero(np.concatenate(([True], keys[1:] != keys[:-1])))
    return starts, np.concatenate((starts[1:], [n]))


def average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties sharing the mean of their positions (what Spearman's rho needs)."""
    x = np.asarray(x, np.float64)
    order = np.argsort(x, kind="stable")
    xs = x[order]
    starts, ends = _group_starts(xs)              # runs of equal values in sorted order
    mean_rank = (starts + ends + 1) / 2.0          # positions are 1-based: mean of start+1..end
    ranks = np.empty(len(x), np.float64)
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation; NaN when undefined (fewer than 2 samples or a constant series)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:  # a constant series has no correlation
        return NAN
    da, db = a - a.mean(), b - b.mean()
    denom = math.sqrt(float(da @ da) * float(db @ db))
    return float(da @ db) / denom if denom > 0 else NAN


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation with tie-aware (average) ranks."""
    return pearson(average_ranks(a), average_ranks(b)) if len(a) >= 2 else NAN


def corr_t(r: float, n: int) -> float:
    """t-statistic of a correlation r over n samples: r * sqrt((n - 2) / (1 - r^2))."""
    if not math.isfinite(r) or n < 3:
        return NAN
    if abs(r) >= 1.0:
        return math.copysign(math.inf, r)
    return r * math.sqrt((n - 2) / (1.0 - r * r))


def corr_se(r: float, n: int) -> float:
    """Standard error of a correlation r over n independent samples: sqrt((1 - r^2) / (n - 2))."""
    if not math.isfinite(r) or n < 3:
        return NAN
    return math.sqrt(max(1.0 - r * r, 0.0) / (n - 2))


def proportion_se(p: float, n: int) -> float:
    """Standard error of an observed proportion p over n trials: sqrt(p (1 - p) / n)."""
    if n < 1 or not math.isfinite(p):
        return NAN
    return math.sqrt(p * (1.0 - p) / n)


def sharpe_se(sharpe: float, periods: int, per_year: float) -> float:
    """Standard error of an annualised Sharpe ratio estimated from ``periods`` returns (Lo, 2002,
    for independent returns): sqrt((1 + SR_p^2 / 2) / T) per period, annualised like the ratio."""
    if not math.isfinite(sharpe) or periods < 2 or not math.isfinite(per_year) or per_year <= 0:
        return NAN
    sr = sharpe / math.sqrt(per_year)  # per-period Sharpe
    return math.sqrt((1.0 + 0.5 * sr * sr) / periods) * math.sqrt(per_year)


def proportion_z(p: float, p0: float, n: int) -> float:
    """z of an observed proportion p against p0 over n trials (normal approximation)."""
    if n < 1 or not math.isfinite(p) or not 0.0 < p0 < 1.0:
        return NAN
    return (p - p0) / math.sqrt(p0 * (1.0 - p0) / n)


def mean_t(x: np.ndarray) -> tuple[float, float, float]:
    """(mean, std with ddof=1, t = mean / (std / sqrt(n))) of a series; NaN where undefined."""
    x = np.asarray(x, np.float64)
    n = len(x)
    if n == 0:
        return NAN, NAN, NAN
    m = float(x.mean())
    if n < 2:
        return m, NAN, NAN
    s = float(x.std(ddof=1))
    return m, s, (m / (s / math.sqrt(n)) if s > 0 else NAN)


# ----------------------------------------------------------------------------- point metrics
def point_metrics(pred: np.ndarray, target: np.ndarray, train_mean: float | np.ndarray) -> dict[str, float]:
    """Scores of ``pred`` against ``target`` on the same samples.

    ``hit_rate`` counts the samples whose move is not zero and whose predicted sign matches;
    ``always_long`` is the hit rate of predicting "up" on those same samples, the bar a
    directional model has to clear (a 5-bar horizon in a rising market gives ~0.6 for free).
    """
    pred = np.asarray(pred, np.float64)
    target = np.asarray(target, np.float64)
    n = len(pred)
    mse = float(np.mean((pred - target) ** 2)) if n else NAN
    base = float(np.mean((train_mean - target) ** 2)) if n else NAN
    ic, ric = pearson(pred, target), spearman(pred, target)
    moved = target != 0
    m = int(moved.sum())
    # A predictor that never says up or down (all zeros) has no hit rate; an occasional zero counts
    # as a miss.
    hit = float(np.mean(np.sign(pred[moved]) == np.sign(target[moved]))) \
        if m and np.any(pred[moved] != 0) else NAN
    up = float(np.mean(target[moved] > 0)) if m else NAN
    sq = (pred - target) ** 2
    # The constant's MSE is the same for every predictor on these samples: only the model's own
    # squared errors vary, so the ratio's error is theirs scaled by the constant's MSE.
    mse_se = float(sq.std(ddof=1) / math.sqrt(n)) if n > 1 else NAN
    return {
        "samples": n,
        "mse": mse,
        "baseline_mse": base,
        "mse_ratio": mse / base if base > 0 else NAN,
        "mse_ratio_se": mse_se / base if base > 0 else NAN,
        "ic": ic,
        "ic_t": corr_t(ic, n),
        "ic_se": corr_se(ic, n),
        "rank_ic": ric,
        "rank_ic_t": corr_t(ric, n),
        "rank_ic_se": corr_se(ric, n),
        "hit_rate": hit,
        "hit_rate_se": proportion_se(hit, m),
        "always_long": up,
        "moves": m,
        # Against the better of a coin and always-long: beating 0.5 in a trending sample is not skill.
        "hit_z": proportion_z(hit, max(up, 1 - up), m) if m and 0 < up < 1 else NAN,
    }


def by_symbol(symbols: np.ndarray, pred: np.ndarray, target: np.ndarray, train_mean: float | np.ndarray
              ) -> dict[str, dict[str, float]]:
    """:func:`point_metrics` of each symbol's own samples (``train_mean`` a constant, or one per
    sample)."""
    symbols = np.asarray(symbols)
    out = {}
    for s in sorted(set(symbols.tolist())):
        mask = symbols == s
        mean = train_mean[mask] if isinstance(train_mean, np.ndarray) else train_mean
        m = point_metrics(pred[mask], target[mask], mean)
        out[str(s)] = {k: m[k] for k in ("samples", "ic", "ic_t", "ic_se", "rank_ic", "rank_ic_se",
                                         "hit_rate", "always_long", "mse_ratio", "mse_ratio_se")}
    return out


def mean_symbol_ic(by: dict[str, dict[str, float]], inflate: float = 1.0) -> dict[str, Any]:
    """The mean over symbols of each symbol's IC and rank IC (from :func:`by_symbol`), each with its
    standard error sqrt(sum se_i^2) / k, the symbols taken as independent, and t = mean / se.

    ``inflate`` multiplies each symbol's standard error (sqrt(horizon) for overlapping labels). A
    symbol whose IC is undefined (constant predictions, fewer than 3 samples) is left out and
    counted in ``symbols_without``. With one symbol this is that symbol's own IC and t. The MSE
    ratio is averaged too (``mse_ratio_mean``), so that no symbol's return scale dominates it."""
    out: dict[str, Any] = {}
    for name in ("ic", "rank_ic"):
        vals = [(r[name], r[f"{name}_se"] * inflate) for r in by.values()
                if math.isfinite(r.get(name, NAN)) and math.isfinite(r.get(f"{name}_se", NAN))]
        k = len(vals)
        mean = float(np.mean([v for v, _ in vals])) if k else NAN
        se = math.sqrt(sum(e * e for _, e in vals)) / k if k else NAN
        out[f"{name}_mean"], out[f"{name}_se"] = mean, se
        out[f"{name}_t"] = mean / se if k and se > 0 else NAN
        if name == "ic":
            out["symbols"], out["symbols_without"] = k, len(by) - k
    ratios = [r["mse_ratio"] for r in by.values() if math.isfinite(r.get("mse_ratio", NAN))]
    out["mse_ratio_mean"] = float(np.mean(ratios)) if ratios else NAN
    return out


def cross_sectional(times: np.ndarray, pred: np.ndarray, target: np.ndarray, min_names: int = 3
                    ) -> dict[str, Any]:
    """Per-date IC and rank IC across symbols, averaged over dates, as quant research reports it.

    Dates with fewer than ``min_names`` symbols (or a constant cross-section) are skipped. ICIR =
    mean / std of the per-date IC; ``t`` = ICIR * sqrt(dates). Pooled IC mixes in market timing;
    this does not."""
    times = np.asarray(times)
    order = np.argsort(times, kind="stable")
    t, p, y = times[order], np.asarray(pred, np.float64)[order], np.asarray(target, np.float64)[order]
    starts, ends = _group_starts(t)
    ics, rics, when = [], [], []
    for a, b in zip(starts, ends, strict=True):
        if b - a < min_names:
            continue
        ic, ric = pearson(p[a:b], y[a:b]), spearman(p[a:b], y[a:b])
        if math.isfinite(ic) and math.isfinite(ric):
            ics.append(ic)
            rics.append(ric)
            when.append(t[a])
    covered = int(sum(b - a for a, b in zip(starts, ends, strict=True) if b - a >= min_names))
    out: dict[str, Any] = {"dates": len(ics), "coverage": covered / len(t) if len(t) else 0.0}
    for name, series in (("ic", ics), ("rank_ic", rics)):
        m, s, tt = mean_t(np.asarray(series))
        out[f"{name}_mean"], out[f"{name}_std"], out[f"{name}_t"] = m, s, tt
        out[f"{name}_se"] = s / math.sqrt(len(series)) if len(series) > 1 and math.isfinite(s) else NAN
        out[f"{name}_ir"] = m / s if s and math.isfinite(s) and s > 0 else NAN
    out["series"] = {"time": np.asarray(when), "ic": np.asarray(ics), "rank_ic": np.asarray(rics)}
    return out


# ----------------------------------------------------------------------------- strategies
def periods_per_year(times_ns: np.ndarray) -> float:
    """Bars per year of one symbol, inferred from its timestamps: daily bars (a median spacing of
    about a day, weekends skipped) count 252 a year; coarser bars count by calendar time (weekly
    ~52, monthly ~12); intraday bars count their median number per calendar day times 252, so an
    equity's 6.5-hour session and an FX pair's 24 hours are both counted as they trade."""
    t = np.sort(np.asarray(times_ns, np.int64))
    if len(t) < 2:
        return NAN
    step = float(np.median(np.diff(t)))
    day = 86_400e9
    if step <= 0:
        return NAN
    if step > 1.5 * day:
        return 365.25 * day / step
    if step >= 0.5 * day:
        return 252.0
    _, per_day = np.unique(t // int(day), return_counts=True)
    return 252.0 * float(np.median(per_day))


def overlap_adjusted_t(t: float, horizon: int) -> float:
    """A t-statistic computed as if every sample were independent, corrected for labels that
    overlap: consecutive ``horizon``-bar forward returns share ``horizon - 1`` bars of move, so n
    of them carry about n / horizon independent observations and the t shrinks by sqrt(horizon)
    (the leading term of a Hansen-Hodrick correction). Equal to ``t`` for a 1-bar horizon."""
    return t / math.sqrt(max(1, int(horizon)))


def net_returns(returns: np.ndarray, turnover: np.ndarray, cost_bps: float) -> np.ndarray:
    """Per-period returns after a cost of ``cost_bps`` per unit of turnover (traded notional as a
    fraction of capital)."""
    return np.asarray(returns, np.float64) - np.asarray(turnover, np.float64) * cost_bps / 1e4


def equity_stats(returns: np.ndarray, turnover: np.ndarray, per_year: float, cost_bps: float
                 ) -> dict[str, float]:
    """Annualised return and Sharpe, max drawdown and mean turnover of a per-period return series,
    after a cost of ``cost_bps`` per unit of turnover."""
    r = net_returns(returns, turnover, cost_bps)
    n = len(r)
    if n == 0 or not math.isfinite(per_year):
        return {"periods": n, "years": NAN, "ann_return": NAN, "sharpe": NAN, "sharpe_se": NAN,
                "max_drawdown": NAN, "turnover": NAN}
    equity = np.cumsum(r)                       # log-return space: additive
    peak = np.maximum.accumulate(np.r_[0.0, equity])[1:]
    sd = float(r.std(ddof=1)) if n > 1 else NAN
    sharpe = float(r.mean() / sd * math.sqrt(per_year)) if sd and sd > 0 else NAN
    return {
        "periods": n,
        "years": n / per_year if per_year > 0 else NAN,
        "ann_return": float(r.mean() * per_year),
        "sharpe": sharpe,
        "sharpe_se": sharpe_se(sharpe, n, per_year),
        "max_drawdown": float(np.max(peak - equity)) if n else NAN,
        "turnover": float(np.mean(turnover)),
    }


def _strategy_result(times: np.ndarray, returns: np.ndarray, turnover: np.ndarray, per_year: float,
                     cost_bps: float, series: bool) -> dict[str, Any]:
    """:func:`equity_stats`, plus (when asked) the per-date net returns under ``"series"``, which
    holds arrays and must be removed before the stats go to JSON."""
    out: dict[str, Any] = equity_stats(returns, turnover, per_year, cost_bps)
    if series:
        out["series"] = {"time": np.asarray(times), "return": net_returns(returns, turnover, cost_bps)}
    return out


def _tranche_turnover(symbols: np.ndarray, times: np.ndarray, pos: np.ndarray, horizon: int) -> np.ndarray:
    """Turnover of each sample when every bar opens a 1/horizon tranche held for ``horizon`` bars.

    The net position of a symbol is the mean of its last ``horizon`` signs, so it changes by
    |pos_t - pos_(t-h)| / h per bar (a tranche opens, the one opened h bars ago closes): a sign that
    flips and then holds costs a full 2 units spread over h bars, not 2/h. Before the first sample
    the position is flat. Each symbol's samples are taken as consecutive bars in time order."""
    h = max(1, int(horizon))
    codes = np.unique(np.asarray(symbols), return_inverse=True)[1].ravel()
    order = np.lexsort((np.asarray(times), codes))          # by symbol, then time
    p = pos[order]
    starts, ends = _group_starts(codes[order])
    rank = np.arange(len(p)) - np.repeat(starts, ends - starts)  # position inside its symbol
    prev = np.zeros(len(p))
    has_prev = rank >= h
    prev[has_prev] = p[np.flatnonzero(has_prev) - h]
    turn = np.empty(len(p))
    turn[order] = np.abs(p - prev) / h
    return turn


def sign_strategy(symbols: np.ndarray, times: np.ndarray, pred: np.ndarray, target: np.ndarray,
                  per_year: float, horizon: int, cost_bps: float, *, series: bool = False
                  ) -> dict[str, Any]:
    """Hold sign(prediction) of each symbol for one horizon, equal weight across symbols per date.

    ``target`` is the forward log return over ``horizon`` bars, so one period's return is
    position x target / horizon per bar held (overlapping horizons share the move evenly), and the
    turnover is that of overlapping tranches (see :func:`_tranche_turnover`). With ``series`` the
    result also holds ``"series": {"time", "return"}``: each date's return after cost."""
    symbols, times = np.asarray(symbols), np.asarray(times)
    pos = np.sign(np.asarray(pred, np.float64))
    ret = pos * np.asarray(target, np.float64) / max(1, int(horizon))
    turn = _tranche_turnover(symbols, times, pos, horizon)
    return _strategy_result(*_per_date(times, ret, turn), per_year, cost_bps, series)


def buy_and_hold(symbols: np.ndarray, times: np.ndarray, target: np.ndarray, per_year: float,
                 horizon: int, cost_bps: float, *, series: bool = False) -> dict[str, Any]:
    """The reference a strategy has to beat: long every symbol present on a date, equal weight,
    held throughout. Accounted exactly like :func:`sign_strategy` with every prediction positive,
    so the only turnover is each symbol's entry (1 unit spread over its first ``horizon`` bars)."""
    return sign_strategy(symbols, times, np.ones(len(np.asarray(target))), target, per_year, horizon,
                         cost_bps, series=series)


def quantile_weights(sorted_pred: np.ndarray, k: int) -> np.ndarray:
    """Weights of a top-``k`` minus bottom-``k`` book over predictions sorted ascending, +1/k long
    and -1/k short, with ties shared: a group of equal predictions that straddles a cut gets the
    fraction of the cut's slots it covers, split evenly. Which of two tied names is bought thus
    never depends on input order, and a constant cross-section holds nothing."""
    p = np.asarray(sorted_pred, np.float64)
    n = len(p)
    starts, ends = _group_starts(p)
    top = np.clip(np.minimum(ends, n) - np.maximum(starts, n - k), 0, None)
    bottom = np.clip(np.minimum(ends, k) - starts, 0, None)
    per_name = (top - bottom) / (ends - starts) / k
    return np.repeat(per_name, ends - starts)


def long_short(times: np.ndarray, symbols: np.ndarray, pred: np.ndarray, target: np.ndarray,
               per_year: float, horizon: int, cost_bps: float, quantile: float = 0.2,
               min_names: int = 5, *, series: bool = False) -> dict[str, Any]:
    """Per date: long the top ``quantile`` of predictions, short the bottom, equal weights
    summing to +1 and -1 (ties shared, see :func:`quantile_weights`). Dates with fewer than
    ``min_names`` symbols are skipped. As in :func:`sign_strategy`, each date's book is a tranche
    held ``horizon`` bars: return w.target / horizon, turnover sum|w_t - w_(t-h)| / horizon over
    the traded dates (the whole traded notional, both legs, so the cost is charged on all of it).
    With ``series`` the result also holds ``"series": {"time", "return"}``."""
    times, symbols = np.asarray(times), np.asarray(symbols)
    pred, target = np.asarray(pred, np.float64), np.asarray(target, np.float64)
    h = max(1, int(horizon))
    codes = np.unique(symbols, return_inverse=True)[1].ravel()
    order = np.lexsort((pred, times))                       # by date, then prediction
    starts, ends = _group_starts(times[order])
    when, rets, turns, books = [], [], [], []
    for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
        if b - a < min_names:
            continue
        idx = order[a:b]
        w = quantile_weights(pred[idx], max(1, int(math.floor((b - a) * quantile))))
        book = (codes[idx], w)
        old = books[-h] if len(books) >= h else (np.zeros(0, np.int64), np.zeros(0))
        when.append(times[idx[0]])
        rets.append(float(w @ target[idx]) / h)
        turns.append(_book_change(book, old) / h)
        books.append(book)
    return _strategy_result(np.asarray(when, times.dtype), np.asarray(rets), np.asarray(turns), per_year,
                            cost_bps, series)


def _book_change(new: tuple[np.ndarray, np.ndarray], old: tuple[np.ndarray, np.ndarray]) -> float:
    """sum |w_new - w_old| over the union of the two books' symbols."""
    codes = np.concatenate((new[0], old[0]))
    if len(codes) == 0:
        return 0.0
    uniq, inv = np.unique(codes, return_inverse=True)
    return float(np.abs(np.bincount(inv.ravel(), np.concatenate((new[1], -old[1])), len(uniq))).sum())


def _per_date(times: np.ndarray, ret: np.ndarray, turn: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dates, equal-weight average of per-symbol returns, and of turnover) on each date, in date order."""
    uniq, inverse = np.unique(times, return_inverse=True)
    inverse = inverse.ravel()
    counts = np.bincount(inverse, minlength=len(uniq)).astype(np.float64)
    return (uniq, np.bincount(inverse, ret, len(uniq)) / counts,
            np.bincount(inverse, turn, len(uniq)) / counts)
