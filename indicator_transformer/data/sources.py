"""OHLCV inputs: files in a data directory (one per symbol) or the built-in synthetic market.

Every input is validated before anything is computed from it; a bad file raises
:class:`DataError` naming the file, the row (1-based data row, header excluded) or column, and
what was expected.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError, UserError

SUPPORTED_SUFFIXES = (".csv", ".parquet", ".pq")
SYNTHETIC_VERSION = 1

# Lower-cased, stripped column name -> canonical name. "adj close" is handled separately.
_ALIASES = {
    "date": "time", "datetime": "time", "time": "time", "timestamp": "time", "ts": "time",
    "open": "open", "o": "open",
    "high": "high", "h": "high",
    "low": "low", "l": "low",
    "close": "close", "c": "close", "last": "close", "price": "close",
    "volume": "volume", "vol": "volume", "v": "volume",
}
_ADJ_CLOSE = {"adj close", "adj_close", "adjclose", "adjusted close", "adjusted_close"}
REQUIRED = ("time", "open", "high", "low", "close", "volume")
# The strings pandas.read_csv reads as missing by default; the pyarrow fast path uses the same.
_PANDAS_NA_STRINGS = ("", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND",
                      "1.#QNAN", "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null")


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class OHLCV:
    """One symbol's validated bars. ``time`` is int64 nanoseconds since the epoch."""

    symbol: str
    time: np.ndarray
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray

    def __len__(self) -> int:
        return len(self.close)


@dataclass(frozen=True)
class Source:
    """Where one symbol's bars come from, and the identity its cache key is built from."""

    symbol: str
    path: Path | None = None            # None for a synthetic symbol
    synthetic: dict | None = None       # the synthetic spec for this symbol

    def identity(self) -> str:
        """sha256 of the raw input bytes, or of the synthetic spec."""
        if self.path is not None:
            return sha256_file(self.path)
        return hashlib.sha256(json.dumps(self.synthetic, sort_keys=True).encode()).hexdigest()

    def load(self, *, use_adj_close: bool = False) -> OHLCV:
        """Read and validate the bars."""
        if self.path is not None:
            return load_ohlcv_file(self.path, use_adj_close=use_adj_close)
        assert self.synthetic is not None
        return dataclasses.replace(synthetic_symbol(**self.synthetic), symbol=self.symbol)


# --------------------------------------------------------------------------- files
def discover_files(data_dir: str | Path) -> list[Source]:
    """One source per supported file in ``data_dir``; a clear error for a bad directory."""
    d = Path(data_dir)
    if not d.exists():
        raise UserError(f"{d}: data directory does not exist")
    if not d.is_dir():
        raise UserError(f"{d}: is not a directory (expected a folder of one OHLCV file per symbol)")
    files = sorted(p for p in d.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise UserError(f"{d}: data directory is empty (expected files like AAPL.csv or ES.parquet)")
    sources = []
    seen: dict[str, Path] = {}
    for p in files:
        symbol = p.stem
        if symbol in seen:
            raise UserError(f"{p}: symbol '{symbol}' appears twice (also {seen[symbol].name})")
        seen[symbol] = p
        sources.append(Source(symbol=symbol, path=p))
    return sources


def _read_csv_fast(path: Path):
    """A CSV as a pyarrow Table through pyarrow's single-threaded reader, or None to let pandas
    read it.

    pyarrow parses numbers and ISO dates without holding the GIL, so preparation threads really
    run in parallel (pandas' reader and ``to_datetime`` hold it: with them a second thread gained
    nothing). Only a clean, plain parse is used; anything pyarrow rejects or types differently
    (bad UTF-8, ragged rows, duplicate or time-of-day columns, ...) goes to pandas, whose behaviour
    and error messages stay the reference.
    """
    import pyarrow as pa
    import pyarrow.csv as pcsv

    try:
        table = pcsv.read_csv(path, read_options=pcsv.ReadOptions(use_threads=False),
                              convert_options=pcsv.ConvertOptions(null_values=list(_PANDAS_NA_STRINGS),
                                                                  strings_can_be_null=True))
    except (pa.ArrowException, ValueError, OSError):
        return None
    names = table.column_names
    plain = (pa.types.is_integer, pa.types.is_floating, pa.types.is_date, pa.types.is_timestamp,
             pa.types.is_string, pa.types.is_large_string, pa.types.is_null)
    if len(set(names)) != len(names) or not all(any(ok(t) for ok in plain) for t in table.schema.types):
        return None
    return table


def _from_arrow(path: Path, table, use_adj_close: bool) -> OHLCV | None:
    """The usual file without pandas: typed dates and null-free numbers straight to NumPy.

    Returns None whenever anything needs pandas' handling (string dates, missing values, odd
    types, a missing column, no rows), so every error message still comes from the one pandas
    path. Each step skipped here is time a preparation thread would hold the GIL.
    """
    import pyarrow as pa

    if table.num_rows == 0:
        return None
    try:
        cols = _map_columns(path, table.column_names, use_adj_close)
    except DataError:
        return None
    t = table.column(cols["time"])
    if t.null_count or not (pa.types.is_date(t.type) or pa.types.is_timestamp(t.type)):
        return None
    try:
        time = t.cast(pa.timestamp("ns")).to_numpy().view(np.int64)  # UTC, like the pandas path
    except pa.ArrowException:  # out of the datetime64[ns] range: pandas reports it
        return None
    arrays = {}
    for c in ("open", "high", "low", "close", "volume"):
        col = table.column(cols[c])
        if col.null_count or not (pa.types.is_floating(col.type) or pa.types.is_integer(col.type)):
            return None
        arrays[c] = col.to_numpy().astype(np.float64)
    return validate_ohlcv(path, path.stem, time, **arrays,
                          column_names={k: str(v) for k, v in cols.items()})


def _read_table(path: Path):
    import pandas as pd

    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise DataError(path, f"unsupported file type '{suffix or '(none)'}' "
                              f"(expected one of {', '.join(SUPPORTED_SUFFIXES)})")
    if path.stat().st_size == 0:
        raise DataError(path, "file is empty (expected a header and OHLCV rows)")
    try:
        if suffix == ".csv":
            fast = _read_csv_fast(path)
            return fast if fast is not None else pd.read_csv(path, encoding="utf-8")
        return pd.read_parquet(path)
    except UnicodeDecodeError as e:
        raise DataError(path, f"cannot be decoded as UTF-8 text ({e.reason} at byte {e.start})") from None
    except pd.errors.EmptyDataError:
        raise DataError(path, "file is empty (expected a header and OHLCV rows)") from None
    except pd.errors.ParserError as e:
        raise DataError(path, f"is not valid CSV: {e}") from None
    except Exception as e:  # pyarrow raises several types for a corrupt parquet
        raise DataError(path, f"cannot be read as {suffix[1:]}: {e}") from None


def _map_columns(path: Path, columns: list, use_adj_close: bool) -> dict[str, object]:
    mapping: dict[str, object] = {}
    for col in columns:
        key = str(col).strip().lower()
        if key in _ADJ_CLOSE:
            if use_adj_close:
                mapping["close"] = col
            continue
        canon = _ALIASES.get(key)
        if canon is None:
            continue
        if canon == "close" and use_adj_close and "close" in mapping:
            continue
        if canon in mapping and mapping[canon] != col:
            raise DataError(path, f"two columns mean '{canon}': '{mapping[canon]}' and '{col}'")
        mapping[canon] = col
    # pandas and downloaders write the date index as a first, unnamed column.
    if "time" not in mapping and columns:
        first = str(columns[0]).strip()
        if first == "" or first.lower().startswith("unnamed"):
            mapping["time"] = columns[0]
    missing = [c for c in REQUIRED if c not in mapping]
    if missing:
        raise DataError(path, f"missing column(s) {', '.join(missing)} (found: "
                              f"{', '.join(str(c) for c in columns)}; expected date/time, open, high, "
                              f"low, close, volume, matched case-insensitively)")
    return mapping


def _numeric(path: Path, series, name: str) -> np.ndarray:
    import pandas as pd

    if series.dtype.kind in "fiu":  # already numbers (the usual case): nothing can be non-numeric
        return series.to_numpy(dtype=np.float64, na_value=np.nan)
    values = pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    raw_na = series.isna().to_numpy()
    bad = np.flatnonzero(np.isnan(values) & ~raw_na)
    if bad.size:
        i = int(bad[0])
        raise DataError(path, f"non-numeric value {series.iloc[i]!r} (expected a number)",
                        row=i + 1, column=name)
    return values


def _times(path: Path, series, name: str) -> np.ndarray:
    import pandas as pd

    if pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
        raise DataError(path, "numeric values in the date/time column (expected dates such as "
                              "2024-01-31 or 2024-01-31 09:30:00)", column=name)
    try:
        parsed = pd.to_datetime(series, errors="coerce", utc=True, format="mixed")
    except (ValueError, TypeError):
        parsed = pd.to_datetime(series, errors="coerce", utc=True)
    bad = np.flatnonzero(parsed.isna().to_numpy())
    if bad.size:
        i = int(bad[0])
        value = series.iloc[i]
        what = "missing date/time" if pd.isna(value) else f"unparseable date/time {value!r}"
        raise DataError(path, f"{what} (expected a date such as 2024-01-31 or 2024-01-31 09:30:00)",
                        row=i + 1, column=name)
    return parsed.dt.tz_localize(None).to_numpy(dtype="datetime64[ns]").astype(np.int64)


def load_ohlcv_file(path: str | Path, *, use_adj_close: bool = False) -> OHLCV:
    """Read one CSV/Parquet OHLCV file and validate it."""
    path = Path(path)
    df = _read_table(path)
    if not hasattr(df, "iloc"):  # a clean pyarrow table from the CSV fast path
        bars = _from_arrow(path, df, use_adj_close)
        if bars is not None:
            return bars
        df = df.to_pandas(date_as_object=False, split_blocks=True)
    if len(df) == 0:
        raise DataError(path, "has a header but no data rows")
    cols = _map_columns(path, list(df.columns), use_adj_close)
    t = _times(path, df[cols["time"]], str(cols["time"]))
    arrays = {c: _numeric(path, df[cols[c]], str(cols[c])) for c in ("open", "high", "low", "close",
                                                                      "volume")}
    return validate_ohlcv(path, path.stem, t, **arrays, column_names={k: str(v) for k, v in cols.items()})


def validate_ohlcv(path: object, symbol: str, time: np.ndarray, open: np.ndarray, high: np.ndarray,
                   low: np.ndarray, close: np.ndarray, volume: np.ndarray,
                   column_names: dict[str, str] | None = None) -> OHLCV:
    """Check the bars make sense; the first problem found raises :class:`DataError`."""
    names = column_names or {}
    for c, arr in (("open", open), ("high", high), ("low", low), ("close", close)):
        bad = np.flatnonzero(~np.isfinite(arr))
        if bad.size:
            raise DataError(path, f"missing, NaN or infinite price {arr[bad[0]]} (expected a finite "
                                  f"number)", row=int(bad[0]) + 1, column=names.get(c, c))
        bad = np.flatnonzero(arr <= 0)
        if bad.size:
            raise DataError(path, f"price {arr[bad[0]]:g} (expected a price > 0)",
                            row=int(bad[0]) + 1, column=names.get(c, c))
    bad = np.flatnonzero(~np.isfinite(volume) | (volume < 0))
    if bad.size:
        raise DataError(path, f"volume {volume[bad[0]]} (expected a finite number >= 0)",
                        row=int(bad[0]) + 1, column=names.get("volume", "volume"))
    bad = np.flatnonzero(high < low)
    if bad.size:
        i = int(bad[0])
        raise DataError(path, f"high {high[i]:g} < low {low[i]:g} (expected high >= low)", row=i + 1,
                        column=names.get("high", "high"))
    diffs = np.diff(time)
    bad = np.flatnonzero(diffs == 0)
    if bad.size:
        raise DataError(path, "duplicate timestamp (same as the previous row; expected strictly "
                              "increasing times)", row=int(bad[0]) + 2, column=names.get("time", "time"))
    bad = np.flatnonzero(diffs < 0)
    if bad.size:
        raise DataError(path, "timestamp earlier than the previous row (expected rows sorted by time, "
                              "oldest first)", row=int(bad[0]) + 2, column=names.get("time", "time"))
    return OHLCV(symbol, time.astype(np.int64), open.astype(np.float64), high.astype(np.float64),
                 low.astype(np.float64), close.astype(np.float64), volume.astype(np.float64))


# --------------------------------------------------------------------------- synthetic market
def synthetic_sources(symbols: int, bars: int, seed: int) -> list[Source]:
    """The built-in market: ``symbols`` deterministic symbols of ``bars`` daily bars each."""
    width = max(3, len(str(symbols - 1)))
    return [Source(symbol=f"SYN{i:0{width}d}",
                   synthetic={"version": SYNTHETIC_VERSION, "seed": seed, "index": i, "bars": bars})
            for i in range(symbols)]


def _market_factor(seed: int, bars: int) -> np.ndarray:
    rng = np.random.default_rng([seed, 999_983])
    return rng.standard_normal(bars)


def synthetic_symbol(version: int, seed: int, index: int, bars: int) -> OHLCV:
    """One symbol of the synthetic market, deterministic for (seed, index, bars).

    Returns follow a GARCH(1,1) volatility process (clustering) with a two-state Markov regime
    (calm/trending vs volatile), a shared market factor, and a weak predictable component (short-term
    mean reversion plus slow momentum) that indicators can pick up. Volume grows with |return|.
    """
    if version != SYNTHETIC_VERSION:
        raise UserError(f"synthetic market version {version} is not supported by this code "
                        f"(expected {SYNTHETIC_VERSION})")
    rng = np.random.default_rng([seed, index])
    market = _market_factor(seed, bars)
    beta = 0.4 + 0.6 * rng.random()
    base_vol = 0.008 + 0.012 * rng.random()
    omega, alpha, garch_beta = base_vol**2 * 0.05, 0.08, 0.87
    regime_drift = np.array([0.0004, -0.0003])
    regime_volmult = np.array([0.8, 1.6])
    p_stay = np.array([0.995, 0.98])
    eps = rng.standard_normal(bars)
    u = rng.random(bars)
    r = np.empty(bars)
    var = base_vol**2
    regime = 0
    prev_r = 0.0
    mom = 0.0
    for t in range(bars):
        if u[t] > p_stay[regime]:
            regime = 1 - regime
        sigma = math.sqrt(var) * regime_volmult[regime]
        # Predictable part, small against sigma: mean reversion of the last return, slow momentum.
        mu = regime_drift[regime] - 0.12 * prev_r + 0.05 * mom
        shock = sigma * (beta * 0.5 * market[t] + math.sqrt(1 - (beta * 0.5) ** 2) * eps[t])
        r[t] = mu + shock
        # GARCH on the regime-free shock, so the volatile regime cannot make the process explode.
        var = omega + alpha * (shock / regime_volmult[regime]) ** 2 + garch_beta * var
        mom = 0.95 * mom + 0.05 * r[t]
        prev_r = r[t]
    close = 50.0 * (1 + rng.random()) * np.exp(np.cumsum(r))
    gap = rng.standard_normal(bars) * 0.15 * np.abs(r)
    open_ = np.empty(bars)
    open_[0] = close[0] * math.exp(-r[0])
    open_[1:] = close[:-1] * np.exp(gap[1:])
    hi_ext = np.abs(rng.standard_normal(bars)) * 0.5 * np.abs(r) + 0.002 * rng.random(bars)
    lo_ext = np.abs(rng.standard_normal(bars)) * 0.5 * np.abs(r) + 0.002 * rng.random(bars)
    high = np.maximum(open_, close) * np.exp(hi_ext)
    low = np.minimum(open_, close) * np.exp(-lo_ext)
    vol_scale = np.abs(r) / base_vol
    volume = np.round(1e5 * (1 + rng.random()) * np.exp(0.3 * rng.standard_normal(bars))
                      * (0.6 + 0.8 * vol_scale))
    start = np.datetime64("2000-01-03", "D")
    days = np.busday_offset(start, np.arange(bars), roll="forward")
    time = days.astype("datetime64[ns]").astype(np.int64)
    return OHLCV(f"SYN{index:03d}", time, open_, high, low, close, volume)
