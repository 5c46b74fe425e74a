"""The ceiling of preparation: TA-Lib alone computing our indicators on arrays already in memory.

    python benchmarks/bench_prep_ceiling.py --symbols 500 --bars 5000 --json /tmp/ceiling.json

The same synthetic universe bench_prepare.py writes as CSV (seed 7), generated here in memory.
For each symbol the distinct TA-Lib calls of the default feature set are recorded once (untimed),
then replayed, one thread: that is "TA-Lib alone", the bars/s no pipeline on this machine can
exceed. Beside it, ``feature_columns`` (TA-Lib plus our scale-free transforms, still in memory,
no files, no cache) shows what the feature code itself adds. run_all divides the pipeline's cold
bars/s (bench_prepare.py) by these.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import common

from indicator_transformer.config import FeatureConfig
from indicator_transformer.data import features as feat
from indicator_transformer.data.sources import synthetic_symbol


class Recorder(feat._TA):
    """Our once-per-symbol TA-Lib wrapper, noting each distinct call it makes."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[Any, tuple, dict]] = []

    def __getattr__(self, name: str) -> Any:
        base = feat._TA.__getattr__(self, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            before = len(self._results)
            out = base(*args, **kwargs)
            if len(self._results) > before:  # a new call, not one answered from the wrapper's memo
                self.calls.append((getattr(feat.talib, name), args, kwargs))
            return out

        return call


def run(args: argparse.Namespace) -> dict[str, Any]:
    names = FeatureConfig().features
    known = feat.registry()
    universe = [synthetic_symbol(1, args.seed, i, args.bars) for i in range(args.symbols)]
    recorded = []
    for x in universe:
        rec = Recorder()
        for n in names:
            known[n].fn(x, rec)
        recorded.append(rec.calls)
    bars = args.symbols * args.bars

    t0 = time.perf_counter()
    for calls in recorded:
        for fn, a, k in calls:
            fn(*a, **k)
    talib_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    for x in universe:
        feat.feature_columns(x, names)
    columns_s = time.perf_counter() - t0
    return {
        "command": common.command_line(),
        "machine": common.machine(),
        "setup": {
            "symbols": args.symbols,
            "bars": args.bars,
            "features": len(names),
            "talib_calls_per_symbol": len(recorded[0]),
        },
        "talib_alone_bars_per_s": bars / talib_s,
        "feature_columns_bars_per_s": bars / columns_s,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--symbols", type=int, default=500)
    p.add_argument("--bars", type=int, default=5000)
    p.add_argument("--seed", type=int, default=7, help="bench_prepare.py's default")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    result = run(args)
    print(
        f"TA-Lib alone {result['talib_alone_bars_per_s']:,.0f} bars/s; feature_columns "
        f"{result['feature_columns_bars_per_s']:,.0f} bars/s "
        f"({result['setup']['talib_calls_per_symbol']} TA-Lib calls per symbol)"
    )
    common.write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
