"""A folder of real, public daily OHLCV files, from data that ships inside two PyPI packages (so
it needs only the package registry, no market-data service):

    SP500.csv   S&P 500 index, 1999-01-04 .. 2018-12-31 (Yahoo Finance, in the `arch` package's
                arch/data/sp500)
    NASDAQ.csv  NASDAQ Composite, 1999-01-04 .. 2018-12-31 (Yahoo Finance, arch/data/nasdaq)
    GOOG.csv    Alphabet (Google), 2004-08-19 .. 2013-03-01 (in `backtesting`'s test data)

    python benchmarks/public_ohlcv.py --out public_ohlcv
    indicator-transformer walk-forward --data-dir public_ohlcv --folds 4 --seeds 0,1,2 \\
        --test-bars 250 --out wf_public

The wheels are fetched with ``pip download`` (no install) into ``--wheels``; the files are
rewritten with one ``date`` column in ISO form and open, high, low, close, volume.
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import zipfile
from pathlib import Path

import pandas as pd

SOURCES = {  # file -> (package, path in its wheel, date column, date format)
    "SP500.csv": ("arch", "arch/data/sp500/sp500.csv.gz", "Date", "%m/%d/%Y"),
    "NASDAQ.csv": ("arch", "arch/data/nasdaq/nasdaq.csv.gz", "Date", "%m/%d/%Y"),
    "GOOG.csv": ("backtesting", "backtesting/test/GOOG.csv", "Unnamed: 0", "%Y-%m-%d"),
}


def wheel(package: str, wheels: Path) -> Path:
    """The package's wheel in ``wheels``, downloaded first if absent."""
    found = sorted(wheels.glob(f"{package}-*.whl"))
    if not found:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary",
                        ":all:", "-d", str(wheels), package], check=True)
        found = sorted(wheels.glob(f"{package}-*.whl"))
    if not found:
        raise SystemExit(f"pip download {package}: no wheel in {wheels}")
    return found[-1]


def extract(out: Path, wheels: Path) -> list[Path]:
    """Write every file of SOURCES into ``out``; their paths."""
    out.mkdir(parents=True, exist_ok=True)
    wheels.mkdir(parents=True, exist_ok=True)
    written = []
    for name, (package, member, date_col, fmt) in SOURCES.items():
        raw = zipfile.ZipFile(wheel(package, wheels)).read(member)
        df = pd.read_csv(io.BytesIO(raw), compression="gzip" if member.endswith(".gz") else None)
        frame = pd.DataFrame({"date": pd.to_datetime(df[date_col], format=fmt).dt.strftime("%Y-%m-%d")})
        for col in ("Open", "High", "Low", "Close", "Volume"):
            frame[col.lower()] = df[col]
        path = out / name
        frame.to_csv(path, index=False)
        written.append(path)
        print(f"{path}: {len(frame):,} daily bars, {frame['date'].iloc[0]} .. {frame['date'].iloc[-1]} "
              f"({package})")
    return written


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="public_ohlcv", help="the folder to write (default: %(default)s)")
    p.add_argument("--wheels", default=str(Path.home() / ".cache" / "indicator_transformer_wheels"),
                   help="where the wheels are kept (default: %(default)s)")
    args = p.parse_args()
    extract(Path(args.out), Path(args.wheels))


if __name__ == "__main__":
    main()
