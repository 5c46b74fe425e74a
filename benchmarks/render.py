"""results.json (run_all.py) -> BENCHMARKS.md: one table per area, every figure from the run."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

MB = 2**20


# --------------------------------------------------------------------------- cells
def num(x: Any, digits: int = 0, scale: float = 1.0) -> str:
    return "n/a" if x is None else f"{x * scale:,.{digits}f}"


def spread(s: dict[str, Any] | None, digits: int = 0, scale: float = 1.0) -> str:
    """'median (min-max)' of a common.stats() dict; the median alone for one repeat."""
    if not s or s.get("median") is None:
        return "n/a"
    if s.get("n") == 1 or s["min"] == s["max"]:
        return num(s["median"], digits, scale)
    return (
        f"{num(s['median'], digits, scale)} ({num(s['min'], digits, scale)}-{num(s['max'], digits, scale)})"
    )


def ratio(s: dict[str, Any] | None) -> str:
    """'1.02x (0.98-1.05)': the median ratio with its min-max over repeats."""
    if not s or s.get("median") is None:
        return "n/a"
    text = spread(s, 2)
    return text.replace(" (", "x (", 1) if " (" in text else text + "x"


def table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join([*lines, *("| " + " | ".join(r) + " |" for r in rows)])


def commands(area: dict[str, Any]) -> str:
    return "```\n" + "\n".join(area.get("commands", [])) + "\n```"


# --------------------------------------------------------------------------- areas
def throughput(a: dict[str, Any]) -> str:
    s, sps = a["setup"], a["samples_per_s"]
    rows = [
        ["ours (Trainer)", spread(sps["ours"]), "1.00x"],
        ["bare PyTorch loop", spread(sps["bare"]), ratio(a["ratio_vs_bare"])],
        ["Lightning Trainer", spread(sps["lightning"]), ratio(a["ratio_vs_lightning"])],
    ]
    return (
        f"{s['symbols']} symbols x {s['bars']} bars, {s['train_windows']:,} training windows, batch "
        f"{s['batch_size']}, {s['steps_per_epoch']} steps/epoch, {s['parameters']:,} parameters, "
        f"{s['torch_threads']} torch threads, num_workers 0, one checkpoint per epoch, "
        f"{s['repeats']} interleaved repeats.\n\n"
        + table(["loop", "samples/s median (min-max)", "ours / this, per repeat"], rows)
    )


def options(a: dict[str, Any]) -> str:
    """bench_options.py's rows (its --json: name, description, samples_per_s, ratio, same_results)."""
    if "missing" in a:
        return f"HOOK: {a['missing']}; run_all.py runs it as soon as it does (`--json`, rows below)."
    rows = [
        [
            r["name"],
            spread(r["samples_per_s"]),
            ratio(r["ratio"]),
            r.get("same_results", ""),
            r.get("description", ""),
        ]
        for r in a.get("rows", [])
    ]
    notes = "".join(f"\n- {n}" for n in a.get("notes", []))
    return table(
        [
            "option",
            "samples/s",
            f"ratio to {a.get('reference', 'the reference')}, per repeat",
            "results",
            "what",
        ],
        rows,
    ) + ("\n" + notes if notes else "")


def interrupt(a: dict[str, Any]) -> str:
    s = a["setup"]
    names = {
        "ours": "ours",
        "lightning": "Lightning, default ModelCheckpoint",
        "lightning_on_exception": "Lightning + OnExceptionCheckpoint",
    }
    parts = [
        f"SIGINT after optimizer step {s['pause_step']} (mid epoch 2, {s['steps_per_epoch']} steps per "
        f"epoch), {s['repeats']} repeat(s) per variant."
    ]
    for workers, summary in a["workers"].items():
        rows = []
        for key, label in names.items():
            v = summary[key]
            rows.append(
                [
                    label,
                    spread(v["exit_s"], 2),
                    "1.00x" if key == "ours" else ratio(v.get("ratio_exit_s")),
                    spread(v["steps_lost"]),
                    ", ".join(map(str, v["exit_codes"])),
                    num(v["processes_left"]),
                    f"{v['runs'] - len(v['failures'])}/{v['runs']}",
                ]
            )
        parts.append(
            f"`--num-workers {workers}`\n\n"
            + table(
                [
                    "variant",
                    "SIGINT -> exit, s",
                    "ours / this (exit time)",
                    "steps lost",
                    "exit code",
                    "processes left",
                    "runs ok",
                ],
                rows,
            )
        )
    return "\n\n".join(parts)


def resume(a: dict[str, Any]) -> str:
    s = a["setup"]
    rows = [
        [who, "yes" if a[key]["bit_exact"] else "no", f"{a[key]['max_abs_diff']:.3g}", a[key]["checkpoint"]]
        for who, key in (("ours", "ours"), ("Lightning (resumed mid-epoch)", "lightning"))
    ]
    control = a["lightning"].get("uninterrupted_runs_equal")
    note = (
        ""
        if control is None
        else (f" Control: two uninterrupted Lightning runs are {'' if control else 'NOT '}bit-identical.")
    )
    return (
        f"{s['epochs']} epochs uninterrupted vs SIGINT after step {s['pause_step']} (mid epoch 2) and "
        f"resumed.{note}\n\n"
        + table(["run", "bit-exact", "largest parameter difference", "resumed from"], rows)
    )


def checkpoint(a: dict[str, Any]) -> str:
    s, pct = a["setup"], a["pct_of_epoch"]
    rows = [
        [
            "ours (atomic, verified)",
            num(a["size_bytes"]["ours"] / 1024),
            spread(a["save_s"]["ours"], 1, 1e3),
            spread(a["load_s"]["ours"], 1, 1e3),
            "1.00x",
            "1.00x",
        ]
    ]
    for key, label in (("bare", "plain torch.save / torch.load"), ("lightning", "Lightning save_checkpoint")):
        rows.append(
            [
                label,
                num(a["size_bytes"][key] / 1024),
                spread(a["save_s"][key], 1, 1e3),
                spread(a["load_s"][key], 1, 1e3),
                ratio(a[f"save_ratio_vs_{key}"]),
                ratio(a[f"load_ratio_vs_{key}"]),
            ]
        )
    return (
        f"{s['symbols']} x {s['bars']}, {s['repeats']} interleaved repeats. Periodic cost of ours: "
        f"{pct['per_epoch']:.2f}% of an epoch's training ({s['epoch_s']:.2f} s) at the default (one per "
        f"epoch), {pct['every_100_steps']:.2f}% with `--checkpoint-every 100`.\n\n"
        + table(
            [
                "checkpoint",
                "size KiB",
                "save ms",
                "load ms",
                "ours / this save time",
                "ours / this load time",
            ],
            rows,
        )
    )


def preparation(a: dict[str, Any]) -> str:
    """bench_prepare.py's --json: runs (seconds per repeat, bars/s) and ratios within each repeat."""
    runs, r = a["runs"], a["ratios"]
    ceiling = common_median(runs["ceiling"]["bars_per_s"])
    labels = {
        "cold_1": "cold, 1 worker",
        "cold_2": f"cold, {a['workers']} workers",
        "warm_2": f"warm, {a['workers']} workers",
        "ceiling": "TA-Lib alone, arrays in memory, 1 core",
    }
    rows = []
    for key, label in labels.items():
        rate = common_median(runs[key]["bars_per_s"])
        rows.append(
            [label, spread(runs[key], 3), num(rate), f"{rate / ceiling:.1%}" if rate and ceiling else "n/a"]
        )
    return (
        f"{a['symbols']} symbols x {a['bars']} bars, CSV input, {a['repeats']} repeat(s). Within each "
        f"repeat: {a['workers']} workers vs 1 x{spread(r['speedup_2_vs_1'], 2)}; warm start "
        f"{spread(r['warm_fraction_of_cold_2'], 1, 100)}% of a cold preparation; the pipeline (cold, "
        f"{a['workers']} workers) runs at {spread(r['pipeline_fraction_of_ceiling_1_core'], 2)} of the "
        f"one-core TA-Lib ceiling ({spread(r['pipeline_fraction_of_ceiling_2_cores'], 2)} of it on "
        f"{a['workers']} cores).\n\n"
        + table(["measurement", "seconds", "bars/s (median)", "of the ceiling"], rows)
    )


def common_median(xs: list[float]) -> float | None:
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return None
    mid = len(xs) // 2
    return xs[mid] if len(xs) % 2 else (xs[mid - 1] + xs[mid]) / 2


def memory(a: dict[str, Any]) -> str:
    runs = a["runs"]
    base = runs[0]["memory"]["rss"] if runs else 0
    rows = [
        [
            r["label"].split(" sym")[0],
            num(r["memory"]["rss"] / MB),
            num(r["memory"]["uss"] / MB),
            f"{r['memory']['rss'] / base:.2f}x" if base else "n/a",
            num(r["samples_per_s"]),
            str(r["exit_code"]),
        ]
        for r in runs
    ]
    return (
        "Training (`--num-workers 0`), the process tree sampled every 0.1 s until SIGTERM at a pause "
        "point.\n\n"
        + table(["symbols", "peak RSS MB", "peak USS MB", "RSS / smallest", "samples/s", "exit"], rows)
    )


def startup(a: dict[str, Any]) -> str:
    s, sec = a["seconds"], a["seconds"]
    rows = [
        ["fresh", spread(s["ours_fresh"], 2), spread(sec["lightning_fresh"], 2), ratio(a["ratio_fresh"])],
        [
            "resumed",
            spread(s["ours_resumed"], 2),
            spread(sec["lightning_resumed"], 2),
            ratio(a["ratio_resumed"]),
        ],
    ]
    return (
        f"Process start -> first optimizer step, warm feature cache, resumed at step "
        f"{a['setup']['resume_step']}, {a['setup']['repeats']} interleaved repeat(s).\n\n"
        + table(["start", "ours, s", "Lightning, s", "ours / Lightning (time)"], rows)
    )


def walk_forward(a: dict[str, Any]) -> str:
    sec = a["seconds"]
    rows = [["shell loop of train commands", num(sec["loop"], 1), "1.00x"],
            ["walk-forward --jobs 1", num(sec["jobs_1"], 1), f"{sec['jobs_1'] / sec['loop']:.3f}x"],
            ["walk-forward --jobs 2", num(sec["jobs_2"], 1), f"{sec['jobs_2'] / sec['loop']:.3f}x"]]
    return (f"The same {a['runs']} runs ({a['threads_per_run']} thread(s) each, {a['cpus']} cores), one "
            f"command each: the experiment's overhead over a shell loop is "
            f"{100 * a['overhead_jobs_1_vs_loop']:+.1f}%, --jobs 2 is {a['speedup_jobs_2_vs_loop']:.2f}x the "
            f"loop's speed. One repeat each, wall time of whole commands.\n\n"
            + table(["variant", "seconds", "time / loop"], rows))


def _pm(s: dict[str, Any]) -> str:
    if s.get("mean") is None:
        return "-"
    return f"{s['mean']:+.4f}" + (f" ± {s['std']:.4f}" if s.get("std") is not None else "")


def walk_forward_report(a: dict[str, Any]) -> str:
    parts = []
    for name, m in a["markets"].items():
        order = ["model", *sorted(p for p in m["predictors"] if p != "model")]
        rows = []
        for p in order:
            v = m["predictors"][p]
            against = m["model_against"].get(p)
            wins = (f"{against['ahead_in']} / {against['clearly_ahead_in']} of {against['of']}"
                    if against else "")
            rows.append([p, _pm(v[m["metric"]]), _pm(v["mse_ratio"]), wins])
        folds = [[str(f["fold"]), "per symbol" if "=" in str(f["test_start"]) else str(f["test_start"])[:10],
                  *(_pm(f["predictors"][p]["ic"]) for p in ("model", "ridge", "lightgbm"))]
                 for f in m["per_fold"]]
        took = (f"its runs took {m['runs_seconds']:.0f} s in all, this command {m['seconds']:.0f} s"
                if "runs_seconds" in m else f"{m['seconds']:.0f} s")
        parts += [f"**{name}**: `{m['command']}` (folds on the {m['calendar']} calendar; {took})", "",
                  table(["predictor", f"pooled {m['headline']}", "MSE/mean",
                         "model ahead / by more than its SE, seeds"], rows), "",
                  table(["fold", "test from", f"model {m['headline']}", "ridge", "lightgbm"], folds), "",
                  f"Verdict: {m['verdict']}", ""]
    return "\n".join(parts).rstrip()


def sweep(a: dict[str, Any]) -> str:
    parts = []
    o = a.get("overhead")
    if o:
        parts += [f"Overhead: the sweep's {o['trials']} trials against the same settings run one by one as "
                  f"train commands: {o['overhead_per_trial_s']:+.2f} s per trial "
                  f"({100 * o['overhead_fraction']:+.1f}%).", "",
                  table(["variant", "seconds"],
                        [["train commands, one per trial", num(o["seconds"]["loop"], 1)],
                         ["indicator-transformer sweep", num(o["seconds"]["sweep"], 1)]]),
                  ""]
    lo = a.get("lost")
    if lo:
        rows = [[s["kind"], str(s["stopped_at_step"]), str(s["resumed_at_step"]), str(s["lost_steps"]),
                 str(s["lost_steps_optuna_retry"])] if s["stopped_at_step"] is not None else
                [s["kind"], "outside training (start-up, between trials)", "-", "0", "0"]
                for s in lo["stops"]]
        parts += [f"Work lost per interruption (stops at seeded random moments, seed {lo['seed']}; the "
                  f"final trials equal an uninterrupted sweep's: {lo['same_trials_as_uninterrupted']}):", "",
                  table(["stop", "trial's step at the stop", "continued from", "steps lost",
                         "Optuna's retry would lose"], rows), ""]
    q = a.get("quality")
    if q:
        parts += [f"A {q['trials']}-trial sweep on the built-in market ({q['jobs']} at a time; "
                  f"{', '.join(f'{v} {k}' for k, v in q['states'].items())}): best validation loss "
                  f"{q['sweep_best_val_loss']:.4f} against the default settings' "
                  f"{q['default_best_val_loss']:.4f}; "
                  f"best values {q['best_params']}; {q['seconds']['sweep']:.0f} s (the default run: "
                  f"{q['seconds']['default']:.0f} s).", ""]
    return "\n".join(parts).rstrip()


SECTIONS: dict[str, tuple[str, Callable[[dict[str, Any]], str]]] = {
    "throughput": ("1. Training throughput: ours vs a bare loop vs Lightning", throughput),
    "options": ("1b. Training options vs the bare fp32 loop", options),
    "interrupt": ("2. Interrupt: SIGINT mid-epoch", interrupt),
    "resume": ("3. Resume: equal to the uninterrupted run?", resume),
    "checkpoint": ("4. Checkpoint: size, save, load, periodic cost", checkpoint),
    "preparation": ("5. Preparation: threads, warm start, the TA-Lib ceiling", preparation),
    "memory": ("6. Memory against universe size", memory),
    "startup": ("7. Start-up", startup),
    "walk_forward": ("8. Walk-forward: the experiment vs a shell loop, --jobs 2", walk_forward),
    "walk_forward_report": ("9. Walk-forward verdict: 4 folds x 3 seeds, built-in and public data",
                            walk_forward_report),
    "sweep": ("10. Sweeps: overhead per trial, work lost per stop, what 20 trials find", sweep),
}


def headline(areas: dict[str, Any]) -> list[str]:
    """The ratios the README quotes, when their areas ran."""
    out = []
    tp = areas.get("throughput", {})
    if "ratio_vs_bare" in tp:
        out.append(
            f"- Throughput: ours is {ratio(tp['ratio_vs_bare'])} a bare PyTorch loop and "
            f"{ratio(tp['ratio_vs_lightning'])} Lightning."
        )
    intr = areas.get("interrupt", {}).get("workers", {}).get("0")
    if intr:
        out.append(
            f"- Ctrl-C mid-epoch: ours exits in {spread(intr['ours']['exit_s'], 2)} s losing "
            f"{spread(intr['ours']['steps_lost'])} steps; Lightning in "
            f"{spread(intr['lightning']['exit_s'], 2)} s losing {spread(intr['lightning']['steps_lost'])}."
        )
    res = areas.get("resume", {})
    if "ours" in res:
        out.append(
            f"- Resume bit-exact: ours {'yes' if res['ours']['bit_exact'] else 'no'}, Lightning "
            f"{'yes' if res['lightning']['bit_exact'] else 'no'}."
        )
    return out


def render(results: dict[str, Any]) -> str:
    """The whole BENCHMARKS.md."""
    m = results["machine"]
    lines = [
        "# Benchmarks",
        "",
        f"Generated by `{results['command']}` on {results['started']} in {results.get('wall_s', 0):.0f} s. "
        "Every figure below comes from that run (`benchmarks/results.json`); nothing is typed by hand. "
        "Each figure is the median over interleaved repeats with (min-max); ratios are taken per "
        "repeat, so background load hits both sides alike.",
        "",
    ]
    quick = [name for name, area in results.get("areas", {}).items() if area.get("quick")]
    if results.get("quick") and (not results.get("merged") or not quick):
        lines += ["**Trial run (`--quick`): small markets and one repeat. Not the published figures.**", ""]
    elif quick:  # a merge: only the areas rerun with --quick are trial figures
        lines += [f"**Trial run (`--quick`, small markets and one repeat) for: {', '.join(quick)}. "
                  f"The other areas are full runs.**", ""]
    lines += [
        table(
            ["machine", ""],
            [
                ["CPU", f"{m['cpu']} ({m['cpus']} CPUs, {m['torch_threads']} torch threads)"],
                ["OS", m["os"]],
                [
                    "versions",
                    f"Python {m['python']}, torch {m['torch']}, pytorch-lightning {m['pytorch_lightning']}, "
                    f"NumPy {m['numpy']}, TA-Lib {m['talib']}",
                ],
                [
                    "load average 1/5/15",
                    f"{m['load_average']} at the start, {results.get('load_end', 'n/a')} at the end",
                ],
            ],
        ),
        "",
        *headline(results["areas"]),
        "",
    ]
    for key, area in results["areas"].items():
        title, fn = SECTIONS[key]
        lines += [f"## {title}", ""]
        if "error" in area:
            lines += ["**Failed** in this run:", "", "```", area["error"][-1500:], "```", ""]
            continue
        lines += [
            fn(area),
            "",
            commands(area) if area.get("commands") else "",
            f"({area['wall_s']:.0f} s, load after {area['load_after']}"
            + (f"; run {area['started']}" if results.get("merged") and area.get("started") else "") + ")",
            "",
        ]
    return "\n".join(lines)
