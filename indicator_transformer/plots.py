"""The run folder's PNG plots: loss curves, predicted vs realised, strategies, IC over time.

matplotlib is imported inside each function (importing the package stays fast) and used through
its Agg canvas on a bare ``Figure``, never through pyplot: no GUI backend is ever chosen, no
global figure registry keeps figures alive, and a user's own pyplot session in the same process
is left alone. Each PNG is rendered into memory and written with ``atomic_write_bytes``, so a
plot is complete under its final name or absent, never partial.

    write_plots(run_dir, report_series(tp), trainer.epoch_history, trainer.step_losses,
                trainer.steps_per_epoch, resume_steps)
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_write_bytes

LOSS_CURVES = "loss_curves.png"
PREDICTED_VS_REALISED = "predicted_vs_realised.png"
STRATEGIES = "strategies.png"
IC_OVER_TIME = "ic_over_time.png"
MAX_SCATTER = 20_000   # points drawn in the scatter; the fit line uses every sample
DPI = 100


# ----------------------------------------------------------------------------- figure plumbing
def _figure(width: float = 9.0, height: float = 5.0) -> Any:
    """A Figure on an Agg canvas (no pyplot, no GUI)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: str | Path) -> Path:
    """Render ``fig`` to PNG in memory, write it atomically, release the figure."""
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png")
    finally:
        fig.clear()   # a bare Figure is not in pyplot's registry: clearing frees its artists now
    return atomic_write_bytes(path, buf.getvalue())


def _empty(ax: Any, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def _moving_average(x: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over ``window`` values (fewer at the start), NaN-free input assumed."""
    x = np.asarray(x, np.float64)
    if len(x) == 0 or window <= 1:
        return x.copy()
    c = np.concatenate(([0.0], np.cumsum(x)))
    i = np.arange(1, len(x) + 1)
    lo = np.maximum(0, i - window)
    return (c[i] - c[lo]) / (i - lo)


def _dates(times_ns: np.ndarray) -> np.ndarray:
    """int64 nanoseconds since the epoch -> datetime64 for a date axis."""
    return np.asarray(times_ns, np.int64).astype("datetime64[ns]")


def _date_axis(ax: Any) -> None:
    import matplotlib.dates as mdates

    locator = mdates.AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))


# ----------------------------------------------------------------------------- the four plots
def plot_losses(history: Sequence[dict[str, Any]], step_losses: Sequence[float], steps_per_epoch: int,
                resume_steps: Sequence[int], path: str | Path) -> Path:
    """Per-step training loss (raw, faint, and smoothed) and per-epoch train / validation loss at
    the global step where each epoch ended, over the whole history; a dashed line at each resume
    (the global step where a resumed segment began). A NaN validation loss (empty split) is left
    out.

    Every curve is divided by its own split's loss of predicting the training mean (the epoch
    records' ``train_baseline`` / ``val_baseline``), so 1.0 means "no better than the constant"
    on both. Raw, a calmer validation period (its labels vary less in training units) put the
    validation loss far below the training loss with no model skill behind it. An older history
    without these figures is drawn raw, and the title says why the curves may sit apart.
    Returns ``path``."""
    fig = _figure()
    ax = fig.add_subplot()
    steps = np.asarray(step_losses, np.float64)
    per_epoch = max(1, int(steps_per_epoch))
    epochs = np.array([float(e["epoch"]) for e in history])
    if len(steps) == 0 and len(epochs) == 0:
        _empty(ax, "no training steps recorded")
        return _save(fig, path)
    train_base = np.array([_float(e.get("train_baseline")) for e in history])
    val_base = np.array([_float(e.get("val_baseline")) for e in history])
    scaled = bool(len(epochs)) and bool(np.all(np.isfinite(train_base) & (train_base > 0)))
    tb = float(train_base[-1]) if scaled else 1.0
    if len(steps):
        x = np.arange(1, len(steps) + 1)
        ax.plot(x, steps / tb, color="tab:blue", alpha=0.2, linewidth=0.6)
        ax.plot(x, _moving_average(steps, max(1, min(per_epoch, len(steps) // 20))) / tb, color="tab:blue",
                linewidth=1.2, label="train loss per step (smoothed)")
    if len(epochs):
        at = epochs * per_epoch
        train = np.array([float(e["train_loss"]) for e in history]) / (train_base if scaled else 1.0)
        val = np.array([_float(e.get("val_loss")) for e in history])
        if scaled:
            val = np.where(np.isfinite(val_base) & (val_base > 0), val / val_base, np.nan)
        ax.plot(at, train, "o-", color="tab:orange", markersize=3, label="train loss per epoch")
        if np.isfinite(val).any():
            ok = np.isfinite(val)
            ax.plot(at[ok], val[ok], "s-", color="tab:green", markersize=3, label="validation loss per epoch")
    if scaled:
        ax.axhline(1.0, color="0.5", linestyle=":", linewidth=1, label="predicting the training mean")
    for i, s in enumerate(resume_steps):
        ax.axvline(float(s), color="tab:red", linestyle="--", linewidth=1,
                   label="resumed here" if i == 0 else None)
    ax.set_xlabel("global step")
    if scaled:
        ax.set_ylabel("loss / loss of predicting the training mean")
        ax.set_title("Training history (each split's MSE over its own constant-prediction MSE)")
    else:
        ax.set_ylabel("loss (MSE on standardised labels)")
        ax.set_title("Training history (raw MSE: validation labels may vary less than training ones, "
                     "so the curves can sit apart)", fontsize="medium")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize="small")
    return _save(fig, path)


def plot_predicted_vs_realised(pred: np.ndarray, target: np.ndarray, path: str | Path) -> Path:
    """Scatter of the model's predicted against the realised forward return on the test split
    (at most ``MAX_SCATTER`` points, the same ones every time), with the least-squares line fitted
    on every finite sample. Returns ``path``."""
    pred, target = np.asarray(pred, np.float64), np.asarray(target, np.float64)
    ok = np.isfinite(pred) & np.isfinite(target)
    pred, target = pred[ok], target[ok]
    fig = _figure(7.0, 6.0)
    ax = fig.add_subplot()
    if len(pred) == 0:
        _empty(ax, "no test samples")
        return _save(fig, path)
    shown = np.arange(len(pred))
    if len(pred) > MAX_SCATTER:
        shown = np.sort(np.random.default_rng(0).choice(len(pred), MAX_SCATTER, replace=False))
    ax.scatter(pred[shown], target[shown], s=4, alpha=0.3, color="tab:blue", linewidths=0,
               label=f"test samples ({len(shown):,} of {len(pred):,} shown)" if len(shown) < len(pred)
               else f"test samples ({len(pred):,})")
    if len(pred) >= 2 and np.ptp(pred) > 0:
        slope, intercept = np.polyfit(pred, target, 1)
        xs = np.array([pred.min(), pred.max()])
        ax.plot(xs, intercept + slope * xs, color="tab:red", linewidth=1.5,
                label=f"least squares: realised = {intercept:+.2e} {slope:+.3f} x predicted")
    ax.axhline(0.0, color="0.6", linewidth=0.6)
    ax.axvline(0.0, color="0.6", linewidth=0.6)
    ax.set_xlabel("predicted forward return (log)")
    ax.set_ylabel("realised forward return (log)")
    ax.set_title("Predicted vs realised return, test split")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize="small")
    return _save(fig, path)


STRATEGY_LINES = (("sign_strategy", "model: sign of prediction", "tab:blue"),
                  ("long_short", "model: top-minus-bottom quantile", "tab:orange"),
                  ("buy_and_hold", "buy and hold (every symbol)", "0.3"))
MAX_PANELS = 6  # test periods drawn; more are named in the last panel's title


def plot_strategies(series: dict[str, Any], path: str | Path) -> Path:
    """Cumulative (log) return after cost of the model's sign strategy, its long-short when
    there is one, and buy-and-hold: one panel per distinct test period (``series["periods"]``,
    symbols whose test samples overlap in time), so test periods years apart are never stitched
    into one curve with a flat line across the gap. Each panel's title carries the period's
    symbols, its length and the sign strategy's Sharpe, flagged when the period is under a year.
    ``series`` is what :func:`indicator_transformer.report.report_series` returns (an older one
    without ``periods`` is drawn as one panel). Returns ``path``."""
    periods = [p for p in (series.get("periods") or [series]) if _period_has_data(p)]
    if not periods:
        fig = _figure()
        _empty(fig.add_subplot(), "no test dates")
        return _save(fig, path)
    shown = periods[:MAX_PANELS]
    fig = _figure(9.0, 3.2 + 2.3 * len(shown) if len(shown) > 1 else 5.0)
    axes = fig.subplots(len(shown), 1, squeeze=False)[:, 0]
    for ax, period in zip(axes, shown, strict=True):
        for key, label, color in STRATEGY_LINES:
            s = period.get(key)
            if not s or len(s["time"]) == 0:
                continue
            ax.plot(_dates(s["time"]), np.cumsum(np.asarray(s["return"], np.float64)), label=label,
                    color=color, linewidth=1.2)
        _date_axis(ax)
        ax.axhline(0.0, color="0.6", linewidth=0.6)
        ax.set_ylabel("cum. log return after cost", fontsize="small")
        ax.set_title(_period_title(period, series.get("bar", "?")), fontsize="small")
        ax.grid(alpha=0.3)
    if len(periods) > len(shown):
        axes[-1].set_xlabel(f"{len(periods) - len(shown)} more test period(s) not drawn")
    axes[0].legend(loc="upper left", fontsize="small")
    fig.suptitle("Strategies on the test split" + (f" ({len(periods)} separate test periods)"
                                                   if len(periods) > 1 else ""))
    return _save(fig, path)


def _period_has_data(period: dict[str, Any]) -> bool:
    return any(_has((period.get(k) or {}).get("time")) for k, _, _ in STRATEGY_LINES)


def _period_title(period: dict[str, Any], bar: str) -> str:
    """Symbols, length and the sign Sharpe of one test period, with a warning under a year."""
    syms = period.get("symbols") or []
    who = (", ".join(syms[:4]) + (f" +{len(syms) - 4}" if len(syms) > 4 else "")) if syms else "every symbol"
    n = period.get("periods_count")
    years = _float(period.get("years"))
    sharpe = _float(period.get("sign_sharpe"))
    length = f"{n:,} {bar} periods" if isinstance(n, int) else ""
    if math.isfinite(years):
        length += f" ({years:.2f} years)"
    text = f"{who}: {length}; sign Sharpe {sharpe:+.2f}" if math.isfinite(sharpe) else \
        f"{who}: {length}; too few periods for a Sharpe"
    if math.isfinite(years) and years < 1.0:
        text += " - under a year: says little"
    return text


def plot_ic_over_time(times: np.ndarray, ic: np.ndarray, path: str | Path) -> Path:
    """The per-date cross-sectional IC of the model, its rolling mean and its overall mean.
    Returns ``path``."""
    t, ic = np.asarray(times, np.int64), np.asarray(ic, np.float64)
    fig = _figure()
    ax = fig.add_subplot()
    if len(ic) == 0:
        _empty(ax, "no date with enough symbols for a cross-sectional IC")
        return _save(fig, path)
    window = max(5, len(ic) // 20) if len(ic) >= 5 else len(ic)
    d = _dates(t)
    ax.plot(d, ic, color="tab:blue", alpha=0.35, linewidth=0.7, label="IC per date")
    ax.plot(d, _moving_average(ic, window), color="tab:blue", linewidth=1.5,
            label=f"rolling mean ({window} dates)")
    mean = float(ic.mean())
    ax.axhline(mean, color="tab:red", linestyle="--", linewidth=1, label=f"mean {mean:+.4f}")
    ax.axhline(0.0, color="0.6", linewidth=0.6)
    _date_axis(ax)
    ax.set_ylabel("cross-sectional IC (Pearson)")
    ax.set_title("Cross-sectional IC over time, test split")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize="small")
    return _save(fig, path)


# ----------------------------------------------------------------------------- all of them
def write_plots(folder: str | Path, series: dict[str, Any], history: Sequence[dict[str, Any]],
                step_losses: Sequence[float], steps_per_epoch: int, resume_steps: Sequence[int]
                ) -> tuple[list[Path], dict[str, str]]:
    """Write every plot that has data into ``folder``; return their paths and, for each plot not
    drawn, why (``{file name: reason}``: the caller logs it and records it in the summary, so a
    missing picture is never silent).

    A plot without data (no cross-section with a single symbol, no test samples, no steps) is not
    drawn, and a file of that name left by an earlier evaluation in the same run folder is removed:
    a stale picture beside a fresh report would be silently wrong."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ic = series.get("ic_over_time") or {}
    plans = [
        (LOSS_CURVES, None if len(step_losses) or len(history) else
         "no training steps are recorded (an evaluation without the run's history)",
         lambda p: plot_losses(history, step_losses, steps_per_epoch, resume_steps, p)),
        (PREDICTED_VS_REALISED, None if _has(series.get("pred")) and _has(series.get("target")) else
         "the test split has no samples",
         lambda p: plot_predicted_vs_realised(series["pred"], series["target"], p)),
        (STRATEGIES, None if any(_has((series.get(k) or {}).get("time")) for k, _, _ in STRATEGY_LINES) else
         "the test split has no dates",
         lambda p: plot_strategies(series, p)),
        (IC_OVER_TIME, None if _has(ic.get("ic")) else
         "no test date has 3 or more symbols, so there is no cross-sectional IC to draw (one symbol, "
         "or symbols that never share a date, such as files covering different years)",
         lambda p: plot_ic_over_time(ic["time"], ic["ic"], p)),
    ]
    written, skipped = [], {}
    for name, why_not, draw in plans:
        path = folder / name
        if why_not is None:
            written.append(draw(path))
        else:
            skipped[name] = why_not
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    return written, skipped


def _has(arr: Any) -> bool:
    return arr is not None and len(arr) > 0


def _float(v: Any) -> float:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else math.nan
