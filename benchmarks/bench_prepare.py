#!/usr/bin/env python3
"""Feature preparation: cold 1 thread vs 2 threads, warm start, and peak memory, side by side.

    python benchmarks/bench_prepare.py                      # 500 symbols x 5000 bars
    python benchmarks/bench_prepare.py --symbols 100 --bars 2000

The universe is generated once as CSV files in a temporary folder (not timed). Each measurement then
runs in its own child interpreter, so its peak RSS (``ru_maxrss`` from ``os.wait4``) is its own and
no measurement warms another's Python-level caches:

* cold, 1 thread      fresh cache, ``--prep-workers 1``
* cold, 2 threads     another fresh cache, ``--prep-workers 2``
* warm, 2 threads     the cache the previous run filled: every symbol is a hit
* baseline            the same imports and file discovery, no preparation (the RSS floor)

Times are measured inside the child around ``prepare()`` only (interpreter start and imports
excluded). The figures are printed with their targets; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_WARM_FRACTION = 0.05   # warm start <= 5% of the cold time
TARGET_SPEEDUP = 1.3          # 2 threads >= 1.3x one thread


# --------------------------------------------------------------------------- child side
def _child(args: argparse.Namespace) -> None:
    """One measurement, in a fresh interpreter; writes its figures as JSON to ``args.out``."""
    from indicator_transformer.config import FeatureConfig
    from indicator_transformer.data.cache import FeatureCache
    from indicator_transformer.data.prepare import prepare
    from indicator_transformer.data.sources import discover_files

    sources = discover_files(args.data_dir)
    figures = {"symbols": len(sources)}
    if args.mode == "prepare":
        start = time.perf_counter()
        cache = FeatureCache(args.cache_dir).open()
        result = prepare(sources, FeatureConfig(), cache, workers=args.threads, show_progress=False)
        figures.update(seconds=time.perf_counter() - start, bars=args.bars * len(sources),
                       rows=result.bars, hits=result.hits, misses=result.misses)
    Path(args.out).write_text(json.dumps(figures))


# --------------------------------------------------------------------------- parent side
def _generate(data_dir: Path, symbols: int, bars: int, seed: int) -> None:
    import pandas as pd

    from indicator_transformer.data.sources import synthetic_symbol

    data_dir.mkdir(parents=True)
    for i in range(symbols):
        x = synthetic_symbol(1, seed, i, bars)
        pd.DataFrame({"date": pd.to_datetime(x.time).strftime("%Y-%m-%d"), "open": x.open, "high": x.high,
                      "low": x.low, "close": x.close, "volume": x.volume}
                     ).to_csv(data_dir / f"S{i:05d}.csv", index=False)


def _measure(mode: str, data_dir: Path, cache_dir: Path, threads: int, work: Path, bars: int) -> dict:
    """Run one child; return its figures plus its own peak RSS in bytes."""
    out = work / f"figures-{mode}-{threads}-{time.monotonic_ns()}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--mode", mode, "--data-dir",
           str(data_dir), "--cache-dir", str(cache_dir), "--threads", str(threads), "--bars", str(bars),
           "--out", str(out)]
    proc = subprocess.Popen(cmd)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"measurement {mode}/{threads} failed with exit code {proc.returncode}")
    figures = json.loads(out.read_text())
    # ru_maxrss is KiB on Linux, bytes on macOS.
    figures["peak_rss"] = usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    return figures


def _dir_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--symbols", type=int, default=500, help="symbols in the universe (default 500)")
    p.add_argument("--bars", type=int, default=5000, help="bars per symbol (default 5000)")
    p.add_argument("--seed", type=int, default=7, help="synthetic market seed (default 7)")
    p.add_argument("--workdir", help="keep the data and caches here instead of a temporary folder")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mode", choices=["prepare", "baseline"], help=argparse.SUPPRESS)
    p.add_argument("--data-dir", help=argparse.SUPPRESS)
    p.add_argument("--cache-dir", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        _child(args)
        return 0

    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench_prepare-"))
    work.mkdir(parents=True, exist_ok=True)
    data = work / "data"
    try:
        import numpy
        import pandas
        import talib

        print("$ python " + " ".join(sys.argv))
        print(f"bench_prepare: {args.symbols} symbols x {args.bars} bars, CSV input | python "
              f"{platform.python_version()}, numpy {numpy.__version__}, pandas {pandas.__version__}, "
              f"TA-Lib {talib.__version__}, {os.cpu_count()} CPU(s)")
        if data.exists():
            shutil.rmtree(data)
        t0 = time.perf_counter()
        _generate(data, args.symbols, args.bars, args.seed)
        os.sync()  # else the first cold run's fsyncs also pay for flushing the freshly written CSVs
        print(f"generated the universe in {time.perf_counter() - t0:.1f}s ({_mib(_dir_bytes(data))} of CSV; "
              f"not timed below)\n")

        caches = {n: work / f"cache-{n}" for n in ("t1", "t2")}
        for c in caches.values():
            shutil.rmtree(c, ignore_errors=True)
        base = _measure("baseline", data, caches["t1"], 1, work, args.bars)
        cold1 = _measure("prepare", data, caches["t1"], 1, work, args.bars)
        cold2 = _measure("prepare", data, caches["t2"], 2, work, args.bars)
        warm = _measure("prepare", data, caches["t2"], 2, work, args.bars)
        cache_bytes = _dir_bytes(caches["t2"])

        speedup = cold1["seconds"] / cold2["seconds"]
        warm_frac = warm["seconds"] / cold2["seconds"]
        rss_growth = max(m["peak_rss"] for m in (cold1, cold2, warm)) - base["peak_rss"]

        def ok(cond: bool) -> str:
            return "met" if cond else "MISSED"

        rows = [
            ("cold, 1 thread", cold1, ""),
            ("cold, 2 threads", cold2, f"speedup x{speedup:.2f} vs 1 thread (target >= x{TARGET_SPEEDUP}: "
                                       f"{ok(speedup >= TARGET_SPEEDUP)})"),
            ("warm, 2 threads", warm, f"{100 * warm_frac:.1f}% of cold (target <= "
                                      f"{100 * TARGET_WARM_FRACTION:.0f}%: "
                                      f"{ok(warm_frac <= TARGET_WARM_FRACTION)})"),
        ]
        print(f"{'measurement':<17} {'seconds':>8} {'bars/s':>12} {'hits':>5} {'misses':>6} "
              f"{'peak RSS':>11} {'over base':>11}  target")
        for name, m, note in rows:
            print(f"{name:<17} {m['seconds']:>8.2f} {m['bars'] / m['seconds']:>12,.0f} {m['hits']:>5} "
                  f"{m['misses']:>6} {_mib(m['peak_rss']):>11} {_mib(m['peak_rss'] - base['peak_rss']):>11}"
                  f"  {note}")
        print(f"{'baseline (imports)':<17} {'':>8} {'':>12} {'':>5} {'':>6} {_mib(base['peak_rss']):>11}")
        print(f"\ncache on disk {_mib(cache_bytes)}; largest peak RSS over the baseline {_mib(rss_growth)} "
              f"(target <= cache size: {ok(rss_growth <= cache_bytes)})")
        print(f"warm start {warm['seconds']:.3f}s vs cold {cold2['seconds']:.2f}s (2 threads) / "
              f"{cold1['seconds']:.2f}s (1 thread)")
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
