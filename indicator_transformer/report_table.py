"""The report as the fixed-width table printed at the end of every run (and by ``evaluate``).

    print(format_table(build_report(tp, fits), "Test split (best model (epoch 4))"))

Reads only the report dict (fresh, or loaded back from ``summary.json``), so a table rebuilt from a
summary is the same table. Layout, top to bottom: the sample counts; what the headline IC is and
why; one row per predictor (``*`` = clearly best, see :func:`.report.best_by_metric`); the
buy-and-hold reference; how each baseline was fitted; the strategy sample's length; notes and
warnings; the model per symbol; the verdict.
"""

from __future__ import annotations

import math
import textwrap
from typing import Any

from .report import as_number, field_value, fmt, fmt_int, verdict

MAX_SYMBOL_ROWS = 10
LINE = 108

# (best key, header, width, section, field, format)
_COLUMNS = (
    ("headline_mse", "MSE/mean", 10, "headline", "mse_ratio", ".4f"),
    ("hit_rate", "hit rate", 10, "pooled", "hit_rate", ".4f"),
    ("ic", "pooled IC", 11, "pooled", "ic", "+.4f"),
    ("rank_ic", "rank IC", 10, "pooled", "rank_ic", "+.4f"),
)
_OPTIONAL = (
    ("sign_sharpe", "sign Sharpe", 13, "sign_strategy", "sharpe", "+.2f"),
    ("long_short_sharpe", "L/S Sharpe", 12, "long_short", "sharpe", "+.2f"),
)


def format_table(report: dict[str, Any], title: str) -> str:
    """The whole table as one string of lines at most LINE characters wide."""
    preds = report["predictors"]
    best = report.get("best") or {}
    head = report.get("headline") or {}
    label = head.get("label", "IC")
    model = preds["model"]
    up = fmt(field_value(model, "pooled", "always_long"))
    # The title on its own line, so a long title never pushes the figures past the width.
    lines = [f"{title}:",
             f"  {fmt_int(report.get('samples'))} samples, {fmt_int(report.get('symbols'))} symbols, "
             f"{fmt_int(report.get('dates'))} dates; always long hits {up}; "
             f"cost {fmt(as_number(report.get('cost_bps')), '.1f')} bps"]
    if head:
        lines += _wrap(f"Headline: {label}, {head.get('reason', '')}; MSE/mean {head.get('mse_reason', '')}.")
    cols = list(_COLUMNS) + [c for c in _OPTIONAL if any(math.isfinite(field_value(p, c[3], c[4]))
                                                         for p in preds.values())]
    width = max(11, *(len(n) for n in preds))
    head_col = f"{label} (t)"
    lines.append("  " + "predictor".ljust(width) + f"{head_col:>18}"
                 + "".join(f"{c[1]:>{c[2]}}" for c in cols))
    for name, p in preds.items():
        cells = [_headline_cell(p, best.get("headline_ic") == name)]
        cells += [_cell(p, c, best.get(c[0]) == name) for c in cols]
        lines.append("  " + name.ljust(width) + "".join(cells))
    lines += _wrap("* = ahead of every other predictor, and of no skill (IC or Sharpe 0, MSE/mean 1, the hit "
                   "rate of always long), by more than its standard error; t and errors are adjusted for "
                   "overlapping labels")
    lines.append(_buy_and_hold_line(report))
    fits = report.get("baseline_fits") or {}
    if fits:
        lines.append("  Baselines as fitted:")
        for f in fits.values():
            lines += textwrap.wrap(str(f.get("text", "")), LINE, initial_indent="    ",
                                   subsequent_indent="      ")
    lines += _strategy_length(report)
    scope = report.get("strategy_scope") or {}
    if scope.get("note"):
        lines += _wrap(f"Note: {scope['note']}")
    for w in report.get("warnings") or []:
        lines += _wrap(f"warning: {w}")
    lines += _symbol_block(model)
    lines += textwrap.wrap(f"Verdict: {report.get('verdict') or verdict(report)}", LINE,
                           subsequent_indent="  ")
    return "\n".join(lines)


def _wrap(text: str) -> list[str]:
    return textwrap.wrap(text, LINE, initial_indent="  ", subsequent_indent="    ")


def _headline_cell(p: dict[str, Any], best: bool) -> str:
    ic, t = field_value(p, "headline", "ic"), field_value(p, "headline", "ic_t_adj")
    text = f"{fmt(ic, '+.4f')} ({fmt(t, '+.2f')})" if math.isfinite(ic) else "-"
    return f"{text + ('*' if best else ' '):>18}"


def _cell(p: dict[str, Any], col: tuple[Any, ...], best: bool) -> str:
    _, _, width, section, name, spec = col
    return f"{fmt(field_value(p, section, name), spec) + ('*' if best else ' '):>{width}}"


def _buy_and_hold_line(report: dict[str, Any]) -> str:
    bh = report.get("buy_and_hold") or {}
    return (f"  buy and hold (every symbol long): Sharpe {fmt(as_number(bh.get('sharpe')), '+.2f')}, "
            f"annual return {fmt(as_number(bh.get('ann_return')), '+.4f')}, max drawdown "
            f"{fmt(as_number(bh.get('max_drawdown')), '.4f')}")


def _strategy_length(report: dict[str, Any]) -> list[str]:
    """How long the strategy sample is, and how uncertain a Sharpe from it: a 5-month split's
    annualised 3.57 means little, and the table says so beside it."""
    ss = report["predictors"]["model"].get("sign_strategy") or {}
    periods, years = ss.get("periods"), as_number(ss.get("years"))
    if not periods:
        return []
    bar = (report.get("strategy_scope") or {}).get("bar", "?")
    se = as_number(ss.get("sharpe_se"))
    text = (f"Sharpe figures: {periods:,} periods of {bar} bars"
            + (f" ({years:.2f} years)" if math.isfinite(years) else "")
            + (f"; the model's sign Sharpe has a standard error of about {se:.2f}" if math.isfinite(se) else
               "; too few periods for an annualised figure" if periods < 20 else ""))
    periods_list = report.get("test_periods") or []
    if len(periods_list) > 1:
        text += (f"; {len(periods_list)} separate test periods ("
                 + ", ".join(f"{p['from'][:10]} to {p['to'][:10]}" for p in periods_list[:4])
                 + (" ..." if len(periods_list) > 4 else "") + ")")
    return _wrap(text)


def _symbol_block(model: dict[str, Any]) -> list[str]:
    """The model per symbol, at most MAX_SYMBOL_ROWS rows, sorted by symbol."""
    by = model.get("by_symbol") or {}
    if not by:
        return []
    names = sorted(by)
    width = max(6, *(len(s) for s in names[:MAX_SYMBOL_ROWS]))
    lines = ["Model per symbol:",
             f"  {'symbol'.ljust(width)}  {'samples':>9}  {'IC (t)':>16}  {'hit rate / always long':>22}  "
             f"{'MSE/mean':>8}"]
    for s in names[:MAX_SYMBOL_ROWS]:
        r = by[s]
        ic, t = as_number(r.get("ic")), as_number(r.get("ic_t_adj"))
        ic_text = f"{fmt(ic, '+.4f')} ({fmt(t, '+.2f')})" if math.isfinite(ic) else "-"
        hit = f"{fmt(as_number(r.get('hit_rate')))} / {fmt(as_number(r.get('always_long')))}"
        lines.append(f"  {s.ljust(width)}  {fmt_int(r.get('samples')):>9}  {ic_text:>16}  {hit:>22}  "
                     f"{fmt(as_number(r.get('mse_ratio'))):>8}")
    if len(names) > MAX_SYMBOL_ROWS:
        lines.append(f"  ... {len(names) - MAX_SYMBOL_ROWS} more")
    return lines
