"""The walk-forward experiment's PNG plots, beside its summary.json:

    ic_per_fold.png         the headline IC per fold of the model and the strong baselines: one dot
                            per seed, the mean over seeds joined
    oos_strategies.png      the model's sign strategy over every fold's test period, one line per
                            seed, next to buy-and-hold (cumulative log return after cost)
    headline_over_seeds.png the pooled headline IC of every predictor, one dot per seed, mean and std

Drawn as the run plots are (:mod:`..plots`: a bare Agg Figure, written atomically), from the
summary's figures and the pooled out-of-sample series, so a plot never says more than the report.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..plots import MAX_PANELS, _date_axis, _dates, _empty, _figure, _save

IC_PER_FOLD = "ic_per_fold.png"
OOS_STRATEGIES = "oos_strategies.png"
HEADLINE_OVER_SEEDS = "headline_over_seeds.png"
PLOTS = (IC_PER_FOLD, OOS_STRATEGIES, HEADLINE_OVER_SEEDS)
COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink",
          "tab:gray", "tab:olive", "tab:cyan")


def _finite(v: Any) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return math.nan
    return f if math.isfinite(f) else math.nan


def plot_ic_per_fold(runs: Sequence[Mapping[str, Any]], predictors: Sequence[str], label: str,
                     path: str | Path) -> Path:
    """``runs``: summary.json's per-run entries (fold, seed, test_start, headline per predictor).
    One dot per (fold, seed) per predictor, the fold's mean over seeds joined by a line; each fold
    labelled with its test period's first date. Returns ``path``."""
    folds = sorted({int(r["fold"]) for r in runs})
    fig = _figure(9.0, 5.0)
    ax = fig.add_subplot()
    if not folds:
        _empty(ax, "no finished run")
        return _save(fig, path)
    width = 0.6 / max(len(predictors), 1)
    drawn = False
    for i, name in enumerate(predictors):
        color = COLORS[i % len(COLORS)]
        offset = (i - (len(predictors) - 1) / 2) * width
        means = []
        for k, fold in enumerate(folds):
            vals = [_finite((r["headline"].get(name) or {}).get("ic"))
                    for r in runs if int(r["fold"]) == fold]
            ok = [v for v in vals if math.isfinite(v)]
            if ok:
                drawn = True
                ax.scatter([k + offset] * len(ok), ok, color=color, s=14, alpha=0.7, zorder=3)
            means.append(float(np.mean(ok)) if ok else math.nan)
        if any(math.isfinite(m) for m in means):  # a predictor without a figure gets no legend entry
            ax.plot(np.arange(len(folds)) + offset, means, color=color, linewidth=1.3, marker="_",
                    markersize=14, label=name)
    if not drawn:
        _empty(ax, f"no fold has a {label} (one symbol, or symbols that never share a date)")
        return _save(fig, path)
    starts = {int(r["fold"]): _first_date(r.get("test_start")) for r in runs}
    ax.set_xticks(range(len(folds)), [f"fold {f}\n{starts.get(f, '')}" for f in folds], fontsize="small")
    ax.axhline(0.0, color="0.6", linewidth=0.6)
    ax.set_ylabel(label)
    ax.set_title(f"{label} per fold's test period: a dot per seed, the line the mean over seeds")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    return _save(fig, path)


def _first_date(cut: Any) -> str:
    """A fold's test start for its label: the date, or for cuts per symbol the earliest."""
    text = str(cut or "")
    return text[:10] if "=" not in text else "dates per symbol"


def plot_oos_strategies(series_by_seed: Mapping[int, Mapping[str, Any]], path: str | Path) -> Path:
    """``series_by_seed``: :func:`..report.report_series` of each seed's pooled out-of-sample
    predictions. The model's sign strategy per seed and buy-and-hold (the same for every seed:
    drawn once), cumulative log return after cost over every fold; one panel per distinct test
    period (symbols whose out-of-sample dates overlap, as in the run's strategies plot), so periods
    years apart are never joined by a flat line across the gap. Returns ``path``."""
    seeds = sorted(series_by_seed)
    per_seed = {s: list(series_by_seed[s].get("periods") or [series_by_seed[s]]) for s in seeds}
    count = max((len(v) for v in per_seed.values()), default=0)
    if count == 0:
        fig = _figure()
        _empty(fig.add_subplot(), "no out-of-sample dates")
        return _save(fig, path)
    shown = min(count, MAX_PANELS)
    fig = _figure(9.0, 3.2 + 2.3 * shown if shown > 1 else 5.0)
    axes = fig.subplots(shown, 1, squeeze=False)[:, 0]
    for k, ax in enumerate(axes):
        drawn = False
        for i, seed in enumerate(seeds):
            periods = per_seed[seed]
            sign = (periods[k].get("sign_strategy") or {}) if k < len(periods) else {}
            if len(sign.get("time", ())) == 0:
                continue
            drawn = True
            ax.plot(_dates(sign["time"]), np.cumsum(np.asarray(sign["return"], np.float64)),
                    color=COLORS[0], alpha=0.35 + 0.6 / (i + 1), linewidth=1.0,
                    label="model, sign strategy (a line per seed)" if i == 0 else None)
        first = per_seed[seeds[0]]
        hold = (first[k].get("buy_and_hold") or {}) if k < len(first) else {}
        if len(hold.get("time", ())):
            drawn = True
            ax.plot(_dates(hold["time"]), np.cumsum(np.asarray(hold["return"], np.float64)), color="0.3",
                    linewidth=1.3, label="buy and hold")
        if not drawn:
            _empty(ax, "no out-of-sample dates")
            continue
        _date_axis(ax)
        ax.axhline(0.0, color="0.6", linewidth=0.6)
        ax.set_ylabel("cum. log return after cost", fontsize="small")
        syms = (first[k].get("symbols") or []) if k < len(first) else []
        if count > 1 and syms:
            more = f" +{len(syms) - 6}" if len(syms) > 6 else ""
            ax.set_title(", ".join(syms[:6]) + more, fontsize="small")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize="small")
    if count > shown:
        axes[-1].set_xlabel(f"{count - shown} more test period(s) not drawn")
    fig.suptitle(f"Out of sample over every fold, {len(seeds)} seed(s)"
                 + (f" ({count} separate test periods)" if count > 1 else ""))
    return _save(fig, path)


def plot_headline_over_seeds(over_seeds: Mapping[str, Any], path: str | Path) -> Path:
    """The pooled headline of every predictor over seeds (summary.json's ``over_seeds``): a dot
    per seed, the mean with a bar of +- one std. Returns ``path``."""
    label = over_seeds["headline"]
    preds = over_seeds["predictors"]
    fig = _figure(9.0, 5.0)
    ax = fig.add_subplot()
    names = list(preds)
    drawn = False
    for i, name in enumerate(names):
        spread = preds[name][over_seeds["metric"]]
        vals = [v for v in (_finite(x) for x in spread["per_seed"]) if math.isfinite(v)]
        if not vals:
            continue
        drawn = True
        color = COLORS[i % len(COLORS)]
        ax.scatter([i] * len(vals), vals, color=color, s=18, alpha=0.7, zorder=3)
        mean, std = _finite(spread["mean"]), _finite(spread["std"])
        ax.errorbar([i + 0.15], [mean], yerr=[[std if math.isfinite(std) else 0.0]] * 2, color=color,
                    marker="o", capsize=4, linewidth=1.2)
    if not drawn:
        _empty(ax, f"no predictor has a pooled {label}")
        return _save(fig, path)
    ax.set_xticks(range(len(names)), names, fontsize="small")
    ax.axhline(0.0, color="0.6", linewidth=0.6)
    ax.set_ylabel(f"pooled {label}")
    ax.set_title(f"Pooled out-of-sample {label} over {len(over_seeds['seeds'])} seed(s): "
                 f"a dot per seed, mean +- std")
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def write_experiment_plots(out: Path, summary: Mapping[str, Any],
                           series_by_seed: Mapping[int, Mapping[str, Any]]) -> list[Path]:
    """Every walk-forward plot into ``out``; their paths."""
    from ..report import STRONG_BASELINES

    agg = summary["over_seeds"]
    shown = [n for n in agg["predictors"] if n == "model" or n in STRONG_BASELINES]  # readable
    return [plot_ic_per_fold(summary["runs"], shown, agg["headline"], out / IC_PER_FOLD),
            plot_oos_strategies(series_by_seed, out / OOS_STRATEGIES),
            plot_headline_over_seeds(agg, out / HEADLINE_OVER_SEEDS)]
