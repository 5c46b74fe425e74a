"""What a sweep reports, from the study and the trials' folders (nothing is trained here):

    DIR/trials.csv                 one row per trial: number, state, values, objective, epochs, seconds
    DIR/summary.json               the same, the best trial (selected on validation) and its test
                                   report against the baselines, the parameter importances
    DIR/best.toml                  the best trial's settings: train_indicator_transformer.py
                                   --config best.toml trains the same model bit for bit
    DIR/optimization_history.png   the objective per trial, and the best so far
    DIR/parallel_coordinate.png    each trial's values and objective
"""

from __future__ import annotations

import csv
import io
import json
import sys
import warnings
from pathlib import Path
from typing import Any, TextIO

from ..atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from ..config import Config, to_toml
from ..integrity import IntegrityError, check_json, json_safe
from .storage import db_errors, shown
from .study import FAILED_KEY, SKIPPED_KEY, TrialSpec, trial_root

PLOTS = ("optimization_history.png", "parallel_coordinate.png")
COLUMNS = ["trial", "state", "objective", "epochs", "pruned", "seconds", "params", "note"]


def trial_rows(trials: list[Any], names: list[str]) -> list[dict[str, Any]]:
    """One dict per trial, for the table, trials.csv and summary.json."""
    rows = []
    for t in trials:
        note = t.user_attrs.get(SKIPPED_KEY) or t.user_attrs.get(FAILED_KEY) or ""
        if t.state.name == "PRUNED" and t.intermediate_values:
            note = f"pruned after epoch {max(t.intermediate_values)}"
        value = t.value if t.value is not None else (
            t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else None)
        epochs = t.user_attrs.get("epochs") or (max(t.intermediate_values) if t.intermediate_values else None)
        rows.append({"trial": t.number, "state": t.state.name.lower(), "objective": value, "epochs": epochs,
                     "pruned": t.state.name == "PRUNED", "seconds": t.user_attrs.get("seconds"),
                     "params": {k: t.params[k] for k in names if k in t.params}, "note": note})
    return rows


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, dict):
        return ", ".join(f"{k}={_cell(x)}" for k, x in v.items())
    return str(v)


def print_trials(rows: list[dict[str, Any]], stream: TextIO) -> None:
    """The table of trials."""
    from ..cli.common import print_table

    print_table(COLUMNS, [[_cell(r[c]) if c != "pruned" else ("yes" if r[c] else "") for c in COLUMNS]
                          for r in rows], stream=stream)


def best_report(out: Path, best: Any) -> dict[str, Any] | None:
    """The best trial's evaluation.json (its test report against the baselines), or None."""
    from ..run import EVALUATION_FILE

    path = trial_root(out, best.number) / "models" / EVALUATION_FILE
    try:
        return check_json(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, IntegrityError):
        return None


def importances(study: Any) -> tuple[dict[str, float] | None, str]:
    """Optuna's PED-ANOVA importances of the parameters over the completed trials (no SciPy
    forest needed), or None and why not."""
    import optuna

    done = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if len(done) < 3:
        return None, f"{len(done)} completed trial(s): at least 3 are needed"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            values = optuna.importance.get_param_importances(
                study, evaluator=optuna.importance.PedAnovaImportanceEvaluator())
        return {k: float(v) for k, v in values.items()}, ""
    except (ValueError, RuntimeError, ZeroDivisionError) as e:
        return None, str(e).splitlines()[0] if str(e) else type(e).__name__


def write_plots(study: Any, out: Path, stream: TextIO) -> list[str]:
    """The history and parallel-coordinate plots (Optuna's matplotlib ones); the names written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    made = []
    for name, draw in ((PLOTS[0], ovm.plot_optimization_history), (PLOTS[1], ovm.plot_parallel_coordinate)):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = draw(study)
                fig = (ax if not hasattr(ax, "__len__") else ax.flat[0]).figure
                buf = io.BytesIO()
                fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
                plt.close(fig)
            atomic_write_bytes(out / name, buf.getvalue())
            made.append(name)
        except (ValueError, RuntimeError, TypeError, IndexError) as e:
            print(f"note: {name} not drawn: {str(e).splitlines()[0] if str(e) else type(e).__name__}",
                  file=stream, flush=True)
    return made


def best_toml(base: Config, spec: TrialSpec) -> str:
    """The best trial's settings as a config file that trains the same model. The models folder is
    left to the command (the default, or --models-dir: never the sweep's own), and a default seed
    is left out, so that ``walk-forward --config best.toml`` takes the file as it is."""
    cfg = spec.config(base)
    lines = []
    for line in to_toml(cfg).splitlines():
        if line.startswith(("models_dir = ", "runs_dir = ")):
            line = f"# {line.split(' = ')[0]}: not set here (the command's default, or its flag)"
        elif line == "seed = 0":
            line = "# seed = 0 is the default (walk-forward --seeds sets its own)"
        lines.append(line)
    head = (f"# The best trial ({spec.number}) of a sweep, selected on validation.\n"
            f"# python train_indicator_transformer.py --config best.toml [--models-dir DIR]\n"
            f"# trains the same model bit for bit (the same data, threads and device type);\n"
            f"# indicator-transformer walk-forward --config best.toml confirms it out of sample.\n")
    return head + "\n".join(lines) + "\n"


def write_report(sweep: Any, stream: TextIO | None = None, plots: bool = True) -> dict[str, Any]:
    """Every report file of the sweep, and the table and the best trial printed."""
    return report(sweep.study, sweep.out, sweep.study_name, sweep.url, sweep.objective, sweep.space.names(),
                  sweep.base, stream, plots=plots, write=True)


def report(study: Any, out: Path, study_name: str, url: str, objective: str, names: list[str],
           base: Config | None, stream: TextIO | None = None, *, plots: bool = True, write: bool = True
           ) -> dict[str, Any]:
    """The table of trials, the best trial (selected on validation) with its test report against
    the baselines, the importances; with ``write`` also trials.csv, summary.json, best.toml (needs
    ``base``) and the plots. ``--status`` prints the same and writes nothing."""
    stream = stream or sys.stderr
    with db_errors(url, "reading the trials"):
        trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
        complete = [t for t in trials if t.state.name == "COMPLETE"]
        best = study.best_trial if complete else None
        imp, why = importances(study)
    rows = trial_rows(trials, names)
    print(f"Sweep {study_name!r}: {len(trials)} trial(s) ({objective}, "
          f"{'lower' if objective == 'val_loss' else 'higher'} is better, on the validation split):",
          file=stream, flush=True)
    print_trials(rows, stream)
    if write:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["trial", "state", "objective", "epochs", "pruned", "seconds", *names, "note"])
        for r in rows:
            w.writerow([r["trial"], r["state"], r["objective"], r["epochs"], r["pruned"], r["seconds"],
                        *[r["params"].get(n) for n in names], r["note"]])
        atomic_write_text(out / "trials.csv", buf.getvalue())
    summary: dict[str, Any] = {"study": study_name, "storage": shown(url), "objective": objective,
                               "direction": "minimize" if objective == "val_loss" else "maximize",
                               "trials": rows, "best": None, "importances": imp,
                               "importances_note": why or None}
    if best is not None:
        spec = TrialSpec(best.number, dict(best.params), trial_root(out, best.number))
        rep = best_report(out, best)
        summary["best"] = {"trial": best.number, "params": dict(best.params), objective: best.value,
                           "selected_on": "validation", "run": str(spec.root),
                           "test": rep.get("test") if rep else None,
                           "baselines": rep.get("baselines") if rep else None,
                           "verdict": rep.get("verdict") if rep else None}
        if write and base is not None:
            atomic_write_text(out / "best.toml", best_toml(base, spec))
        print(f"\nBest trial: {best.number} ({objective} {best.value:.6g} on validation; "
              f"{', '.join(f'{k}={_cell(v)}' for k, v in best.params.items())})"
              + (f"; its settings: {out / 'best.toml'}" if (out / "best.toml").is_file() else ""),
              file=stream, flush=True)
        if rep is not None and isinstance(rep.get("report"), dict):
            from ..report_table import format_table

            print(format_table(rep["report"], f"Test split of trial {best.number}, selected on "
                                              f"validation (a sweep's best is optimistic: confirm it "
                                              f"with walk-forward --config best.toml)"),
                  file=stream, flush=True)
    else:
        print("\nNo trial completed yet: no best trial", file=stream, flush=True)
    if imp:
        print("Parameter importances (PED-ANOVA): " + ", ".join(f"{k} {v:.2f}" for k, v in imp.items()),
              file=stream, flush=True)
    elif why:
        print(f"note: no parameter importances: {why}", file=stream, flush=True)
    if write:
        if plots and complete:
            summary["plots"] = write_plots(study, out, stream)
        atomic_write_json(out / "summary.json", json_safe(summary))
    return summary
