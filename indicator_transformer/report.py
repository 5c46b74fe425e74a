"""The run report: the model and every baseline scored on the same test samples, in one dict.

Pure functions over arrays; nothing here reads or writes files. The pipeline collects the test
split's predictions into a :class:`TestPredictions` and calls

    report = build_report(tp, fits)    # JSON-able after integrity.json_safe (NaN -> null)
    series = report_series(tp)         # arrays for plots.write_plots, never in JSON
    print(format_table(report, title)) # report_table.py: the table printed at the end of a run

Every number comes from :mod:`indicator_transformer.metrics`, so the table, summary.json and the
plots agree. What makes the figures honest on a folder that mixes markets:

- **The headline IC** is the cross-sectional IC (per date across symbols, averaged over dates)
  where symbols share dates, otherwise the mean of the per-symbol ICs; each comes with its
  standard error and t-statistic. The pooled IC, which on a mixed folder rewards predicting which
  asset moves more rather than which way, stays in the detailed figures, labelled, and is never
  the headline. The headline MSE/mean is the pooled one on one bar frequency and return scale, and
  the mean of the per-symbol ratios otherwise.
- **Standard errors everywhere**, adjusted for overlapping labels (a h-bar forward return shares
  h - 1 bars with its neighbour: every ``*_se`` here is the independent-sample error times
  sqrt(h)). "Best" marks a figure only when it is ahead of every other predictor, and of no skill
  (IC or Sharpe 0, MSE/mean 1, the hit rate of always long), by more than its standard error.
- **The verdict** is blunt: a model worse than a constant prediction is called that; a model that
  does not beat ridge or LightGBM on both the headline IC and the MSE/mean is said not to; a win
  within one standard error is called unclear; an IC with t below 2 is indistinguishable from noise.
- **The baselines' fits are shown** (ridge's alpha and where it lies in its grid, LightGBM's rounds),
  with a note when a baseline is close to constant, so a reader knows what the model was compared
  with; warnings name a tiny test split, a short strategy sample and a ridge fitted on fewer
  samples than inputs.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import metrics as M
from .data import frequency

# What "the model learned something" is measured against. symbol_mean (each symbol's training
# mean) is the model's own output of zero under per-symbol normalisation: a model must beat it.
STRONG_BASELINES = ("symbol_mean", "ridge", "lightgbm")
CONSTANTS = ("zero", "train_mean", "symbol_mean")  # predictors that ignore the window
MIN_STRATEGY_PERIODS = 20                 # fewer periods: no annualised return or Sharpe
T_NOISE = 2.0                             # |t| below this: not distinguishable from noise
MIN_TEST_SAMPLES = 250                    # fewer: a warning (an IC's standard error is above 0.06)
MIN_CS_COVERAGE = 0.5                     # the cross-section is the headline when it covers this share
SCALE_RATIO = 5.0                         # per-symbol return std max/min above this: scales differ
FEW_ROUNDS = 5                            # LightGBM stopping this early is close to constant
FLAT_SPREAD = 0.02                        # predictions varying less than 2% of the returns: flat


@dataclass
class TestPredictions:
    """Every test sample once, with each predictor's forecast of it (in return space)."""

    __test__ = False  # not a pytest test class despite the name

    symbols: np.ndarray              # (N,) str, symbol of each test sample
    times: np.ndarray                # (N,) int64 ns, end-bar time of each sample
    target: np.ndarray               # (N,) float64 realised forward return
    preds: dict[str, np.ndarray]     # "model" first, then the baselines, each (N,)
    # Pooled training-label mean (the MSE ratio's constant); per sample (an array) where samples of
    # several walk-forward folds are pooled, each with its own fold's mean.
    train_mean: float | np.ndarray
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

    def subset(self, mask: np.ndarray, per_year: float | None = None) -> TestPredictions:
        """The samples of ``mask`` (with another annualisation when given)."""
        mean = self.train_mean[mask] if isinstance(self.train_mean, np.ndarray) else self.train_mean
        return TestPredictions(self.symbols[mask], self.times[mask], self.target[mask],
                               {k: v[mask] for k, v in self.preds.items()}, mean, self.horizon,
                               self.cost_bps, self.per_year if per_year is None else per_year)


# ----------------------------------------------------------------------------- the report dict
def build_report(tp: TestPredictions, fits: dict[str, dict[str, Any]] | None = None,
                 scored: str = "the test split") -> dict[str, Any]:
    """Every metric of every predictor on the same samples, the buy-and-hold reference, the
    clearly best predictor per metric, whether the model beats the strong baselines, the
    baselines' fits, warnings and a plain verdict.

    ``fits`` is what :mod:`.baselines` recorded of each fit (alpha, rounds, sample counts);
    ``scored`` names the samples in the verdict and warnings ("every window" for evaluate
    --all-windows).

    Keys: samples, symbols, dates, horizon, cost_bps, periods_per_year, strategy_scope, headline
    ({metric, label, reason, mse, scale_ratio}), predictors ({name: {headline, pooled, by_symbol,
    symbol_ic, cross_section | None, sign_strategy, long_short | None}}), buy_and_hold, best
    ({metric: name | None}), beats ({baseline: bool}), margins, baseline_fits, warnings, verdict.
    Undefined values are NaN; only Python scalars, dicts and lists are left."""
    scope = strategy_scope(tp)
    st = scope.sub
    head = headline_choice(tp, scope)
    predictors = {name: _score(tp, pred, scope, head) for name, pred in tp.preds.items()}
    report: dict[str, Any] = {
        "samples": len(tp.target),
        "scored": scored,
        "symbols": len(np.unique(tp.symbols)),
        "dates": len(np.unique(tp.times)),
        "horizon": int(tp.horizon),
        "cost_bps": float(tp.cost_bps),
        "periods_per_year": float(st.per_year),
        "strategy_scope": scope.record(),
        "test_periods": [p.record() for p in test_periods(st)],
        "headline": head,
        "predictors": predictors,
        "buy_and_hold": _guard(M.buy_and_hold(st.symbols, st.times, st.target, st.per_year, st.horizon,
                                              st.cost_bps), tp.horizon),
        "model_constant_within_symbols": _constant_within_symbols(tp.symbols, tp.preds["model"]),
    }
    # A predictor that holds one value per symbol is never "best", whatever its name (see best_by_metric).
    report["best"] = best_by_metric(predictors, exempt={n for n, p in tp.preds.items()
                                                        if _constant_within_symbols(tp.symbols, p)})
    report["beats"] = model_beats(predictors)
    report["margins"] = model_margins(predictors)
    report["baseline_fits"] = describe_fits(fits or {}, predictors)
    report["warnings"] = report_warnings(report, fits or {}, scope)
    report["verdict"] = verdict(report)
    return _plain(report)


@dataclass
class StrategyScope:
    """The samples the strategy and cross-sectional figures are computed on: all of them, or, when
    the symbols' bar frequencies differ, those of the most common frequency (one annualisation
    needs one, and a date means the same bar only within one frequency)."""

    mask: np.ndarray        # (N,) bool
    sub: TestPredictions    # tp restricted to mask, with the per_year of that frequency
    bar: str
    symbols: list[str]
    note: str | None
    mixed: bool = False     # the symbols' bar frequencies differ

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
    others = ", ".join(f"{b} ({len(v)})" for b, v in groups.items() if b != bar)
    note = (f"strategy and cross-sectional figures cover the {bar} symbols only ({', '.join(keep[:6])}"
            f"{' ...' if len(keep) > 6 else ''}): the symbols' bar frequencies differ ({others} "
            f"besides) and one annualisation needs one frequency")
    return StrategyScope(mask, tp.subset(mask, per_year), bar, keep, note, mixed=True)


@dataclass
class TestPeriod:
    """Symbols whose test samples cover overlapping time ranges: one stretch of calendar."""

    start: int
    end: int
    symbols: list[str]
    mask: np.ndarray

    def record(self) -> dict[str, Any]:
        return {"from": _iso(self.start), "to": _iso(self.end), "symbols": self.symbols}


def test_periods(tp: TestPredictions) -> list[TestPeriod]:
    """The distinct test periods: symbols are grouped while their [first, last] test times
    overlap, so files covering different years (GOOG's 2011-13 beside the S&P 500's 2016-18) make
    separate periods that a strategy curve must not stitch together across the gap."""
    spans = []
    for s in sorted(set(tp.symbols.tolist())):
        t = tp.times[tp.symbols == s]
        spans.append((int(t.min()), int(t.max()), s))
    spans.sort()
    groups: list[list[Any]] = []
    for a, b, s in spans:
        if groups and a <= groups[-1][1]:
            groups[-1][1] = max(groups[-1][1], b)
            groups[-1][2].append(s)
        else:
            groups.append([a, b, [s]])
    return [TestPeriod(a, b, sorted(syms), np.isin(tp.symbols, syms)) for a, b, syms in groups]


test_periods.__test__ = False  # type: ignore[attr-defined]  # not a pytest test despite the name


def _iso(ns: int) -> str:
    return str(np.datetime64(int(ns), "ns").astype("datetime64[s]"))


def return_scale_ratio(tp: TestPredictions, min_samples: int = 20) -> float:
    """Largest over smallest per-symbol standard deviation of the realised return (symbols with at
    least ``min_samples`` test samples); NaN with fewer than two such symbols."""
    sds = []
    for s in np.unique(tp.symbols):
        y = tp.target[tp.symbols == s]
        if len(y) >= min_samples and float(np.std(y)) > 0:
            sds.append(float(np.std(y)))
    return max(sds) / min(sds) if len(sds) >= 2 else math.nan


def headline_choice(tp: TestPredictions, scope: StrategyScope) -> dict[str, Any]:
    """Which IC and which MSE/mean lead the report, and why (see the module docstring)."""
    ratio = return_scale_ratio(tp)
    scales_differ = math.isfinite(ratio) and ratio > SCALE_RATIO
    cs = M.cross_sectional(scope.sub.times, scope.sub.preds["model"], scope.sub.target)
    share = cs["coverage"] * (len(scope.sub.target) / len(tp.target)) if len(tp.target) else 0.0
    n_sym = len(np.unique(tp.symbols))
    if cs["dates"] and share >= MIN_CS_COVERAGE:
        metric, label = "cs_ic", "CS IC"
        reason = (f"the correlation across symbols on each of {cs['dates']:,} dates, averaged over the "
                  f"dates (a pooled IC would mix in market timing)")
    else:
        metric, label = "symbol_ic", "symbol IC"
        why = ("there is one symbol" if n_sym <= 1
               else "the symbols' bar frequencies differ" if scope.mixed and not cs["dates"]
               else "no date has 3 or more symbols" if not cs["dates"]
               else f"only {share:.0%} of the samples fall on dates shared by 3 or more symbols")
        reason = (f"the mean of the per-symbol ICs ({why}; a pooled IC would reward predicting which "
                  f"asset moves more, not which way)")
    mse = "symbol_mean" if scope.mixed or scales_differ else "pooled"
    return {"metric": metric, "label": label, "reason": reason, "mse": mse,
            "mse_reason": ("the mean of the per-symbol ratios ("
                           + ("the bar frequencies differ" if scope.mixed else
                              f"the symbols' return scales differ {ratio:.1f}x") + ")") if mse != "pooled"
            else "pooled over every sample", "scale_ratio": ratio}


def _guard(stats: dict[str, Any], horizon: int) -> dict[str, Any]:
    """No annualised return or Sharpe from fewer than MIN_STRATEGY_PERIODS periods: three periods
    gave a Sharpe of 43 that looked like a result. The Sharpe's standard error is widened for
    overlapping tranches like every other error of the report."""
    if stats.get("periods", 0) < MIN_STRATEGY_PERIODS:
        return dict(stats, ann_return=math.nan, sharpe=math.nan, sharpe_se=math.nan)
    return dict(stats, sharpe_se=stats["sharpe_se"] * math.sqrt(horizon))


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


def spread(symbols: np.ndarray, pred: np.ndarray, target: np.ndarray) -> float:
    """How much a predictor varies within symbols, relative to the realised returns: the pooled
    within-symbol standard deviation of ``pred`` over that of ``target`` (0 for a constant per
    symbol; a useful return forecast is typically a few percent to a few tenths)."""
    num = den = 0.0
    for s in np.unique(symbols):
        m = symbols == s
        num += float(np.sum((pred[m] - pred[m].mean()) ** 2))
        den += float(np.sum((target[m] - target[m].mean()) ** 2))
    return math.sqrt(num / den) if den > 0 else math.nan


def _score(tp: TestPredictions, pred: np.ndarray, scope: StrategyScope, head: dict[str, Any]
           ) -> dict[str, Any]:
    """One predictor's section of the report (strategies and cross-section on the scope)."""
    st = scope.sub
    spred = pred[scope.mask]
    root_h = math.sqrt(tp.horizon)
    pooled: dict[str, Any] = M.point_metrics(pred, tp.target, tp.train_mean)
    for key in ("ic_se", "rank_ic_se", "hit_rate_se", "mse_ratio_se"):
        pooled[key] *= root_h
    pooled["ic_t_adj"] = M.overlap_adjusted_t(pooled["ic_t"], tp.horizon)
    pooled["rank_ic_t_adj"] = M.overlap_adjusted_t(pooled["rank_ic_t"], tp.horizon)
    pooled["spread"] = spread(tp.symbols, pred, tp.target) if len(pred) else math.nan
    by = M.by_symbol(tp.symbols, pred, tp.target, tp.train_mean)
    for r in by.values():
        r["ic_se"] *= root_h
        r["rank_ic_se"] *= root_h
        r["mse_ratio_se"] *= root_h
        r["ic_t_adj"] = M.overlap_adjusted_t(r.pop("ic_t"), tp.horizon)
    sym = M.mean_symbol_ic(by)
    sym["mse_ratio_se"] = _mean_se([r.get("mse_ratio_se", math.nan) for r in by.values()])
    cs = _cross_section(st, spred)
    ls = M.long_short(st.times, st.symbols, spred, st.target, st.per_year, st.horizon, st.cost_bps)
    return {
        "headline": _headline(head, pooled, sym, cs),
        "pooled": pooled,
        "by_symbol": by,
        "symbol_ic": sym,
        "cross_section": cs,
        "sign_strategy": _guard(M.sign_strategy(st.symbols, st.times, spred, st.target, st.per_year,
                                                st.horizon, st.cost_bps), tp.horizon),
        "long_short": _guard(ls, tp.horizon) if ls["periods"] else None,
    }


def _mean_se(errors: list[float]) -> float:
    ok = [e for e in errors if math.isfinite(e)]
    return math.sqrt(sum(e * e for e in ok)) / len(ok) if ok else math.nan


def _headline(head: dict[str, Any], pooled: dict[str, Any], sym: dict[str, Any],
              cs: dict[str, Any] | None) -> dict[str, Any]:
    """The headline IC and MSE/mean of one predictor, with their standard errors and t."""
    if head["metric"] == "cs_ic" and cs is not None:
        ic, se, t, n = cs["ic_mean"], cs["ic_se"], cs["ic_t_adj"], f"{cs['dates']:,} dates"
    elif head["metric"] == "cs_ic":  # one value per date (a constant): no cross-section to correlate.
        # Not the symbol IC instead: one column holds one metric (pooled walk-forward folds give a
        # constant per fold a spurious IC over time).
        ic = se = t = math.nan
        n = "no date with a cross-section"
    else:
        ic, se, t = sym["ic_mean"], sym["ic_se"], sym["ic_t"]
        n = (f"{pooled['samples']:,} samples of one symbol" if sym["symbols"] == 1
             else f"{sym['symbols']} symbols")
    if head["mse"] == "pooled":
        mse, mse_se = pooled["mse_ratio"], pooled["mse_ratio_se"]
    else:
        mse, mse_se = sym["mse_ratio_mean"], sym["mse_ratio_se"]
    return {"ic": ic, "ic_se": se, "ic_t_adj": t, "over": n, "mse_ratio": mse, "mse_ratio_se": mse_se}


def _cross_section(tp: TestPredictions, pred: np.ndarray) -> dict[str, Any] | None:
    """Cross-sectional IC, or None when no date has enough symbols for one (a single symbol, or
    symbols that never share a date: a 2-name correlation is always +-1 and says nothing)."""
    cs = M.cross_sectional(tp.times, pred, tp.target)
    if not cs["dates"]:
        return None
    cs.pop("series")
    root_h = math.sqrt(tp.horizon)
    cs["ic_se"] *= root_h
    cs["rank_ic_se"] *= root_h
    cs["ic_t_adj"] = M.overlap_adjusted_t(cs["ic_t"], tp.horizon)
    cs["rank_ic_t_adj"] = M.overlap_adjusted_t(cs["rank_ic_t"], tp.horizon)
    return cs


# ----------------------------------------------------------------------------- best, beats
# (report key, section, field, standard-error field, better, no-skill reference): the columns a
# "best" is named for. The hit rate's reference is the better of always long and always short.
BEST_METRICS: tuple[tuple[str, str, str, str, str, float | None], ...] = (
    ("headline_ic", "headline", "ic", "ic_se", "max", 0.0),
    ("headline_mse", "headline", "mse_ratio", "mse_ratio_se", "min", 1.0),
    ("ic", "pooled", "ic", "ic_se", "max", 0.0),
    ("rank_ic", "pooled", "rank_ic", "rank_ic_se", "max", 0.0),
    ("hit_rate", "pooled", "hit_rate", "hit_rate_se", "max", None),
    ("mse_ratio", "pooled", "mse_ratio", "mse_ratio_se", "min", 1.0),
    ("cs_ic", "cross_section", "ic_mean", "ic_se", "max", 0.0),
    ("cs_rank_ic", "cross_section", "rank_ic_mean", "rank_ic_se", "max", 0.0),
    ("sign_sharpe", "sign_strategy", "sharpe", "sharpe_se", "max", 0.0),
    ("long_short_sharpe", "long_short", "sharpe", "sharpe_se", "max", 0.0),
)


def as_number(v: Any) -> float:
    """A number, or NaN for null / missing (so a fresh report and one read back from JSON agree)."""
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else math.nan


def field_value(pred: dict[str, Any], section: str, field: str) -> float:
    """A number from a predictor's section; NaN when the section or value is missing or null."""
    sec = pred.get(section)
    return as_number(sec.get(field)) if isinstance(sec, dict) else math.nan


def _reference(predictors: dict[str, dict[str, Any]], ref: float | None) -> float:
    if ref is not None:
        return ref
    ups = [field_value(p, "pooled", "always_long") for p in predictors.values()]
    ups = [u for u in ups if math.isfinite(u)]
    return max(ups[0], 1 - ups[0]) if ups else math.nan


def best_by_metric(predictors: dict[str, dict[str, Any]], exempt: Iterable[str] = ()
                   ) -> dict[str, str | None]:
    """The clearly best predictor per metric, or None: the best value must be ahead of every other
    predictor's, and of no skill, by more than its own standard error (a figure without a standard
    error is never clearly best). So a negative IC, a lead inside the noise or a tie is never
    marked. A standard error of 0 is a degenerate estimate (a correlation of exactly 1, a hit
    rate of 1 on a handful of samples), not certainty: nothing is marked on it. A predictor that
    ignores the window (``CONSTANTS``, and those in ``exempt``: any found to hold one value per
    symbol) is never marked: its IC only ranks symbols' levels and its strategy only holds a fixed
    side, which says nothing about skill; it still counts as a rival."""
    exempt = set(exempt) | set(CONSTANTS)
    out: dict[str, str | None] = {}
    for key, section, field, se_field, better, ref in BEST_METRICS:
        vals = {n: field_value(p, section, field) for n, p in predictors.items()}
        vals = {n: v for n, v in vals.items() if math.isfinite(v)}
        out[key] = None
        if not vals:
            continue
        sign = 1.0 if better == "max" else -1.0
        top = max(vals, key=lambda n: sign * vals[n])  # the first of equal values
        rivals = [sign * v for n, v in vals.items() if n != top]
        floor = _reference(predictors, ref)
        if math.isfinite(floor):
            rivals.append(sign * floor)
        se = field_value(predictors[top], section, se_field)
        if top in exempt or not (math.isfinite(se) and se > 0):
            continue
        if rivals and sign * vals[top] - max(rivals) > se:
            out[key] = top
    return out


def _headline_pair(p: dict[str, Any]) -> tuple[float, float]:
    """(MSE/mean, IC) a comparison uses: the headline's, or the pooled ones of an older report."""
    if isinstance(p.get("headline"), dict):
        return field_value(p, "headline", "mse_ratio"), field_value(p, "headline", "ic")
    return field_value(p, "pooled", "mse_ratio"), field_value(p, "pooled", "ic")


def model_beats(predictors: dict[str, dict[str, Any]]) -> dict[str, bool]:
    """For each strong baseline scored: does the model beat it, i.e. a strictly lower headline
    MSE/mean AND a strictly higher, positive headline IC on the same samples?

    Undefined values never count in the model's favour: a model with an undefined MSE ratio or IC
    (constant predictions) beats nothing, and a baseline whose MSE ratio is undefined cannot be
    shown to be beaten. A baseline with an undefined IC (constant predictions) has no correlation,
    so it counts as IC 0: the model must then show a positive IC."""
    m_mse, m_ic = _headline_pair(predictors["model"])
    out = {}
    for name in STRONG_BASELINES:
        if name not in predictors:
            continue
        b_mse, b_ic = _headline_pair(predictors[name])
        b_ic = 0.0 if math.isnan(b_ic) else b_ic
        # A negative IC beats nothing, however much worse the baseline's is.
        out[name] = bool(math.isfinite(m_mse) and math.isfinite(b_mse) and m_mse < b_mse
                         and math.isfinite(m_ic) and m_ic > max(b_ic, 0.0))
    return out


def model_margins(predictors: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The model's headline IC lead over each strong baseline, against the model's standard error
    of that IC: ``clear`` when the lead exceeds it."""
    model = predictors["model"]
    m_ic, se = field_value(model, "headline", "ic"), field_value(model, "headline", "ic_se")
    out = {}
    for name in STRONG_BASELINES:
        if name in predictors:
            b_ic = field_value(predictors[name], "headline", "ic")
            lead = m_ic - (0.0 if math.isnan(b_ic) else b_ic)
            out[name] = {"ic_lead": lead, "ic_se": se,
                         "clear": bool(math.isfinite(lead) and math.isfinite(se) and lead > se)}
    return out


# ----------------------------------------------------------------------------- fits, warnings
def describe_fits(fits: dict[str, dict[str, Any]], predictors: dict[str, dict[str, Any]]
                  ) -> dict[str, dict[str, Any]]:
    """One line per fitted baseline saying what was fitted, with ``close_to_constant`` when its
    predictions barely vary (LightGBM stopped within FEW_ROUNDS rounds, ridge at the strongest end
    of its grid, or either spreading less than FLAT_SPREAD of the realised returns)."""
    out: dict[str, dict[str, Any]] = {}
    for name in ("ridge", "lightgbm"):  # always in this order (a summary read back sorts its keys)
        d = fits.get(name)
        if not isinstance(d, dict):
            continue
        flat = field_value(predictors.get(name, {}), "pooled", "spread")
        if not d.get("fit_samples"):
            out[name] = {"text": f"{name}: {d.get('note', 'not fitted')}", "close_to_constant": True}
            continue
        if name == "ridge":
            text, close = _ridge_fit(d)
        else:
            text, close = _lightgbm_fit(d)
        if math.isfinite(flat) and flat < FLAT_SPREAD:
            close = True
        spread_text = (f"; its predictions vary {flat:.1%} as much as the returns"
                       if math.isfinite(flat) else "")
        out[name] = {"text": text + spread_text + ("; close to constant" if close else ""),
                     "close_to_constant": close, "spread": flat}
    return out


def _ridge_fit(d: dict[str, Any]) -> tuple[str, bool]:
    alphas = [float(a) for a in d.get("alphas") or []]
    alpha = as_number(d.get("alpha"))
    where = ""
    close = False
    if alphas and math.isfinite(alpha):
        i = min(range(len(alphas)), key=lambda k: abs(math.log(alphas[k] / alpha)))
        if i >= len(alphas) - 2:
            where = " (at the top of its grid: the strongest shrinkage tried)" if i == len(alphas) - 1 \
                else " (next to the top of its grid)"
            close = i == len(alphas) - 1
        elif i <= 1:
            where = " (at the bottom of its grid: the weakest shrinkage tried)" if i == 0 \
                else " (next to the bottom of its grid)"
    grid = f"{alphas[0]:g}..{alphas[-1]:g}" if alphas else "?"
    return (f"ridge: alpha {alpha:.3g}{where}, chosen by {d.get('chosen_by', '?')} from {grid}, fitted on "
            f"{fmt_int(d.get('fit_samples'))} samples of {fmt_int(d.get('features'))} inputs"), close


def _lightgbm_fit(d: dict[str, Any]) -> tuple[str, bool]:
    rounds = int(as_number(d.get("rounds"))) if math.isfinite(as_number(d.get("rounds"))) else 0
    how = "early-stopped on validation" if d.get("early_stopping") else "no validation data: fixed"
    seed = (d.get("params") or {}).get("seed")
    return (f"lightgbm: {rounds} of {fmt_int(d.get('max_rounds'))} rounds ({how}), fitted on "
            f"{fmt_int(d.get('fit_samples'))} samples" + (f", seed {seed}" if seed is not None else "")), \
        rounds <= FEW_ROUNDS


def report_warnings(report: dict[str, Any], fits: dict[str, dict[str, Any]], scope: StrategyScope
                    ) -> list[str]:
    """What makes the figures of this report fragile, each in one sentence."""
    out = []
    n = int(report["samples"])
    if 0 < n < MIN_TEST_SAMPLES:
        where = report.get("scored", "the test split")
        out.append(f"{where} holds {n} samples (under {MIN_TEST_SAMPLES}): every figure's standard "
                   f"error is large (an IC's is about {1 / math.sqrt(max(n - 2, 1)):.2f})")
    ss = report["predictors"]["model"]["sign_strategy"]
    years = as_number(ss.get("years"))
    if math.isfinite(years) and years < 1.0 and ss.get("periods", 0):
        out.append(f"the strategy figures cover {ss['periods']} periods of {scope.bar} bars ({years:.2f} "
                   f"years): a Sharpe ratio from under a year of data says little")
    ridge = fits.get("ridge") or {}
    if ridge.get("fit_samples") and ridge.get("features") and ridge["fit_samples"] < ridge["features"]:
        out.append(f"ridge was fitted on {ridge['fit_samples']} samples for {ridge['features']} inputs: "
                   f"fewer samples than inputs")
    return out


# ----------------------------------------------------------------------------- the verdict
def verdict(report: dict[str, Any]) -> str:
    """A few plain sentences: is the model worse than a constant, does it beat the strong
    baselines (and clearly), and is its headline IC more than noise? Reads a report dict (fresh,
    or loaded back from JSON with nulls)."""
    parts = [_constant_sentence(report), _beats_sentence(report), _noise_sentence(report)]
    if report.get("model_constant_within_symbols"):
        parts.append("The model's output does not vary within any symbol: its IC and strategy figures only "
                     "rank the symbols' constant levels (compare symbol_mean).")
    return " ".join(p for p in parts if p)


def _label(report: dict[str, Any]) -> str:
    head = report.get("headline")
    return head.get("label", "IC") if isinstance(head, dict) else "IC"


def _constant_sentence(report: dict[str, Any]) -> str:
    """Whether the model is worse than predicting a constant (the training mean, zero, or each
    symbol's training mean), on the headline MSE/mean."""
    preds = report["predictors"]
    m_mse, _ = _headline_pair(preds["model"])
    if not math.isfinite(m_mse):
        return ""
    consts = {n: _headline_pair(preds[n])[0] for n in CONSTANTS if n in preds}
    consts = {n: v for n, v in consts.items() if math.isfinite(v)}
    best = min(consts, key=consts.__getitem__) if consts else None
    if m_mse > 1.0:
        worse = f"The model is worse than predicting the training mean (MSE/mean {m_mse:.4f}, above 1)"
        if best is not None and best != "train_mean" and consts[best] < 1.0:
            worse += f"; {best} does better still ({consts[best]:.4f})"
        return worse + "."
    if best is not None and consts[best] < m_mse:
        return (f"The model is worse than a constant prediction: {best} has a lower MSE/mean "
                f"({consts[best]:.4f} against the model's {m_mse:.4f}).")
    return ""


def _beats_sentence(report: dict[str, Any]) -> str:
    beats = report.get("beats") or {}
    lost = [b for b, ok in beats.items() if not ok]
    label = _label(report)
    where = report.get("scored") or "the test split"
    if not beats:
        return "No ridge or LightGBM baseline was scored, so nothing strong was compared with the model."
    if lost:
        return (f"The model does not beat {', '.join(lost)} on {where}: a simpler predictor "
                f"does as well here.")
    text = (f"The model beats {' and '.join(beats)} on {where} (lower MSE/mean and higher {label} "
            f"on the same samples)")
    margins = report.get("margins") or {}
    unclear = [(n, m) for n, m in margins.items() if isinstance(m, dict) and not m.get("clear")]
    if unclear:
        shown = ", ".join(f"{n} +{as_number(m.get('ic_lead')):.4f}" for n, m in unclear)
        text += (f", but its {label} lead ({shown}) is within one standard error "
                 f"({fmt(as_number(unclear[0][1].get('ic_se')), '.4f')}): not a clear win")
    return text + "."


def _noise_sentence(report: dict[str, Any]) -> str:
    """Why the model's headline IC cannot be told from noise (or is significantly negative), or ''."""
    model = report["predictors"]["model"]
    h = int(as_number(report.get("horizon"))) if math.isfinite(as_number(report.get("horizon"))) else 1
    label = _label(report)
    if isinstance(model.get("headline"), dict):
        ic, t = field_value(model, "headline", "ic"), field_value(model, "headline", "ic_t_adj")
        over = model["headline"].get("over") or "?"
    else:  # a report written before the headline existed
        ic, t = field_value(model, "pooled", "ic"), field_value(model, "pooled", "ic_t_adj")
        over = f"{fmt_int(model['pooled'].get('samples'))} samples"
    if math.isnan(ic):
        return f"The model's {label} is undefined (constant predictions or too few samples)."
    if t >= T_NOISE:
        return ""
    negative = math.isfinite(t) and t <= -T_NOISE
    what = "significantly negative" if negative else "not distinguishable from noise"
    adj = f" (t adjusted for {h}-bar overlapping labels)" if h > 1 else ""
    return f"The model's {label} {ic:+.4f} (t {fmt_t(t)} over {over}) is {what}{adj}."


# ----------------------------------------------------------------------------- arrays for plots
def report_series(tp: TestPredictions) -> dict[str, Any]:
    """Arrays the plots need (never written to JSON): the model's predictions and the targets;
    per distinct test period (``periods``, see :func:`test_periods`) the per-date net returns of
    its sign strategy, long-short (None without enough names) and buy-and-hold, each
    ``{"time", "return"}``, with the period's symbols and the sign strategy's Sharpe and length;
    the same over the whole scope (``sign_strategy``, ``long_short``, ``buy_and_hold``); and its
    per-date cross-sectional IC ``{"time", "ic", "rank_ic"}`` (None when no date has enough
    symbols). ``bar`` is the bar size of the strategy scope."""
    scope = strategy_scope(tp)
    st = scope.sub
    whole = _strategy_series(st)
    cs = M.cross_sectional(st.times, st.preds["model"], st.target)
    return {
        "pred": tp.preds["model"],
        "target": tp.target,
        **whole,
        "periods": [{"symbols": p.symbols, **_strategy_series(st.subset(p.mask))} for p in test_periods(st)]
        if len(st.target) else [],
        "ic_over_time": cs["series"] if cs["dates"] else None,
        "bar": scope.bar,
    }


def _strategy_series(st: TestPredictions) -> dict[str, Any]:
    sp = st.preds["model"]
    args = (st.per_year, st.horizon, st.cost_bps)
    ls = M.long_short(st.times, st.symbols, sp, st.target, *args, series=True)
    sign = M.sign_strategy(st.symbols, st.times, sp, st.target, *args, series=True)
    stats = _guard({k: v for k, v in sign.items() if k != "series"}, st.horizon)
    return {
        "sign_strategy": sign["series"],
        "long_short": ls["series"] if ls["periods"] else None,
        "buy_and_hold": M.buy_and_hold(st.symbols, st.times, st.target, *args, series=True)["series"],
        "sign_sharpe": stats["sharpe"], "periods_count": stats["periods"], "years": stats["years"],
    }


# ----------------------------------------------------------------------------- formatting helpers
def fmt(v: float, spec: str = ".3f") -> str:
    return format(v, spec) if math.isfinite(v) else "-"


def fmt_t(t: float) -> str:
    return f"{t:+.2f}" if math.isfinite(t) else "undefined"


def fmt_int(v: Any) -> str:
    return f"{int(v):,}" if math.isfinite(as_number(v)) else "-"


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

