"""OHLCV inputs: files in a data directory (one per symbol) or the built-in synthetic market.

Every input is validated before anything is computed from it; a bad file raises
:class:`DataError` naming the file, the row (1-based data row, header excluded) or column, and
what was expected.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import os
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
class RawInput:
    """One read of an input: the exact bytes that are parsed and the sha256 of those same bytes.

    Hashing and parsing one in-memory copy means the identity (and so the cache key) always
    describes what was computed, even if the file changes on disk between two reads.
    ``signature`` is the file's stat signature taken before reading (None for a synthetic input).
    """

    sha256: str
    data: bytes | None = None
    path: str | None = None
    signature: dict[str, int] | None = None


def stat_signature(st: os.stat_result) -> dict[str, int]:
    """(size, mtime_ns, ctime_ns, inode) of a stat result: any write to the file changes it."""
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "ino": st.st_ino}


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

    def read(self) -> RawInput:
        """Read the input once: its bytes, their sha256 and the stat signature seen before reading."""
        if self.path is None:
            return RawInput(self.identity())
        try:
            with open(self.path, "rb") as fh:
                # fstat before reading: a write during the read changes the ctime after this point,
                # so a signature remembered with this hash never matches the changed file.
                sig = stat_signature(os.fstat(fh.fileno()))
                data = fh.read()
        except OSError as e:  # removed or unreadable since discovery: a bad input, not a crash
            raise DataError(self.path, f"cannot be read ({e.strerror or e})") from None
        return RawInput(hashlib.sha256(data).hexdigest(), data, os.path.abspath(self.path), sig)

    def parse(self, raw: RawInput, *, use_adj_close: bool = False) -> OHLCV:
        """Validate the bars of ``raw`` (from :meth:`read`): exactly the bytes that were hashed."""
        if self.path is not None:
            assert raw.data is not None
            return load_ohlcv_file(self.path, use_adj_close=use_adj_close, data=raw.data)
        assert self.synthetic is not None
        return dataclasses.replace(synthetic_symbol(**self.synthetic), symbol=self.symbol)

    def load(self, *, use_adj_close: bool = False) -> OHLCV:
        """Read and validate the bars."""
        return self.parse(self.read(), use_adj_close=use_adj_close)


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


def _read_csv_fast(data: bytes):
    """A CSV as a pyarrow Table through pyarrow's single-threaded reader, or None to let pandas
    read it.

    pyarrow parses numbers and ISO dates without holding the GIL, so preparation threads really
    run in parallel (pandas' reader and ``to_datetime`` hold it: with them a second thread gained
    nothing). Only a clean, plain parse is used; anything pyarrow rejects or types differently
    (bad UTF-8, ragged rows, duplicate or time-of-day columns, true/false columns, ...) goes to
    pandas, whose behaviour and error messages stay the reference. Both paths end in
    :func:`_assemble`, so every check on values is the same for both.
    """
    import pyarrow as pa
    import pyarrow.csv as pcsv

    try:
        table = pcsv.read_csv(pa.BufferReader(data), read_options=pcsv.ReadOptions(use_threads=False),
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
    types, a missing column, no rows, a date outside the nanosecond range), so every error
    message about parsing still comes from the one pandas path. Each step skipped here is time a
    preparation thread would hold the GIL.
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
        # A safe cast: a date outside the datetime64[ns] range raises instead of wrapping around,
        # and the pandas path then reports it with its row.
        time = t.cast(pa.timestamp("ns"), safe=True).to_numpy().view(np.int64)  # UTC, like pandas
    except pa.ArrowException:
        return None
    arrays = {}
    for c in _PRICE_COLUMNS:
        if c not in cols:
            continue
        col = table.column(cols[c])
        if col.null_count or not (pa.types.is_floating(col.type) or pa.types.is_integer(col.type)):
            return None
        arrays[c] = col.to_numpy().astype(np.float64)
    return _assemble(path, time, arrays, cols)


def _read_table(path: Path, data: bytes, *, fast: bool = True):
    import pandas as pd

    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise DataError(path, f"unsupported file type '{suffix or '(none)'}' "
                              f"(expected one of {', '.join(SUPPORTED_SUFFIXES)})")
    if len(data) == 0:
        raise DataError(path, "file is empty (expected a header and OHLCV rows)")
    try:
        if suffix == ".csv":
            table = _read_csv_fast(data) if fast else None
            return table if table is not None else pd.read_csv(io.BytesIO(data), encoding="utf-8")
        return pd.read_parquet(io.BytesIO(data))
    except UnicodeDecodeError as e:
        raise DataError(path, f"cannot be decoded as UTF-8 text ({e.reason} at byte {e.start})") from None
    except pd.errors.EmptyDataError:
        raise DataError(path, "file is empty (expected a header and OHLCV rows)") from None
    except pd.errors.ParserError as e:
        raise DataError(path, f"is not valid CSV: {e}") from None
    except Exception as e:  # pyarrow raises several types for a corrupt parquet
        raise DataError(path, f"cannot be read as {suffix[1:]}: {e}") from None


# The value columns, in the order they are checked; "raw_close" is the unadjusted Close that
# --use-adj-close scales open, high and low by (see _assemble).
_PRICE_COLUMNS = ("open", "high", "low", "close", "volume", "raw_close")


def _map_columns(path: Path, columns: list, use_adj_close: bool) -> dict[str, object]:
    mapping: dict[str, object] = {}
    adj: object = None
    for col in columns:
        key = str(col).strip().lower()
        if key in _ADJ_CLOSE:
            if adj is not None and adj != col:
                raise DataError(path, f"two columns mean 'adj close': '{adj}' and '{col}'")
            adj = col
            continue
        canon = _ALIASES.get(key)
        if canon is None:
            continue
        if canon in mapping and mapping[canon] != col:
            raise DataError(path, f"two columns mean '{canon}': '{mapping[canon]}' and '{col}'")
        mapping[canon] = col
    # pandas and downloaders write the date index as a first, unnamed column.
    if "time" not in mapping and columns:
        first = str(columns[0]).strip()
        if first == "" or first.lower().startswith("unnamed"):
            mapping["time"] = columns[0]
    if use_adj_close:
        if adj is None:
            # Silently training on unadjusted prices when adjusted ones were asked for would mix
            # adjusted and unadjusted symbols in one universe.
            raise DataError(path, f"--use-adj-close was given but there is no adjusted close column "
                                  f"(found: {', '.join(str(c) for c in columns)}; expected one of "
                                  f"'Adj Close', 'adj_close', 'adjusted close')")
        if "close" in mapping:
            mapping["raw_close"] = mapping["close"]
        mapping["close"] = adj
    missing = [c for c in REQUIRED if c not in mapping]
    if missing:
        raise DataError(path, f"missing column(s) {', '.join(missing)} (found: "
                              f"{', '.join(str(c) for c in columns)}; expected date/time, open, high, "
                              f"low, close, volume, matched case-insensitively)")
    return mapping


def _numeric(path: Path, series, name: str, *, text: bool) -> np.ndarray:
    """A price or volume column as float64. ``text``: the column was read from CSV text, whose
    values are parsed one by one (a bad one is reported with its row); a typed column (Parquet)
    must already hold numbers."""
    import pandas as pd

    if pd.api.types.is_bool_dtype(series.dtype):  # True would silently become a price of 1.0
        raise DataError(path, f"column of type {series.dtype} (true/false values; expected numbers)",
                        column=name)
    if series.dtype.kind in "fiu":  # already numbers (the usual case): nothing can be non-numeric
        return series.to_numpy(dtype=np.float64, na_value=np.nan)
    if not text:
        raise DataError(path, f"column of type {series.dtype} (expected a numeric column: integers "
                              f"or floats)", column=name)
    values = pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    raw_na = series.isna().to_numpy()
    bad = np.flatnonzero(np.isnan(values) & ~raw_na)
    if bad.size:
        i = int(bad[0])
        raise DataError(path, f"non-numeric value {series.iloc[i]!r} (expected a number)",
                        row=i + 1, column=name)
    return values


# datetime64[ns] covers 1677-09-21 00:12:43.145224192 to 2262-04-11 23:47:16.854775807.
_NS_MIN, _NS_MAX = np.iinfo(np.int64).min + 1, np.iinfo(np.int64).max  # int64 min is NaT
SUPPORTED_TIME_RANGE = "1677-09-22 to 2262-04-11"


def _to_ns(path: Path, values: np.ndarray, name: str) -> np.ndarray:
    """datetime64 values of any unit as int64 nanoseconds, refusing those outside the ns range
    (a plain ``astype`` would silently wrap 9999-12-31 around to a date in 1816)."""
    unit, count = np.datetime_data(values.dtype)
    per_ns = int(np.timedelta64(count, unit) // np.timedelta64(1, "ns"))
    ticks = values.view(np.int64)
    lo, hi = -(-_NS_MIN // per_ns), _NS_MAX // per_ns  # ceil, floor: in range after the scaling
    bad = np.flatnonzero((ticks < lo) | (ticks > hi))
    if bad.size:
        i = int(bad[0])
        # The same text whichever reader parsed it (and so whatever datetime64 unit it chose).
        shown = np.datetime_as_string(values[i].astype("datetime64[s]")).removesuffix("T00:00:00")
        raise DataError(path, f"timestamp {shown} is outside the supported range "
                              f"{SUPPORTED_TIME_RANGE} (times are stored as int64 nanoseconds)",
                        row=i + 1, column=name)
    return ticks * per_ns


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
    return _to_ns(path, parsed.dt.tz_localize(None).to_numpy(), name)


def load_ohlcv_file(path: str | Path, *, use_adj_close: bool = False, data: bytes | None = None,
                    fast: bool = True) -> OHLCV:
    """Read one CSV/Parquet OHLCV file and validate it.

    ``data``: the file's bytes when the caller already read them (see :meth:`Source.read`);
    ``fast=False`` skips the pyarrow CSV path (the pandas path is the reference; both must agree).
    """
    path = Path(path)
    if data is None:
        data = read_input_bytes(path)
    df = _read_table(path, data, fast=fast)
    if not hasattr(df, "iloc"):  # a clean pyarrow table from the CSV fast path
        bars = _from_arrow(path, df, use_adj_close)
        if bars is not None:
            return bars
        df = df.to_pandas(date_as_object=False, split_blocks=True)
    if len(df) == 0:
        raise DataError(path, "has a header but no data rows")
    cols = _map_columns(path, list(df.columns), use_adj_close)
    t = _times(path, df[cols["time"]], str(cols["time"]))
    text = path.suffix.lower() == ".csv"
    arrays = {c: _numeric(path, df[cols[c]], str(cols[c]), text=text) for c in _PRICE_COLUMNS if c in cols}
    return _assemble(path, t, arrays, cols)


def read_input_bytes(path: Path) -> bytes:
    """A data file's bytes; a file that cannot be read (removed, no permission) is a DataError."""
    try:
        return path.read_bytes()
    except OSError as e:
        raise DataError(path, f"cannot be read ({e.strerror or e})") from None


def _assemble(path: Path, time: np.ndarray, arrays: dict[str, np.ndarray], cols: dict[str, object]
              ) -> OHLCV:
    """Validate the parsed columns (the same checks whichever reader parsed them) into bars.

    With --use-adj-close and an unadjusted Close present, the bar is validated as written, then
    open, high and low are scaled by adj_close / close - the usual "auto-adjust" - so that the
    bar stays consistent (an adjusted close with unadjusted highs and lows would make every range
    indicator wrong, and would lie outside [low, high] for most dividend-paying stocks).
    """
    names = {k: str(v) for k, v in cols.items()}
    raw = arrays.get("raw_close")
    if raw is None:
        return validate_ohlcv(path, path.stem, time, arrays["open"], arrays["high"], arrays["low"],
                              arrays["close"], arrays["volume"], column_names=names)
    bars = validate_ohlcv(path, path.stem, time, arrays["open"], arrays["high"], arrays["low"], raw,
                          arrays["volume"], column_names=dict(names, close=names["raw_close"]))
    adj = arrays["close"]
    _check_prices(path, {"close": adj}, names)
    ratio = adj / bars.close
    return dataclasses.replace(bars, open=bars.open * ratio, high=bars.high * ratio, low=bars.low * ratio,
                               close=adj.astype(np.float64))


def _check_prices(path: object, prices: dict[str, np.ndarray], names: dict[str, str]) -> None:
    for c, arr in prices.items():
        bad = np.flatnonzero(~np.isfinite(arr))
        if bad.size:
            raise DataError(path, f"missing, NaN or infinite price {arr[bad[0]]} (expected a finite "
                                  f"number)", row=int(bad[0]) + 1, column=names.get(c, c))
        bad = np.flatnonzero(arr <= 0)
        if bad.size:
            raise DataError(path, f"price {arr[bad[0]]:g} (expected a price > 0)",
                            row=int(bad[0]) + 1, column=names.get(c, c))


# Relative slack for "low <= open, close <= high": prices that were rounded or converted
# separately may differ in their last bits.
RANGE_TOLERANCE = 1e-9


def validate_ohlcv(path: object, symbol: str, time: np.ndarray, open: np.ndarray, high: np.ndarray,
                   low: np.ndarray, close: np.ndarray, volume: np.ndarray,
                   column_names: dict[str, str] | None = None) -> OHLCV:
    """Check the bars make sense; the first problem found raises :class:`DataError`."""
    names = column_names or {}
    _check_prices(path, {"open": open, "high": high, "low": low, "close": close}, names)
    bad = np.flatnonzero(~np.isfinite(volume) | (volume < 0))
    if bad.size:
        raise DataError(path, f"volume {volume[bad[0]]} (expected a finite number >= 0)",
                        row=int(bad[0]) + 1, column=names.get("volume", "volume"))
    bad = np.flatnonzero(high < low)
    if bad.size:
        i = int(bad[0])
        raise DataError(path, f"high {high[i]:g} < low {low[i]:g} (expected high >= low)", row=i + 1,
                        column=names.get("high", "high"))
    for c, arr in (("open", open), ("close", close)):
        bad = np.flatnonzero((arr > high * (1 + RANGE_TOLERANCE)) | (arr < low * (1 - RANGE_TOLERANCE)))
        if bad.size:
            i = int(bad[0])
            raise DataError(path, f"{c} {arr[i]:g} is outside the bar's range low {low[i]:g} .. high "
                                  f"{high[i]:g} (expected low <= {c} <= high)", row=i + 1,
                            column=names.get(c, c))
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
