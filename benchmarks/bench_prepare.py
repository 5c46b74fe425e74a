#!/usr/bin/env python3
"""Feature preparation: cold 1 worker vs 2 workers, warm start, the TA-Lib ceiling, peak memory.

    python benchmarks/bench_prepare.py                       # 500 symbols x 5000 bars, 3 repeats
    python benchmarks/bench_prepare.py --symbols 100 --bars 2000 --repeats 5 --json out.json

The universe is generated once as CSV files in a temporary folder (not timed). Each measurement
then runs in its own child interpreter, so its peak RSS (``ru_maxrss`` from ``os.wait4``) is its own
and no measurement warms another's Python-level caches. Every repeat measures, interleaved (the
order of the two cold runs alternates between repeats, so a machine getting busier or quieter
affects both alike):

* cold, 1 worker      fresh cache, ``--prep-workers 1``
* cold, 2 workers     another fresh cache, ``--prep-workers 2``
* warm, 2 workers     the cache that run filled: every symbol is a hit
* ceiling             TA-Lib alone, one core: the same TA-Lib calls the features make, on arrays
                      already in memory (no reading, parsing, transforms or writing)

plus, once, a baseline child (the same imports and file discovery, no preparation: the RSS floor).
Times are measured inside the child around the work only (interpreter start and imports
excluded). Ratios are taken within a repeat (cold 1 / cold 2 and warm / cold 2 of the same
repeat), then summarised as min/median/max: on a shared machine those are steadier than the
absolute figures. The pipeline's bars/s is also given as a fraction of the ceiling (one core, and
``workers`` cores at the one-core rate). Nothing is asserted.

``--json PATH`` writes the figures machine-readably (``benchmarks/run_all.py`` reads it)::

    {"benchmark": "prepare", "command": str, "machine": {"python", "numpy", "pandas", "talib",
                                                          "cpus", "platform"},
     "symbols": int, "bars": int, "repeats": int, "workers": 2,
     "runs": {"cold_1": S, "cold_2": S, "warm_2": S, "ceiling": S},
         # S = {"seconds": [per repeat], "bars_per_s": [per repeat],
         #      "min": s, "median": s, "max": s,                   (seconds)
         #      "peak_rss_bytes": max over repeats}                (not for the ceiling)
     "ratios": {"speedup_2_vs_1": R, "warm_fraction_of_cold_2": R,
                "pipeline_fraction_of_ceiling_1_core": R, "pipeline_fraction_of_ceiling_2_cores": R},
         # R = {"per_repeat": [...], "min": x, "median": x, "max": x}; the pipeline is cold, 2 workers
     "targets": {"speedup_2_vs_1": 1.3, "warm_fraction_of_cold_2": 0.05},
     "memory": {"baseline_rss_bytes": int, "cache_bytes": int, "largest_rss_over_baseline_bytes": int}}
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TARGET_WARM_FRACTION = 0.05   # warm start <= 5% of the cold time
TARGET_SPEEDUP = 1.3          # 2 workers >= 1.3x one
WORKERS = 2


# --------------------------------------------------------------------------- child side
Call = tuple[str, tuple[tuple[str, Any], ...], tuple[tuple[str, Any], ...]]


def _talib_calls(names: list[str]) -> list[Call]:
    """The distinct TA-Lib calls the named features make: (function, arguments, keywords), each
    argument ("column", OHLCV name) or ("value", v). Recorded by running each feature once on a
    small synthetic symbol."""
    import talib

    from indicator_transformer.data.features import registry
    from indicator_transformer.data.synthetic import synthetic_symbol

    x = synthetic_symbol(1, 0, 0, 300)
    columns = {id(getattr(x, c)): c for c in ("open", "high", "low", "close", "volume")}
    calls: dict[Call, None] = {}

    class Recorder:
        def __getattr__(self, fn: str) -> Any:
            def call(*args: Any, **kwargs: Any) -> Any:
                spec = tuple(("column", columns[id(a)]) if id(a) in columns else ("value", a) for a in args)
                calls[(fn, spec, tuple(sorted(kwargs.items())))] = None
                return getattr(talib, fn)(*args, **kwargs)
            return call

    known = registry()
    for n in names:
        known[n].fn(x, Recorder())
    return list(calls)


def _ceiling(sources: list, names: list[str]) -> float:
    """Seconds TA-Lib alone takes for the features' calls on every symbol, arrays in memory."""
    import talib

    from indicator_transformer.data.features import required_columns

    calls = [(getattr(talib, fn), spec, dict(kw)) for fn, spec, kw in _talib_calls(names)]
    required = required_columns(names)
    bars = [s.parse(s.read(), required=required) for s in sources]  # not timed
    start = time.perf_counter()
    for x in bars:
        for fn, spec, kwargs in calls:
            fn(*(getattr(x, v) if kind == "column" else v for kind, v in spec), **kwargs)
    return time.perf_counter() - start


def _child(args: argparse.Namespace) -> None:
    """One measurement, in a fresh interpreter; writes its figures as JSON to ``args.out``."""
    from indicator_transformer.config import FeatureConfig
    from indicator_transformer.data.cache import FeatureCache
    from indicator_transformer.data.folder import discover_files
    from indicator_transformer.data.prepare import prepare

    sources = discover_files(args.data_dir)
    figures: dict[str, Any] = {"symbols": len(sources)}
    if args.mode == "prepare":
        start = time.perf_counter()
        cache = FeatureCache(args.cache_dir).open()
        result = prepare(sources, FeatureConfig(), cache, workers=args.threads, show_progress=False,
                         pool=args.pool)
        figures.update(seconds=time.perf_counter() - start, bars=args.bars * len(sources),
                       rows=result.bars, hits=result.hits, misses=result.misses)
    elif args.mode == "ceiling":
        figures.update(seconds=_ceiling(sources, list(FeatureConfig().features)),
                       bars=args.bars * len(sources), hits=0, misses=0)
    Path(args.out).write_text(json.dumps(figures))


# --------------------------------------------------------------------------- parent side
def _generate(data_dir: Path, symbols: int, bars: int, seed: int) -> None:
    import pandas as pd

    from indicator_transformer.data.synthetic import synthetic_symbol

    data_dir.mkdir(parents=True)
    for i in range(symbols):
        x = synthetic_symbol(1, seed, i, bars)
        pd.DataFrame({"date": pd.to_datetime(x.time).strftime("%Y-%m-%d"), "open": x.open, "high": x.high,
                      "low": x.low, "close": x.close, "volume": x.volume}
                     ).to_csv(data_dir / f"S{i:05d}.csv", index=False)


def _measure(mode: str, data_dir: Path, cache_dir: Path, threads: int, work: Path, bars: int,
             pool: str) -> dict:
    """Run one child; return its figures plus its own peak RSS in bytes."""
    out = work / f"figures-{mode}-{threads}-{time.monotonic_ns()}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--mode", mode, "--data-dir",
           str(data_dir), "--cache-dir", str(cache_dir), "--threads", str(threads), "--bars", str(bars),
           "--pool", pool, "--out", str(out)]
    proc = subprocess.Popen(cmd)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"measurement {mode}/{threads} failed with exit code {proc.returncode}")
    figures = json.loads(out.read_text())
    # ru_maxrss is KiB on Linux, bytes on macOS; it covers the child and its own worker processes.
    figures["peak_rss"] = usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    return figures


def _dir_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


def _summary(values: list[float]) -> dict[str, Any]:
    return {"per_repeat": values, "min": min(values), "median": statistics.median(values),
            "max": max(values)}


def _run_figures(runs: list[dict], bars: int, symbols: int) -> dict[str, Any]:
    seconds = [r["seconds"] for r in runs]
    out = {"seconds": seconds, "bars_per_s": [bars * symbols / s for s in seconds],
           "min": min(seconds), "median": statistics.median(seconds), "max": max(seconds)}
    if "peak_rss" in runs[0]:
        out["peak_rss_bytes"] = max(r["peak_rss"] for r in runs)
    return out


def _measure_all(args: argparse.Namespace, data: Path, work: Path) -> dict[str, Any]:
    """Every repeat, interleaved; returns the JSON document's figures."""
    runs: dict[str, list[dict]] = {"cold_1": [], "cold_2": [], "warm_2": [], "ceiling": []}
    caches = {n: work / f"cache-{n}" for n in ("t1", "t2")}
    base = _measure("baseline", data, caches["t1"], 1, work, args.bars, args.pool)
    for r in range(args.repeats):
        for c in caches.values():
            shutil.rmtree(c, ignore_errors=True)
        order = [("cold_1", 1, "t1"), ("cold_2", WORKERS, "t2")]
        for name, threads, cache in order if r % 2 == 0 else order[::-1]:
            runs[name].append(_measure("prepare", data, caches[cache], threads, work, args.bars, args.pool))
        runs["warm_2"].append(_measure("prepare", data, caches["t2"], WORKERS, work, args.bars, args.pool))
        runs["ceiling"].append(_measure("ceiling", data, caches["t1"], 1, work, args.bars, args.pool))
        print(f"  repeat {r + 1}/{args.repeats}: cold 1 {runs['cold_1'][-1]['seconds']:.2f}s, cold 2 "
              f"{runs['cold_2'][-1]['seconds']:.2f}s, warm {runs['warm_2'][-1]['seconds']:.3f}s, "
              f"ceiling {runs['ceiling'][-1]['seconds']:.2f}s", flush=True)
    cold1 = [m["seconds"] for m in runs["cold_1"]]
    cold2 = [m["seconds"] for m in runs["cold_2"]]
    warm = [m["seconds"] for m in runs["warm_2"]]
    ceiling = [m["seconds"] for m in runs["ceiling"]]
    for m in runs["warm_2"]:
        if m["misses"]:
            raise SystemExit(f"the warm run computed {m['misses']} symbol(s): not a warm start")
    fractions = [t / c for t, c in zip(ceiling, cold2, strict=True)]
    peak = max(m["peak_rss"] for k in ("cold_1", "cold_2", "warm_2") for m in runs[k])
    return {
        "runs": {k: _run_figures(v, args.bars, args.symbols) for k, v in runs.items()},
        "ratios": {
            "speedup_2_vs_1": _summary([a / b for a, b in zip(cold1, cold2, strict=True)]),
            "warm_fraction_of_cold_2": _summary([w / c for w, c in zip(warm, cold2, strict=True)]),
            # pipeline bars/s over ceiling bars/s = ceiling seconds over pipeline seconds
            "pipeline_fraction_of_ceiling_1_core": _summary(fractions),
            "pipeline_fraction_of_ceiling_2_cores": _summary([f / WORKERS for f in fractions]),
        },
        "targets": {"speedup_2_vs_1": TARGET_SPEEDUP, "warm_fraction_of_cold_2": TARGET_WARM_FRACTION},
        "memory": {"baseline_rss_bytes": base["peak_rss"], "cache_bytes": _dir_bytes(caches["t2"]),
                   "largest_rss_over_baseline_bytes": peak - base["peak_rss"]},
    }


def _print_table(doc: dict[str, Any]) -> None:
    runs, ratios = doc["runs"], doc["ratios"]

    def span(s: dict[str, Any], fmt: str) -> str:
        return f"{format(s['min'], fmt)} / {format(s['median'], fmt)} / {format(s['max'], fmt)}"

    def ok(cond: bool) -> str:
        return "met" if cond else "MISSED"

    print(f"\n{'measurement':<20} {'seconds min / median / max':>28} {'bars/s (median)':>16} "
          f"{'peak RSS':>11}")
    for key, label in (("cold_1", "cold, 1 worker"), ("cold_2", f"cold, {WORKERS} workers"),
                       ("warm_2", f"warm, {WORKERS} workers"), ("ceiling", "TA-Lib alone, 1 core")):
        r = runs[key]
        rss = _mib(r["peak_rss_bytes"]) if "peak_rss_bytes" in r else ""
        print(f"{label:<20} {span(r, '.3f'):>28} {statistics.median(r['bars_per_s']):>16,.0f} {rss:>11}")
    sp, wf = ratios["speedup_2_vs_1"], ratios["warm_fraction_of_cold_2"]
    c1, c2 = ratios["pipeline_fraction_of_ceiling_1_core"], ratios["pipeline_fraction_of_ceiling_2_cores"]
    print("\nratios within each repeat          min / median / max")
    print(f"{WORKERS} workers vs 1 (speedup)        x{span(sp, '.2f')}   target >= x{TARGET_SPEEDUP}: "
          f"{ok(sp['min'] >= TARGET_SPEEDUP)} (worst repeat)")
    pct = {k: 100 * wf[k] for k in ("min", "median", "max")}
    print(f"warm start, % of cold ({WORKERS} w.)      {span(pct, '.1f')}   target <= "
          f"{100 * TARGET_WARM_FRACTION:.0f}%: {ok(wf['max'] <= TARGET_WARM_FRACTION)} (worst repeat)")
    print(f"pipeline / ceiling, 1 core        {span(c1, '.2f')}")
    print(f"pipeline / ceiling, {WORKERS} cores       {span(c2, '.2f')}")
    mem = doc["memory"]
    print(f"\ncache on disk {_mib(mem['cache_bytes'])}; largest peak RSS over the baseline "
          f"({_mib(mem['baseline_rss_bytes'])}) {_mib(mem['largest_rss_over_baseline_bytes'])} "
          f"(target <= cache size: {ok(mem['largest_rss_over_baseline_bytes'] <= mem['cache_bytes'])})")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--symbols", type=int, default=500, help="symbols in the universe (default 500)")
    p.add_argument("--bars", type=int, default=5000, help="bars per symbol (default 5000)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats (default 3)")
    p.add_argument("--seed", type=int, default=7, help="synthetic market seed (default 7)")
    p.add_argument("--pool", choices=["auto", "process", "thread"], default="auto",
                   help="prepare()'s pool for the measured runs (default auto, what the CLI uses)")
    p.add_argument("--json", metavar="PATH", help="also write the figures as JSON (shape in the docstring)")
    p.add_argument("--workdir", help="keep the data and caches here instead of a temporary folder")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mode", choices=["prepare", "baseline", "ceiling"], help=argparse.SUPPRESS)
    p.add_argument("--data-dir", help=argparse.SUPPRESS)
    p.add_argument("--cache-dir", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        _child(args)
        return 0
    if args.repeats < 1 or args.symbols < 1 or args.bars < 1:
        p.error("--symbols, --bars and --repeats must be at least 1")

    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench_prepare-"))
    work.mkdir(parents=True, exist_ok=True)
    data = work / "data"
    try:
        import numpy
        import pandas
        import talib

        command = "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
        machine = {"python": platform.python_version(), "numpy": numpy.__version__,
                   "pandas": pandas.__version__, "talib": talib.__version__, "cpus": os.cpu_count(),
                   "platform": platform.platform()}
        print("$ " + command)
        print(f"bench_prepare: {args.symbols} symbols x {args.bars} bars, CSV input, {args.repeats} "
              f"repeat(s), pool {args.pool} | python {machine['python']}, numpy {machine['numpy']}, "
              f"pandas {machine['pandas']}, TA-Lib {machine['talib']}, {machine['cpus']} CPU(s)")
        if data.exists():
            shutil.rmtree(data)
        t0 = time.perf_counter()
        _generate(data, args.symbols, args.bars, args.seed)
        os.sync()  # else the first cold run's fsyncs also pay for flushing the freshly written CSVs
        print(f"generated the universe in {time.perf_counter() - t0:.1f}s ({_mib(_dir_bytes(data))} of CSV; "
              f"not timed below)")
        doc = {"benchmark": "prepare", "command": command, "machine": machine, "symbols": args.symbols,
               "bars": args.bars, "repeats": args.repeats, "workers": WORKERS, "pool": args.pool,
               **_measure_all(args, data, work)}
        _print_table(doc)
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
            print(f"figures written to {args.json}")
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
