"""Campaign 6: malformed OHLCV inputs. A generated corpus of bad files (encodings and BOMs,
thousands separators, mixed time zones, duplicate and unsorted times, zero or negative prices,
high < low, NaN and inf, text in numeric columns, empty and header-only files, one gigantic line,
Excel-style dates, Parquet files with wrong types, ...), each placed beside good files.

A refused file must give exit code 2 and one message naming the file (and the row, where the
fault is in one row), no traceback, and nothing of it cached, while the good files prepared in the
same run are committed; with ``--skip-bad-files`` the good files train. A few files are odd rather
than wrong (a UTF-8 BOM, offsets that convert to increasing UTC times): those may be read (exit 0)
or refused (exit 2), never anything else.
"""

from __future__ import annotations

import io
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from reliability.harness import TRAIN, Trial, tail

GOOD = ("GOODA", "GOODB")
BAD = "BADX"
BARS = 400
ARGS = ["--epochs", "1", "--window", "8", "--batch-size", "64", "--d-model", "8", "--heads", "2",
        "--layers", "1", "--no-progress", "--no-plots"]


@dataclass
class Bad:
    """One generated bad file: its name, bytes, whether it must be refused, and the faulty row."""

    name: str
    data: bytes
    must_refuse: bool = True
    row: int | None = None      # data record (1-based, the header is row 0) the message must name
    row_slack: int = 0          # duplicate/unsorted: either row of the pair may be the one named


def frame(index: int, bars: int = 300) -> pd.DataFrame:
    """A valid OHLCV frame from the built-in synthetic market (Date as YYYY-MM-DD strings)."""
    from indicator_transformer.data.synthetic import synthetic_symbol

    x = synthetic_symbol(1, 17, index, bars)
    return pd.DataFrame({"Date": pd.to_datetime(x.time).strftime("%Y-%m-%d"), "Open": x.open,
                         "High": x.high, "Low": x.low, "Close": x.close, "Volume": x.volume})


def csv_bytes(df: pd.DataFrame, **kwargs) -> bytes:
    return df.to_csv(index=False, **kwargs).encode()


def _lines(df: pd.DataFrame) -> list[str]:
    return df.to_csv(index=False).splitlines()


def _set(df: pd.DataFrame, r: int, col: str, value: object) -> pd.DataFrame:
    """Set data record ``r`` (1-based) of ``col`` (the column becomes text where needed)."""
    df = df.astype({col: object})
    df.loc[r - 1, col] = value
    return df


def _parquet(df: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    return buf.getvalue()


def _row_fault(col: str, value: Callable[[pd.Series], object]) -> Callable[[random.Random], Bad]:
    def make(rng: random.Random) -> Bad:
        df = frame(9)
        r = rng.randint(3, len(df) - 2)
        return Bad(f"{BAD}.csv", csv_bytes(_set(df, r, col, value(df.iloc[r - 1]))), row=r)
    return make


def _swap_high_low(rng: random.Random) -> Bad:
    df = frame(9)
    r = rng.randint(3, len(df) - 2)
    df.loc[r - 1, ["High", "Low"]] = df.loc[r - 1, ["Low", "High"]].to_numpy()
    return Bad(f"{BAD}.csv", csv_bytes(df), row=r)


def _duplicate_time(rng: random.Random) -> Bad:
    df = frame(9)
    r = rng.randint(3, len(df) - 2)
    df.loc[r - 1, "Date"] = df.loc[r - 2, "Date"]
    return Bad(f"{BAD}.csv", csv_bytes(df), row=r, row_slack=1)


def _unsorted(rng: random.Random) -> Bad:
    df = frame(9)
    r = rng.randint(3, len(df) - 3)
    df.loc[[r - 1, r], "Date"] = df.loc[[r, r - 1], "Date"].to_numpy()
    return Bad(f"{BAD}.csv", csv_bytes(df), row=r + 1, row_slack=1)


def _text(make_text: Callable[[pd.DataFrame, random.Random], str], must_refuse: bool = True,
          encoding: str = "utf-8", name: str = f"{BAD}.csv") -> Callable[[random.Random], Bad]:
    def make(rng: random.Random) -> Bad:
        return Bad(name, make_text(frame(9), rng).encode(encoding), must_refuse=must_refuse)
    return make


def _line_fault(edit: Callable[[str, random.Random], str]) -> Callable[[random.Random], Bad]:
    """Edit one data line's text; the row is named."""
    def make(rng: random.Random) -> Bad:
        lines = _lines(frame(9))
        r = rng.randint(3, len(lines) - 3)
        lines[r] = edit(lines[r], rng)
        return Bad(f"{BAD}.csv", ("\n".join(lines) + "\n").encode(), row=r)
    return make


def _thousands(line: str, rng: random.Random) -> str:
    parts = line.split(",")
    value = float(parts[4]) * 1000
    parts[4] = f'"{value:,.2f}"'
    return ",".join(parts)


def _tz(df: pd.DataFrame, rng: random.Random, offsets: tuple[str, str]) -> str:
    half = len(df) // 2
    df = df.astype({"Date": object})
    for i in range(len(df)):
        df.loc[i, "Date"] = f"{df.loc[i, 'Date']}T12:00:00{offsets[0] if i < half else offsets[1]}"
    return df.to_csv(index=False)


def _excel_dates(df: pd.DataFrame, rng: random.Random) -> str:
    serial = (pd.to_datetime(df["Date"]) - pd.Timestamp("1899-12-30")).dt.days
    return df.assign(Date=serial).to_csv(index=False)


def _ambiguous(df: pd.DataFrame, rng: random.Random) -> str:
    days = pd.date_range("2001-01-01", periods=4000, freq="D")
    days = days[days.day <= 12][: len(df)]
    return df.assign(Date=days.strftime("%d/%m/%Y")).to_csv(index=False)


def _mixed_formats(df: pd.DataFrame, rng: random.Random) -> str:
    dates = pd.to_datetime(df["Date"])
    half = len(df) // 2
    text = [d.strftime("%Y-%m-%d") if i < half else d.strftime("%d/%m/%Y") for i, d in enumerate(dates)]
    return df.assign(Date=text).to_csv(index=False)


def _gigantic(rng: random.Random) -> Bad:
    lines = _lines(frame(9))
    r = rng.randint(3, len(lines) - 3)
    lines[r] = "9" * rng.choice([2_000_000, 6_000_000])
    return Bad(f"{BAD}.csv", ("\n".join(lines) + "\n").encode(), row=None)


def _parquet_bad(kind: str) -> Callable[[random.Random], Bad]:
    def make(rng: random.Random) -> Bad:
        df = frame(9).assign(Date=lambda d: pd.to_datetime(d["Date"]))
        if kind == "bool_close":
            df["Close"] = df["Close"] > df["Open"]
        elif kind == "text_close":
            df["Close"] = df["Close"].map(lambda v: f"{v:.2f} USD")
        elif kind == "float_dates":
            df["Date"] = np.arange(len(df), dtype=float) * 0.5
        elif kind == "truncated":
            data = _parquet(df)
            return Bad(f"{BAD}.parquet", data[: len(data) // 2])
        return Bad(f"{BAD}.parquet", _parquet(df))
    return make


def _before_1677(rng: random.Random) -> Bad:
    df = frame(9).astype({"Date": object})
    df.loc[0, "Date"] = "1600-01-03"
    return Bad(f"{BAD}.csv", csv_bytes(df), row=1)


def _past_2262(rng: random.Random) -> Bad:
    df = frame(9).astype({"Date": object})
    r = len(df)
    df.loc[r - 1, "Date"] = "2300-01-03"
    return Bad(f"{BAD}.csv", csv_bytes(df), row=r)


def _truncated_row(rng: random.Random) -> Bad:
    text = frame(9).to_csv(index=False)
    cut = text.rstrip("\n").rsplit(",", 2)[0] + ",1."
    return Bad(f"{BAD}.csv", cut.encode(), row=None)


CORPUS: dict[str, Callable[[random.Random], Bad]] = {
    "utf16_bom": _text(lambda d, r: d.to_csv(index=False), must_refuse=False, encoding="utf-16"),
    "utf8_bom": _text(lambda d, r: "\ufeff" + d.to_csv(index=False), must_refuse=False),
    "latin1_header": _text(lambda d, r: d.rename(columns={"Close": "Cl\xf4ture"}).to_csv(index=False),
                           encoding="latin-1"),
    "thousands_separator": _line_fault(_thousands),
    "tz_aware_and_naive": _text(lambda d, r: _tz(d, r, ("+02:00", ""))),
    "tz_mixed_offsets": _text(lambda d, r: _tz(d, r, ("+00:00", "-05:00")), must_refuse=False),
    "duplicate_time": _duplicate_time,
    "unsorted_time": _unsorted,
    "negative_price": _row_fault("Low", lambda row: -abs(row["Low"])),
    "zero_price": _row_fault("Open", lambda row: 0.0),
    "high_below_low": _swap_high_low,
    "open_above_high": _row_fault("Open", lambda row: row["High"] * 1.1),
    "close_below_low": _row_fault("Close", lambda row: row["Low"] * 0.9),
    "nan_close": _row_fault("Close", lambda row: "NaN"),
    "inf_high": _row_fault("High", lambda row: "inf"),
    "na_text_high": _row_fault("High", lambda row: "NA"),
    "text_in_volume": _row_fault("Volume", lambda row: "abc"),
    "empty_file": lambda rng: Bad(f"{BAD}.csv", b""),
    "header_only": lambda rng: Bad(f"{BAD}.csv", b"Date,Open,High,Low,Close,Volume\n"),
    "gigantic_line": _gigantic,
    "excel_serial_dates": _text(_excel_dates),
    "ambiguous_day_month": _text(_ambiguous),
    "mixed_date_formats": _text(_mixed_formats),
    "blank_date": _row_fault("Date", lambda row: ""),
    "impossible_date": _row_fault("Date", lambda row: "2020-13-45"),
    "before_1677": _before_1677,
    "past_2262": _past_2262,
    "missing_close_column": _text(lambda d, r: d.drop(columns=["Close"]).to_csv(index=False)),
    "semicolon_separated": _text(lambda d, r: d.to_csv(index=False, sep=";")),
    "decimal_comma": _text(lambda d, r: d.to_csv(index=False, sep=";", decimal=",")),
    "binary_garbage": lambda rng: Bad(f"{BAD}.csv", bytes(rng.randrange(256) for _ in range(3000))),
    "truncated_last_row": _truncated_row,
    "extra_field": _line_fault(lambda line, rng: line + ",5"),
    "nul_bytes": _line_fault(lambda line, rng: line[:5] + "\x00\x00" + line[5:]),
    "csv_named_parquet": _text(lambda d, r: d.to_csv(index=False), name=f"{BAD}.parquet"),
    "parquet_bool_close": _parquet_bad("bool_close"),
    "parquet_text_close": _parquet_bad("text_close"),
    "parquet_float_dates": _parquet_bad("float_dates"),
    "parquet_truncated": _parquet_bad("truncated"),
}


def write_good(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(GOOD):
        (folder / f"{name}.csv").write_bytes(csv_bytes(frame(i, BARS)))


def _cached(cache: Path, symbol: str) -> list[str]:
    return sorted(p.name for p in cache.glob(f"{symbol}-*")) if cache.is_dir() else []


def _rows_named(message: str, bad: Bad) -> bool:
    if bad.row is None:
        return True
    # "row N" counts data records (the header is row 0); a CSV parser's "line N+1" names the same line.
    rows = range(bad.row - bad.row_slack, bad.row + bad.row_slack + 1)
    return any(f"row {r}" in message or f"line {r + 1}," in message for r in rows)


def malformed_trial(trial: Trial) -> None:
    """One bad file of a random kind beside two good ones."""
    kind = trial.rng.choice(sorted(CORPUS))
    bad = CORPUS[kind](trial.rng)
    data = trial.root / "data"
    write_good(data)
    (data / bad.name).write_bytes(bad.data)
    trial.inject(f"{kind}: {bad.name} ({len(bad.data):,} bytes"
                 f"{f', bad row {bad.row}' if bad.row else ''})")
    cache = trial.root / "cache"

    first = trial.run(["--data-dir", "data", *ARGS], script=TRAIN, timeout=300)
    code = first.child.proc.returncode
    errors = [line for line in first.child.lines if line.startswith("error:") or line.startswith("  - ")]
    message = "\n".join(errors)
    trial.check_no_traceback(first, kind)
    trial.check_no_process_left(first)
    if code == 0 and not bad.must_refuse:
        trial.note("read as valid")
        trial.check(bool(_cached(cache, BAD)), f"{kind}: exit 0 but {BAD} was not cached")
    else:
        trial.check(code == 2, f"{kind}: exit code {code}, expected 2:\n{tail(first.stderr)}")
        trial.check(bad.name in message, f"{kind}: the error does not name {bad.name}:\n{tail(first.stderr)}")
        trial.check(_rows_named(message, bad), f"{kind}: the error does not name row {bad.row}:\n{message}")
        trial.check(not _cached(cache, BAD), f"{kind}: the bad file was cached: {_cached(cache, BAD)}")
        for good in GOOD:
            trial.check(bool(_cached(cache, good)), f"{kind}: the good file {good}.csv was not committed "
                                                    f"to the cache")
        trial.check(not (trial.root / "models").exists() or not any((trial.root / "models").glob("*.pth")),
                    f"{kind}: a checkpoint was written although the input was refused")
        trial.check_cache_consistent()

        second = trial.run(["--data-dir", "data", *ARGS, "--skip-bad-files"], script=TRAIN, timeout=300)
        trial.check(second.child.proc.returncode == 0,
                    f"{kind}: --skip-bad-files exited {second.child.proc.returncode}:\n{tail(second.stderr)}")
        trial.check_no_traceback(second, f"{kind} with --skip-bad-files")
        trial.check(bad.name in second.stderr,
                    f"{kind}: --skip-bad-files did not name the skipped {bad.name}")
        trial.check((trial.root / "models" / "checkpoint_epoch_1.pth").exists(),
                    f"{kind}: --skip-bad-files did not train on the good files")
        trial.check(not _cached(cache, BAD), f"{kind}: the bad file was cached with --skip-bad-files")
        trial.check_no_process_left(second)
    trial.check_files()
