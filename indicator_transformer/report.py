"""The run report: the model and every baseline scored on the same test samples, in one dict.

Pure functions over arrays; nothing here reads or writes files. The pipeline collects the test
split's predictions into a :class:`TestPredictions` and calls

    report = build_report(tp)          # JSON-able after integrity.json_safe (NaN -> null)
    series = report_series(tp)         # arrays for plots.write_plots, never in JSON
    print(format_table(report, title)) # the table printed at the end of every run

Every number comes from :mod:`indicator_transformer.metrics`, so the table, summary.json and the
plots agree. The verdict is deliberately blunt: a model that does not beat ridge or LightGBM on
both MSE and IC is said not to, and an IC whose t-statistic (adjusted for overlapping labels) is
below 2 is said to be indistinguishable from noise.
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import metrics as M
from .data import frequency

# What "the model learned something" is measured against. symbol_mean (each symbol's training
# mean) is the model's own output of zero under per-symbol normalisation: a model must beat it.
STRONG_BASELINES = ("symbol_mean", "ridge", "lightgbm")
MIN_STRATEGY_PERIODS = 20                 # fewer periods: no annualised return or Sharpe
T_NOISE = 2.0                             # |t| below this: not distinguishable from noise
MAX_SYMBOL_ROWS = 10
LINE = 108


@dataclass
class TestPredictions:
    """Every test sample once, with each predictor's forecast of it (in return space)."""

    __test__ = False  # not a pytest test class despite the name

    symbols: np.ndarray              # (N,) str, symbol of each test sample
    times: np.ndarray                # (N,) int64 ns, end-bar time of each sample
    target: np.ndarray               # (N,) float64 realised forward return
    preds: dict[str, np.ndarray]     # "model" first, then the baselines, each (N,)
    train_mean: float                # pooled training-label mean (the MSE ratio's constant)
    horizon: int
    cost_bps: float
    per_year: float                  # bars per year for annualisation (NaN if unknown)

    def __post_init__(self) -> None:
        self.symbols = np.asarray(self.symbols).astype(str)
        self.times = np.asarray(self.times, np.int64)
        self.target = np.asarray(self.target, np.float64)
        self.preds = {k: np.asarray(v, np.float64) for k, v in self.preds.items()}
        n = len(self.target)
        if "model" not in self.preds:
            raise ValueError("TestPredictions.preds needs a 'model' entry")
        for name, arr in (("symbols", self.symbols), ("times", self.times),
                          *((f"preds[{k!r}]", v) for k, v in self.preds.items())):
            if arr.shape != (n,):
                raise ValueError(f"TestPredictions.{name} has shape {arr.shape}, expected ({n},) like target")
        if int(self.horizon) < 1:
            raise ValueError(f"TestPredictions.horizon must be >= 1, got {self.horizon}")


# ----------------------------------------------------------------------------- the report dict
def build_report(tp: TestPredictions) -> dict[str, Any]:
    """Every metric of every predictor on the same samples, the buy-and-hold reference, the best
    predictor per metric, whether the model beats ridge / LightGBM, and a plain verdict.

    Keys: samples, symbols, dates, horizon, cost_bps, periods_per_year, predictors
    ({name: {pooled, by_symbol, cross_section | None, sign_strategy, long_short | None}}),
    buy_and_hold, best ({metric: name | None}), beats ({baseline: bool}), verdict. Undefined
    values are NaN; only Python scalars, dicts and lists are left, so after json_safe it dumps."""
    scope = strategy_scope(tp)
    st = scope.sub
    report: dict[str, Any] = {
        "samples": len(tp.target),
        "symbols": len(np.unique(tp.symbols)),
        "dates": len(np.unique(tp.times)),
        "horizon": int(tp.horizon),
        "cost_bps": float(tp.cost_bps),
        "periods_per_year": float(st.per_year),
        "strategy_scope": scope.record(),
        "predictors": {name: _score(tp, pred, st, scope.mask) for name, pred in tp.preds.items()},
        "buy_and_hold": _guard(M.buy_and_hold(st.symbols, st.times, st.target, st.per_year, st.horizon,
                                              st.cost_bps)),
        "model_constant_within_symbols": _constant_within_symbols(tp.symbols, tp.preds["model"]),
    }
    report["best"] = best_by_metric(report["predictors"])
    report["beats"] = model_beats(report["predictors"])
    report["verdict"] = verdict(report)
    return _plain(report)


@dataclass
class StrategyScope:
    """The samples the strategy figures are computed on: all of them, or, when the symbols' bar
    frequencies differ, those of the most common frequency (one annualisation needs one)."""

    mask: np.ndarray        # (N,) bool
    sub: TestPredictions    # tp restricted to mask, with the per_year of that frequency
    bar: str
    symbols: list[str]
    note: str | None

    def record(self) -> dict[str, Any]:
        return {"bar": self.bar, "symbols": self.symbols, "note": self.note}


def strategy_scope(tp: TestPredictions) -> StrategyScope:
    """See :class:`StrategyScope`. Each symbol's bar size is read from its test samples' times."""
    names = sorted(set(tp.symbols.tolist()))
    bar_of = {}
    for s in names:
        t = np.sort(tp.times[tp.symbols == s])
        bar_of[s] = frequency.step_name(frequency.median_step(t))
    groups: dict[str, list[str]] = {}
    unknown = [s for s in names if bar_of[s] == "?"]  # one test sample: no step to read
    for s in names:
        if bar_of[s] != "?":
            groups.setdefault(bar_of[s], []).append(s)
    if len(groups) <= 1:
        bar = next(iter(groups), "?")
        return StrategyScope(np.ones(len(tp.target), bool), tp, bar, names, None)
    counts = {b: int(np.isin(tp.symbols, syms).sum()) for b, syms in groups.items()}
    bar = max(counts, key=lambda b: (counts[b], b))
    keep = sorted(groups[bar] + unknown)
    mask = np.isin(tp.symbols, keep)
    per_year = float(np.nanmedian([M.periods_per_year(tp.times[tp.symbols == s]) for s in keep]))
    sub = TestPredictions(tp.symbols[mask], tp.times[mask], tp.target[mask],
                          {k: v[mask] for k, v in tp.preds.items()}, tp.train_mean, tp.horizon,
                          tp.cost_bps, per_year)
    others = ", ".join(f"{b} ({len(v)})" for b, v in groups.items() if b != bar)
    note = (f"strategy figures cover the {bar} symbols only ({', '.join(keep[:6])}"
            f"{' ...' if len(keep) > 6 else ''}): the symbols' bar frequencies differ ({others} "
            f"besides) and one annualisation needs one frequency")
    return StrategyScope(mask, sub, bar, keep, note)


def _guard(stats: dict[str, Any]) -> dict[str, Any]:
    """No annualised return or Sharpe from fewer than MIN_STRATEGY_PERIODS periods: three periods
    gave a Sharpe of 43 that looked like a result."""
    if stats.get("periods", 0) < MIN_STRATEGY_PERIODS:
        stats = dict(stats, ann_return=math.nan, sharpe=math.nan)
    return stats


def _constant_within_symbols(symbols: np.ndarray, pred: np.ndarray) -> bool:
    """Whether ``pred`` never varies within a symbol (then its IC and strategies only rank the
    symbols' constant levels, e.g. their training means)."""
    varied = False
    for s in np.unique(symbols):
        p = pred[symbols == s]
        if len(p) >= 2:
            scale = max(1e-12, float(np.max(np.abs(p))))
            if float(np.ptp(p)) > 1e-9 * scale:
                varied = True
                break
    return not varied and len(pred) >= 2


def _score(tp: TestPredictions, pred: np.ndarray, st: TestPredictions | None = None,
           mask: np.ndarray | None = None) -> dict[str, Any]:
    """One predictor's section of the report (strategies on ``st``, the samples of ``mask``)."""
    st = tp if st is None else st
    spred = pred if mask is None else pred[mask]
    pooled: dict[str, Any] = M.point_metrics(pred, tp.target, tp.train_mean)
    pooled["ic_t_adj"] = M.overlap_adjusted_t(pooled["ic_t"], tp.horizon)
    pooled["rank_ic_t_adj"] = M.overlap_adjusted_t(pooled["rank_ic_t"], tp.horizon)
    cs = _cross_section(tp, pred)
    if cs is not None:
        cs.pop("series")
    ls = M.long_short(st.times, st.symbols, spred, st.target, st.per_year, st.horizon, st.cost_bps)
    return {
        "pooled": pooled,
        "by_symbol": M.by_symbol(tp.symbols, pred, tp.target, tp.train_mean),
        "cross_section": cs,
        "sign_strategy": _guard(M.sign_strategy(st.symbols, st.times, spred, st.target, st.per_year,
                                                st.horizon, st.cost_bps)),
        "long_short": _guard(ls) if ls["periods"] else None,
    }


def _cross_section(tp: TestPredictions, pred: np.ndarray) -> dict[str, Any] | None:
    """Cross-sectional IC, or None when no date has enough symbols for one (a single symbol, or
    symbols that never share a date: a 2-name correlation is always +-1 and says nothing)."""
    cs = M.cross_sectional(tp.times, pred, tp.target)
    if not cs["dates"]:
        return None
    cs["ic_t_adj"] = M.overlap_adjusted_t(cs["ic_t"], tp.horizon)
    cs["rank_ic_t_adj"] = M.overlap_adjusted_t(cs["rank_ic_t"], tp.horizon)
    return cs


# (report key, section, field, better): the columns a "best" is named for.
BEST_METRICS: tuple[tuple[str, str, str, str], ...] = (
    ("ic", "pooled", "ic", "max"),
    ("rank_ic", "pooled", "rank_ic", "max"),
    ("hit_rate", "pooled", "hit_rate", "max"),
    ("mse_ratio", "pooled", "mse_ratio", "min"),
    ("cs_ic", "cross_section", "ic_mean", "max"),
    ("cs_rank_ic", "cross_section", "rank_ic_mean", "max"),
    ("sign_sharpe", "sign_strategy", "sharpe", "max"),
    ("long_short_sharpe", "long_short", "sharpe", "max"),
)


def _num(v: Any) -> float:
    """A number, or NaN for null / missing (so a fresh report and one read back from JSON agree)."""
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else math.nan


def _get(pred: dict[str, Any], section: str, field: str) -> float:
    """A number from a predictor's section; NaN when the section or value is missing or null."""
    sec = pred.get(section)
    return _num(sec.get(field)) if isinstance(sec, dict) else math.nan


def best_by_metric(predictors: dict[str, dict[str, Any]]) -> dict[str, str | None]:
    """The best predictor per metric (the first in order on a tie; None when none is defined)."""
    out: dict[str, str | None] = {}
    for key, section, field, better in BEST_METRICS:
        vals = {n: _get(p, section, field) for n, p in predictors.items()}
        vals = {n: v for n, v in vals.items() if math.isfinite(v)}
        pick = max if better == "max" else min    # both return the first of equal values
        out[key] = pick(vals, key=vals.__getitem__) if vals else None
    return out


def model_beats(predictors: dict[str, dict[str, Any]]) -> dict[str, bool]:
    """For ridge and LightGBM when scored: does the model beat it, i.e. a strictly lower MSE ratio
    AND a strictly higher pooled IC on the same samples?

    Undefined values never count in the model's favour: a model with an undefined MSE ratio or IC
    (constant predictions) beats nothing, and a baseline whose MSE ratio is undefined cannot be
    shown to be beaten. A baseline with an undefined IC (constant predictions) has no correlation,
    so it counts as IC 0: the model must then show a positive IC."""
    model = predictors["model"]
    m_mse, m_ic = _get(model, "pooled", "mse_ratio"), _get(model, "pooled", "ic")
    out = {}
    for name in STRONG_BASELINES:
        if name not in predictors:
            continue
        b_mse, b_ic = _get(predictors[name], "pooled", "mse_ratio"), _get(predictors[name], "pooled", "ic")
        b_ic = 0.0 if math.isnan(b_ic) else b_ic
        out[name] = bool(math.isfinite(m_mse) and math.isfinite(b_mse) and m_mse < b_mse
                         and math.isfinite(m_ic) and m_ic > b_ic)
    return out


def verdict(report: dict[str, Any]) -> str:
    """One or two plain sentences: does the model beat the strong baselines, and is its IC more
    than noise? Reads a report dict (fresh, or loaded back from JSON with nulls)."""
    beats = report.get("beats") or {}
    lost = [b for b, ok in beats.items() if not ok]
    if not beats:
        first = "No ridge or LightGBM baseline was scored, so nothing strong was compared with the model."
    elif lost:
        first = (f"The model does not beat {', '.join(lost)} on the test split: a simpler predictor "
                 f"does as well here.")
    else:
        first = (f"The model beats {' and '.join(beats)} on the test split (lower MSE ratio and higher IC "
                 f"on the same samples).")
    second = _noise_sentence(report)
    if report.get("model_constant_within_symbols"):
        second = ("The model's output does not vary within any symbol: its IC and strategy figures only "
                  "rank the symbols' constant levels (compare symbol_mean). " + second).strip()
    return f"{first} {second}" if second else first


def _noise_sentence(report: dict[str, Any]) -> str:
    """Why the model's IC cannot be told from noise (or is significantly negative), or ''."""
    model = report["predictors"]["model"]
    h = int(_num(report.get("horizon"))) if math.isfinite(_num(report.get("horizon"))) else 1
    parts = []
    ic, t = _get(model, "pooled", "ic"), _get(model, "pooled", "ic_t_adj")
    n = _int(model["pooled"].get("samples"))
    if math.isnan(ic):
        return "The model's IC is undefined (constant predictions or too few samples)."
    if not t >= T_NOISE:
        parts.append((f"pooled IC {ic:+.4f} (t {_fmt_t(t)} over {n} samples)", t))
    cs = model.get("cross_section")
    if isinstance(cs, dict):
        cic, ct = _get(model, "cross_section", "ic_mean"), _get(model, "cross_section", "ic_t_adj")
        if not ct >= T_NOISE:
            parts.append((f"cross-sectional IC {_fmt(cic, '+.4f')} (t {_fmt_t(ct)} over "
                           f"{_int(cs.get('dates'))} dates)", ct))
    if not parts:
        return ""
    negative = all(math.isfinite(tt) and tt <= -T_NOISE for _, tt in parts)
    verb = "is" if len(parts) == 1 else "are"
    what = "significantly negative" if negative else "not distinguishable from noise"
    adj = f" (t adjusted for {h}-bar overlapping labels)" if h > 1 else ""
    return f"The model's {' and '.join(p for p, _ in parts)} {verb} {what}{adj}."


# ----------------------------------------------------------------------------- arrays for plots
def report_series(tp: TestPredictions) -> dict[str, Any]:
    """Arrays the plots need (never written to JSON): the model's predictions and the targets,
    the per-date net returns of its sign strategy, long-short (None without enough names) and
    buy-and-hold, each ``{"time", "return"}``, and its per-date cross-sectional IC
    ``{"time", "ic", "rank_ic"}`` (None when no date has enough symbols)."""
    pred = tp.preds["model"]
    st = strategy_scope(tp).sub
    sp = st.preds["model"]
    args = (st.per_year, st.horizon, st.cost_bps)
    ls = M.long_short(st.times, st.symbols, sp, st.target, *args, series=True)
    cs = M.cross_sectional(tp.times, pred, tp.target)
    return {
        "pred": pred,
        "target": tp.target,
        "sign_strategy": M.sign_strategy(st.symbols, st.times, sp, st.target, *args, series=True)["series"],
        "long_short": ls["series"] if ls["periods"] else None,
        "buy_and_hold": M.buy_and_hold(st.symbols, st.times, st.target, *args, series=True)["series"],
        "ic_over_time": cs["series"] if cs["dates"] else None,
    }


# ----------------------------------------------------------------------------- the printed table
def format_table(report: dict[str, Any], title: str) -> str:
    """A compact fixed-width table: one row per predictor (* = best of the column), the
    buy-and-hold reference, the model's per-symbol breakdown, and the verdict."""
    preds = report["predictors"]
    cols = _columns(preds)
    best = {c[0]: _best_values(preds, c) for c in cols}
    model = preds["model"]
    up = _fmt(_get(model, "pooled", "always_long"))
    # The title on its own line, so a long title never pushes the figures past the width.
    lines = [f"{title}:",
             f"  {_int(report.get('samples'))} samples, {_int(report.get('symbols'))} symbols, "
             f"{_int(report.get('dates'))} dates; always long hits {up}; "
             f"cost {_fmt(_num(report.get('cost_bps')), '.1f')} bps; * = best"]
    width = max(9, *(len(n) for n in preds))
    lines.append("  " + "predictor".ljust(width) + "".join(f"{c[1]:>{c[2]}}" for c in cols))
    for name, p in preds.items():
        cells = [_cell(p, c, best[c[0]]) for c in cols]
        lines.append("  " + name.ljust(width) + "".join(cells))
    lines.append(_buy_and_hold_line(report))
    scope = report.get("strategy_scope") or {}
    if scope.get("note"):
        lines += textwrap.wrap(f"Note: {scope['note']}", LINE, initial_indent="  ", subsequent_indent="    ")
    lines += _symbol_block(model)
    lines += textwrap.wrap(f"Verdict: {report.get('verdict') or verdict(report)}", LINE,
                           subsequent_indent="  ")
    return "\n".join(lines)


# (key, header, width, section, field, format, better)
_BASE_COLS = (
    ("ic", "IC", 10, "pooled", "ic", "+.4f", "max"),
    ("rank_ic", "rank IC", 10, "pooled", "rank_ic", "+.4f", "max"),
    ("hit_rate", "hit rate", 10, "pooled", "hit_rate", ".4f", "max"),
    ("mse_ratio", "MSE/mean", 10, "pooled", "mse_ratio", ".4f", "min"),
)


def _columns(preds: dict[str, dict[str, Any]]) -> list[tuple[Any, ...]]:
    """The four pooled columns, then those that some predictor has a value for."""
    cols = list(_BASE_COLS)
    extra = (("cs_ic", "CS IC (ICIR)", 18, "cross_section", "ic_mean", "+.4f", "max"),
             ("sign_sharpe", "sign Sharpe", 13, "sign_strategy", "sharpe", "+.2f", "max"),
             ("long_short_sharpe", "L/S Sharpe", 12, "long_short", "sharpe", "+.2f", "max"))
    for c in extra:
        if any(math.isfinite(_get(p, c[3], c[4])) for p in preds.values()):
            cols.append(c)
    return cols


def _best_values(preds: dict[str, dict[str, Any]], col: tuple[Any, ...]) -> float:
    vals = [v for p in preds.values() if math.isfinite(v := _get(p, col[3], col[4]))]
    if not vals:
        return math.nan
    return max(vals) if col[6] == "max" else min(vals)


def _cell(p: dict[str, Any], col: tuple[Any, ...], best: float) -> str:
    key, _, width, section, field, fmt, _ = col
    v = _get(p, section, field)
    text = _fmt(v, fmt)
    if key == "cs_ic" and math.isfinite(v):
        text += f" ({_fmt(_get(p, section, 'ic_ir'), '+.2f')})"
    mark = "*" if math.isfinite(v) and v == best else " "   # every row that ties for best is marked
    return f"{text + mark:>{width}}"


def _buy_and_hold_line(report: dict[str, Any]) -> str:
    bh = report.get("buy_and_hold") or {}
    return (f"  buy and hold (every symbol long): Sharpe {_fmt(_num(bh.get('sharpe')), '+.2f')}, "
            f"annual return {_fmt(_num(bh.get('ann_return')), '+.4f')}, max drawdown "
            f"{_fmt(_num(bh.get('max_drawdown')), '.4f')}")


def _symbol_block(model: dict[str, Any]) -> list[str]:
    """The model per symbol, at most MAX_SYMBOL_ROWS rows, sorted by symbol."""
    by = model.get("by_symbol") or {}
    if not by:
        return []
    names = sorted(by)
    width = max(6, *(len(s) for s in names[:MAX_SYMBOL_ROWS]))
    lines = ["Model per symbol:",
             f"  {'symbol'.ljust(width)}  {'samples':>9}  {'IC':>8}  {'hit rate / always long':>22}  "
             f"{'MSE/mean':>8}"]
    for s in names[:MAX_SYMBOL_ROWS]:
        r = by[s]
        hit = f"{_fmt(_num(r.get('hit_rate')))} / {_fmt(_num(r.get('always_long')))}"
        lines.append(f"  {s.ljust(width)}  {_int(r.get('samples')):>9}  "
                     f"{_fmt(_num(r.get('ic')), '+.4f'):>8}  {hit:>22}  {_fmt(_num(r.get('mse_ratio'))):>8}")
    if len(names) > MAX_SYMBOL_ROWS:
        lines.append(f"  ... {len(names) - MAX_SYMBOL_ROWS} more")
    return lines


def _fmt(v: float, spec: str = ".3f") -> str:
    return format(v, spec) if math.isfinite(v) else "-"


def _fmt_t(t: float) -> str:
    return f"{t:+.2f}" if math.isfinite(t) else "undefined"


def _int(v: Any) -> str:
    return f"{int(v):,}" if math.isfinite(_num(v)) else "-"


# ----------------------------------------------------------------------------- JSON-able types
def _plain(obj: Any) -> Any:
    """``obj`` with numpy scalars turned into Python ones (json.dumps rejects np.int64)."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [_plain(v) for v in obj.tolist()]
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    return obj
