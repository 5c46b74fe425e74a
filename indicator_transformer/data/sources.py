"""The reader of one OHLCV file per symbol (CSV or Parquet: its columns, values and validation) and
``Source``, where one symbol's bars come from: such a file, a panel's symbol or the synthetic
market. It builds on the types a source yields (:mod:`.ohlcv`), the date parsing (:mod:`.timeparse`)
and the market's generator (:mod:`.synthetic`); panel files holding many symbols are read by
:mod:`.panel` and a folder of files is listed by :mod:`.folder`, which build on this module.

Every input is validated before anything is computed from it; a bad file raises
:class:`DataError` naming the file, the row (1-based data row, header excluded) or column, and
what was expected. Only the columns the chosen features read are required (``required``); the
others are not parsed and are NaN in the bars, so no feature can ever read them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import re
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from ..errors import DataError
from .ohlcv import OHLCV, RawInput, sha256_file, stat_signature
from .synthetic import SYNTHETIC_VERSION, synthetic_symbol
from .timeparse import checked_times, time_column


class PanelSymbols(Protocol):
    """What a source needs of the panel file holding its symbol (data/panel.py's Panel): this
    module only reads single files and defines the types, so it names no panel module."""

    def label(self, symbol: str) -> str: ...
    def identity(self, symbol: str) -> str: ...
    def bars(self, symbol: str, *, use_adj_close: bool, required: Iterable[str] | None) -> OHLCV: ...

SUPPORTED_SUFFIXES = (".csv", ".parquet", ".pq")

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
OHLCV_COLUMNS = REQUIRED[1:]   # the value columns; which of them are required depends on the features
# Lower-cased, stripped names of the column that says which symbol a row of a panel file belongs to.
SYMBOL_NAMES = ("symbol", "ticker", "instrument", "asset", "code")
# Where a bad value is: position in the arrays -> (file, 1-based row in that file) for the message.
Locate = Callable[[int], tuple[object, int]]


# The strings pandas.read_csv reads as missing by default; the pyarrow fast path uses the same.
_PANDAS_NA_STRINGS = ("", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND",
                      "1.#QNAN", "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null")


@dataclass(frozen=True)
class Source:
    """Where one symbol's bars come from, and the identity its cache key is built from."""

    symbol: str
    path: Path | None = None            # None for a synthetic symbol and for a panel's symbol
    synthetic: dict | None = None       # the synthetic spec for this symbol
    panel: PanelSymbols | None = None          # the panel file (or partition folder) holding this symbol

    @property
    def where(self) -> str:
        """The input as messages name it: the file, ``panel.csv (symbol AAPL)``, or the symbol."""
        if self.panel is not None:
            return self.panel.label(self.symbol)
        return str(self.path) if self.path is not None else self.symbol

    def identity(self) -> str:
        """sha256 of the raw input bytes, of a panel symbol's own rows, or of the synthetic spec."""
        if self.panel is not None:
            return self.panel.identity(self.symbol)
        if self.path is not None:
            return sha256_file(self.path)
        return hashlib.sha256(json.dumps(self.synthetic, sort_keys=True).encode()).hexdigest()

    def read(self) -> RawInput:
        """Read the input once: its bytes, their sha256 and the stat signature seen before reading.
        A panel's symbol: its rows' sha256 (the panel file itself is read once for all symbols)."""
        if self.path is None:
            return RawInput(self.identity())
        try:
            # O_NONBLOCK: a named pipe swapped in since discovery must not block this open for ever.
            fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
            with open(fd, "rb") as fh:
                # fstat before reading: a write during the read changes the ctime after this point,
                # so a signature remembered with this hash never matches the changed file.
                st = os.fstat(fh.fileno())
                if not stat.S_ISREG(st.st_mode):
                    raise DataError(self.path, "is not a regular file (expected a CSV or Parquet file)")
                sig = stat_signature(st)
                data = fh.read()
        except OSError as e:  # removed or unreadable since discovery: a bad input, not a crash
            raise DataError(self.path, f"cannot be read ({e.strerror or e})") from None
        return RawInput(hashlib.sha256(data).hexdigest(), data, os.path.abspath(self.path), sig)

    def parse(self, raw: RawInput, *, use_adj_close: bool = False,
              required: Iterable[str] | None = None) -> OHLCV:
        """Validate the bars of ``raw`` (from :meth:`read`): exactly the bytes (or, for a panel's
        symbol, the rows) that were hashed. ``required``: the value columns the features read
        (default: all of open, high, low, close, volume)."""
        if self.panel is not None:
            return self.panel.bars(self.symbol, use_adj_close=use_adj_close, required=required)
        if self.path is not None:
            assert raw.data is not None
            return load_ohlcv_file(self.path, use_adj_close=use_adj_close, data=raw.data, required=required)
        assert self.synthetic is not None
        return dataclasses.replace(synthetic_symbol(**self.synthetic), symbol=self.symbol)

    def load(self, *, use_adj_close: bool = False, required: Iterable[str] | None = None) -> OHLCV:
        """Read and validate the bars."""
        return self.parse(self.read(), use_adj_close=use_adj_close, required=required)


# --------------------------------------------------------------------------- readers
def _read_csv_fast(data: bytes, text_columns: tuple[str, ...] = ()):
    """A CSV as a pyarrow Table through pyarrow's single-threaded reader, or None to let pandas
    read it.

    pyarrow parses numbers and ISO dates without holding the GIL, so preparation threads really
    run in parallel (pandas' reader and ``to_datetime`` hold it: with them a second thread gained
    nothing). Only a clean, plain parse is used; anything pyarrow rejects or types differently
    (bad UTF-8, ragged rows, duplicate or time-of-day columns, true/false columns, ...) goes to
    pandas, whose behaviour and error messages stay the reference. Both paths end in
    :func:`_assemble`, so every check on values is the same for both. ``text_columns`` are read
    as text (a symbol column: ``000001`` must not become the number 1).
    """
    import pyarrow as pa
    import pyarrow.csv as pcsv

    try:
        table = pcsv.read_csv(pa.BufferReader(data), read_options=pcsv.ReadOptions(use_threads=False),
                              convert_options=pcsv.ConvertOptions(
                                  null_values=list(_PANDAS_NA_STRINGS), strings_can_be_null=True,
                                  column_types={c: pa.string() for c in text_columns}))
    except (pa.ArrowException, ValueError, OSError):
        return None
    if any(table.column(c).null_count for c in text_columns if c in table.column_names):
        # pyarrow cannot exempt one column from its null strings: a symbol "NA" (National Bank of
        # Canada) would be lost. pandas keeps such a column's text (see read_frame).
        return None
    names = table.column_names
    plain = (pa.types.is_integer, pa.types.is_floating, pa.types.is_date, pa.types.is_timestamp,
             pa.types.is_string, pa.types.is_large_string, pa.types.is_null)
    if len(set(names)) != len(names) or not all(any(ok(t) for ok in plain) for t in table.schema.types):
        return None
    return table


def _from_arrow(path: Path, table, use_adj_close: bool, required: tuple[str, ...]) -> OHLCV | None:
    """The usual file without pandas: typed dates and null-free numbers straight to NumPy.

    Returns None whenever anything needs pandas' handling (string dates, missing values, odd
    types, a missing column, no rows, a date outside the nanosecond range, a separate Time
    column), so every error message about parsing still comes from the one pandas path. Each
    step skipped here is time a preparation thread would hold the GIL.
    """
    import pyarrow as pa

    if table.num_rows == 0:
        return None
    try:
        cols = select_columns(path, map_columns(path, table.column_names), table.column_names,
                              use_adj_close, required)
    except DataError:
        return None
    if "time_of_day" in cols:
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
    for c in value_columns(cols, required):
        col = table.column(cols[c])
        if col.null_count or not (pa.types.is_floating(col.type) or pa.types.is_integer(col.type)):
            return None
        arrays[c] = col.to_numpy().astype(np.float64)
    return _assemble(path, time, arrays, cols)


def read_frame(path: Path, data: bytes, *, fast: bool = True, text_columns: tuple[str, ...] = ()):
    """The table in a data file's bytes: a clean pyarrow Table from the CSV fast path, or a pandas
    DataFrame. A file that cannot be read as its type is a DataError naming it."""
    import pandas as pd

    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise DataError(path, f"unsupported file type '{suffix or '(none)'}' "
                              f"(expected one of {', '.join(SUPPORTED_SUFFIXES)})")
    if len(data) == 0:
        raise DataError(path, "file is empty (expected a header and OHLCV rows)")
    if suffix == ".csv":
        _check_separator(path, data)
    try:
        if suffix == ".csv":
            table = _read_csv_fast(data, text_columns) if fast else None
            return table if table is not None else _read_csv_pandas(data, text_columns)
        return pd.read_parquet(io.BytesIO(data))
    except UnicodeDecodeError as e:
        raise DataError(path, f"cannot be decoded as UTF-8 text ({e.reason} at byte {e.start})") from None
    except pd.errors.EmptyDataError:
        raise DataError(path, "file is empty (expected a header and OHLCV rows)") from None
    except pd.errors.ParserError as e:
        raise DataError(path, f"is not valid CSV: {e}") from None
    except Exception as e:  # pyarrow raises several types for a corrupt parquet
        raise DataError(path, f"cannot be read as {suffix[1:]}: {e}") from None


def _read_csv_pandas(data: bytes, text_columns: tuple[str, ...]):
    """A CSV as a pandas DataFrame. ``text_columns`` keep their text: only an empty cell is missing
    there (pandas' usual missing-value strings NA, NULL, None, n/a ... are real symbols: NA is
    National Bank of Canada); every other column reads the usual missing-value strings as missing."""
    import pandas as pd

    if not text_columns:
        return pd.read_csv(io.BytesIO(data), encoding="utf-8")
    names = pd.read_csv(io.BytesIO(data), encoding="utf-8", nrows=0).columns
    na = list(_PANDAS_NA_STRINGS)
    return pd.read_csv(io.BytesIO(data), encoding="utf-8", dtype={c: str for c in text_columns},
                       keep_default_na=False,
                       na_values={c: ([""] if c in text_columns else na)
                                  for c in names})


def csv_header(data: bytes) -> list[str]:
    """The column names on a CSV's first line (of the first 64 KiB)."""
    import csv

    head = data[:1 << 16]
    end = head.find(b"\n")
    head = head if end < 0 else head[:end]
    try:
        return next(csv.reader([head.decode("utf-8", errors="replace").lstrip("\ufeff")]), [])
    except csv.Error:  # binary junk (a bare carriage return, ...): no header, said by the caller's checks
        return []


def _check_separator(path: Path, data: bytes) -> None:
    """Refuse a CSV written with ';' or tab separators (spreadsheets in many European locales, often
    with decimal commas) in words: read with ',' it is one column, or its decimal commas split the
    rows into misaligned fields, and the missing-column message that follows misleads."""
    header = csv_header(data)
    if len(header) != 1:
        return
    for sep, name in ((";", "';'"), ("\t", "tab")):
        if sep in header[0]:
            raise DataError(path, f"seems to use {name} as the separator (header: {header[0][:60]!r}); "
                                  f"only comma-separated files with '.' decimals are read (save it as CSV "
                                  f"with ',' between fields and '.' as the decimal point)")


def index_as_column(df) -> tuple[object, str | None]:
    """A DataFrame whose index is data (a DatetimeIndex, as ``df.to_parquet()`` stores it) with the
    index turned into columns, and the name of the one that holds times (None if none does).
    A default RangeIndex is left alone."""
    import pandas as pd

    if isinstance(df.index, pd.RangeIndex):
        return df, None
    names = [n if n is not None else ("index" if df.index.nlevels == 1 else f"level_{i}")
             for i, n in enumerate(df.index.names)]
    if len(set(names)) != len(names) or any(n in df.columns for n in names):
        return df, None  # would clash with a column: the columns are the data
    levels = [df.index] if df.index.nlevels == 1 else [df.index.get_level_values(i)
                                                       for i in range(df.index.nlevels)]
    times = [n for n, lv in zip(names, levels, strict=True) if isinstance(lv, pd.DatetimeIndex)]
    return df.reset_index(names=names), (times[0] if len(times) == 1 else None)


# The value columns, in the order they are checked; "raw_close" is the unadjusted Close that
# --use-adj-close scales open, high and low by (see _assemble).
_PRICE_COLUMNS = ("open", "high", "low", "close", "volume", "raw_close")
_ACCEPTED = ("expected date/time, open, high, low, close, volume, matched case-insensitively (a Date "
             "and a Time column are combined)")


def map_columns(path: Path, columns: list, *, index_time: object = None) -> dict[str, object]:
    """Canonical name -> column, for every column this module knows: time (and time_of_day when a
    Date and a Time column are given), open ... volume, adj_close, symbol. Two columns meaning the
    same thing are a DataError naming both; nothing is required here (see :func:`select_columns`)."""
    mapping: dict[str, object] = {}
    times: list = []
    for col in columns:
        key = str(col).strip().lower()
        if key in _ADJ_CLOSE:
            canon = "adj_close"
        elif key in SYMBOL_NAMES:
            canon = "symbol"
        else:
            canon = _ALIASES.get(key)
        if canon is None:
            continue
        if canon == "time":
            times.append(col)
            continue
        if canon in mapping and mapping[canon] != col:
            what = "adj close" if canon == "adj_close" else canon
            raise DataError(path, f"two columns mean '{what}': '{mapping[canon]}' and '{col}' (expected one)")
        mapping[canon] = col
    if len(times) == 2 and sorted(str(c).strip().lower() for c in times) == ["date", "time"]:
        # Intraday vendor files: a Date and a Time column, combined into one timestamp.
        date_first = str(times[0]).strip().lower() == "date"
        mapping["time"], mapping["time_of_day"] = (times[0], times[1]) if date_first else (times[1], times[0])
    elif len(times) >= 2:
        raise DataError(path, f"two columns mean 'time': '{times[0]}' and '{times[1]}' (expected one "
                              f"date/time column, or one 'Date' and one 'Time' column, which are combined)")
    elif times:
        mapping["time"] = times[0]
    elif index_time is not None:
        mapping["time"] = index_time
    elif columns:
        # pandas and downloaders write the date index as a first, unnamed column.
        first = str(columns[0]).strip()
        if first == "" or first.lower().startswith("unnamed"):
            mapping["time"] = columns[0]
    return mapping


def select_columns(path: Path, mapping: dict[str, object], columns: list, use_adj_close: bool,
                   required: tuple[str, ...] = OHLCV_COLUMNS) -> dict[str, object]:
    """The columns to read: ``mapping`` (from :func:`map_columns`) with Adj Close as close under
    --use-adj-close, checked to hold the time and every ``required`` value column."""
    cols = {k: v for k, v in mapping.items() if k not in ("adj_close", "symbol")}
    if use_adj_close:
        if "adj_close" not in mapping:
            # Silently training on unadjusted prices when adjusted ones were asked for would mix
            # adjusted and unadjusted symbols in one universe.
            raise DataError(path, f"--use-adj-close was given but there is no adjusted close column "
                                  f"(found: {', '.join(str(c) for c in columns)}; expected one of "
                                  f"'Adj Close', 'adj_close', 'adjusted close')")
        if "close" in cols:
            cols["raw_close"] = cols["close"]
        cols["close"] = mapping["adj_close"]
    missing = [c for c in ("time", *OHLCV_COLUMNS) if c not in cols and (c == "time" or c in required)]
    if missing:
        needed = "" if set(required) >= set(OHLCV_COLUMNS) else \
            f"; the chosen features need {', '.join(c for c in OHLCV_COLUMNS if c in required)}"
        raise DataError(path, f"missing column(s) {', '.join(missing)} (found: "
                              f"{', '.join(str(c) for c in columns)}; {_ACCEPTED}{needed})")
    return cols


def value_columns(cols: dict[str, object], required: Iterable[str]) -> list[str]:
    """The value columns to parse: the required ones (close always, for the label), and the
    unadjusted close when open, high or low are scaled by Adj Close."""
    need = set(required) | {"close"}
    if need & {"open", "high", "low"}:
        need.add("raw_close")
    return [c for c in _PRICE_COLUMNS if c in need and c in cols]


def numeric_values(series, *, text: bool) -> tuple[np.ndarray, np.ndarray | None, str | None]:
    """A price or volume column as float64: (values, mask of cells that are not numbers or None,
    a problem with the whole column or None). ``text``: read from CSV text, whose values are parsed
    one by one; a typed column (Parquet) must already hold numbers."""
    import pandas as pd

    if pd.api.types.is_bool_dtype(series.dtype):  # True would silently become a price of 1.0
        return np.empty(0), None, f"column of type {series.dtype} (true/false values; expected numbers)"
    if series.dtype.kind in "fiu":  # already numbers (the usual case): nothing can be non-numeric
        return series.to_numpy(dtype=np.float64, na_value=np.nan), None, None
    if not text:
        return np.empty(0), None, (f"column of type {series.dtype} (expected a numeric column: integers or "
                                   f"floats)")
    values = pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    bad = np.isnan(values) & ~series.isna().to_numpy()
    return values, (bad if bad.any() else None), None


def non_numeric(series, i: int) -> str:
    """The message for a cell that :func:`numeric_values` found is not a number."""
    return f"non-numeric value {series.iloc[i]!r} (expected a number)"


def _numeric(path: Path, series, name: str, *, text: bool) -> np.ndarray:
    values, bad, problem = numeric_values(series, text=text)
    if problem:
        raise DataError(path, problem, column=name)
    if bad is not None:
        i = int(np.argmax(bad))
        raise DataError(path, non_numeric(series, i), row=i + 1, column=name)
    return values


def load_ohlcv_file(path: str | Path, *, use_adj_close: bool = False, data: bytes | None = None,
                    fast: bool = True, required: Iterable[str] | None = None) -> OHLCV:
    """Read one CSV/Parquet OHLCV file and validate it.

    ``data``: the file's bytes when the caller already read them (see :meth:`Source.read`);
    ``fast=False`` skips the pyarrow CSV path (the pandas path is the reference; both must agree);
    ``required``: the value columns the features read (default all); the others are NaN.
    """
    path = Path(path)
    need = OHLCV_COLUMNS if required is None else tuple(required)
    if data is None:
        data = read_input_bytes(path)
    df = read_frame(path, data, fast=fast)
    records = len(df) if hasattr(df, "iloc") else df.num_rows
    try:
        return _parse_frame(path, df, use_adj_close, need)
    except DataError as e:
        # Records skip blank lines: the message gives the row as the file numbers it (found only now,
        # when reporting, so a good file costs nothing).
        if e.row is None or e.path != str(path) or path.suffix.lower() != ".csv":
            raise
        rows = csv_file_rows(data, records)
        if rows is None or not 1 <= e.row <= len(rows):
            raise
        raise DataError(e.path, e.problem, row=int(rows[e.row - 1]), column=e.column) from None


def _parse_frame(path: Path, df, use_adj_close: bool, need: tuple[str, ...]) -> OHLCV:
    """The validated bars of a file's table (a pyarrow Table or a pandas DataFrame)."""
    if not hasattr(df, "iloc"):  # a clean pyarrow table from the CSV fast path
        bars = _from_arrow(path, df, use_adj_close, need)
        if bars is not None:
            return bars
        df = df.to_pandas(date_as_object=False, split_blocks=True)
    df, index_time = index_as_column(df)
    if len(df) == 0:
        raise DataError(path, "has a header but no data rows")
    columns = list(df.columns)
    mapping = map_columns(path, columns, index_time=index_time)
    cols = select_columns(path, mapping, columns, use_adj_close, need)
    series, name = time_column(df, cols)
    t = checked_times(path, series, name)
    text = path.suffix.lower() == ".csv"
    arrays = {c: _numeric(path, df[cols[c]], str(cols[c]), text=text) for c in value_columns(cols, need)}
    return _assemble(path, t, arrays, dict(cols, time=name))


def csv_file_rows(data: bytes, records: int) -> np.ndarray | None:
    """The row of each of a CSV's ``records`` parsed data records as the file numbers it (its line
    minus the header's line, so row 1 is the line below the header), or None when that is simply
    1, 2, ... (no blank lines, no line breaks inside quoted fields: one count tells) or cannot be
    worked out. Both CSV readers skip blank lines, so record numbers alone drift after one."""
    lines = data.count(b"\n") + (0 if data.endswith(b"\n") else 1)
    if lines == records + 1:
        return None
    if b'"' not in data and b"\n" in data:
        # No quoting: a record is a line that is not blank (whitespace only), found with numpy.
        ends = np.flatnonzero(np.frombuffer(data, np.uint8) == 10)
        blank = [m.start() for m in re.finditer(rb"(?m)^[ \t\r]*$", data)]
        blank_lines = np.searchsorted(ends, np.asarray(blank, np.int64)) + 1
        keep = np.ones(lines + 1, bool)  # index = 1-based line number; index 0 unused
        keep[0] = False
        keep[blank_lines[blank_lines <= lines]] = False
        kept = np.flatnonzero(keep)
    else:
        kept = np.asarray(_csv_record_lines(data), np.int64)
    if len(kept) != records + 1:
        return None  # the readers saw something else: keep their record numbers
    return kept[1:] - kept[0]


def _csv_record_lines(data: bytes) -> list[int]:
    """The first line of each non-blank record (header included), with quoted line breaks."""
    import csv

    reader = csv.reader(io.StringIO(data.decode("utf-8-sig", errors="replace"), newline=""))
    starts, last = [], 0
    for row in reader:
        start, last = last + 1, reader.line_num
        if row and not (len(row) == 1 and not row[0].strip()):
            starts.append(start)
    return starts


def read_input_bytes(path: Path) -> bytes:
    """A data file's bytes; a file that cannot be read (removed, no permission) is a DataError."""
    try:
        return path.read_bytes()
    except OSError as e:
        raise DataError(path, f"cannot be read ({e.strerror or e})") from None


def _assemble(path: object, time: np.ndarray, arrays: dict[str, np.ndarray], cols: dict[str, object], *,
              symbol: str | None = None, locate: Locate | None = None) -> OHLCV:
    """Validate the parsed columns (the same checks whichever reader parsed them) into bars.

    With --use-adj-close and an unadjusted Close present, the bar is validated as written, then
    open, high and low are scaled by adj_close / close - the usual "auto-adjust" - so that the
    bar stays consistent (an adjusted close with unadjusted highs and lows would make every range
    indicator wrong, and would lie outside [low, high] for most dividend-paying stocks).
    Columns not in ``arrays`` (not needed by the features) are NaN in the bars.
    """
    names = {k: str(v) for k, v in cols.items()}
    symbol = symbol if symbol is not None else Path(str(path)).stem
    raw = arrays.get("raw_close")
    o, h, lo, v = (arrays.get(c) for c in ("open", "high", "low", "volume"))
    if raw is None:
        return validate_ohlcv(path, symbol, time, o, h, lo, arrays["close"], v, column_names=names,
                              locate=locate)
    bars = validate_ohlcv(path, symbol, time, o, h, lo, raw, v,
                          column_names=dict(names, close=names["raw_close"]), locate=locate)
    adj = arrays["close"]
    _check_prices(path, {"close": adj}, names, locate)
    ratio = adj / bars.close
    return dataclasses.replace(bars, open=bars.open * ratio, high=bars.high * ratio, low=bars.low * ratio,
                               close=adj.astype(np.float64))


def _fail(path: object, locate: Locate | None, i: int, problem: str, column: str) -> DataError:
    where, row = locate(i) if locate is not None else (path, i + 1)
    return DataError(where, problem, row=row, column=column)


def _check_prices(path: object, prices: dict[str, np.ndarray | None], names: dict[str, str],
                  locate: Locate | None = None) -> None:
    for c, arr in prices.items():
        if arr is None:
            continue
        bad = np.flatnonzero(~np.isfinite(arr))
        if bad.size:
            raise _fail(path, locate, int(bad[0]), f"missing, NaN or infinite price {arr[bad[0]]} (expected "
                                                   f"a finite number)", names.get(c, c))
        bad = np.flatnonzero(arr <= 0)
        if bad.size:
            raise _fail(path, locate, int(bad[0]), f"price {arr[bad[0]]:g} (expected a price > 0)",
                        names.get(c, c))


# Relative slack for "low <= open, close <= high": prices that were rounded or converted
# separately may differ in their last bits.
RANGE_TOLERANCE = 1e-9


def validate_ohlcv(path: object, symbol: str, time: np.ndarray, open: np.ndarray | None,
                   high: np.ndarray | None, low: np.ndarray | None, close: np.ndarray,
                   volume: np.ndarray | None, column_names: dict[str, str] | None = None, *,
                   locate: Locate | None = None) -> OHLCV:
    """Check the bars make sense; the first problem found raises :class:`DataError`.

    A column given as None (not needed by the features) is not checked and is NaN in the bars.
    ``locate`` maps a position to (file, row) for messages (default: ``path``, position + 1).
    """
    names = column_names or {}
    _check_prices(path, {"open": open, "high": high, "low": low, "close": close}, names, locate)
    if volume is not None:
        bad = np.flatnonzero(~np.isfinite(volume) | (volume < 0))
        if bad.size:
            raise _fail(path, locate, int(bad[0]), f"volume {volume[bad[0]]} (expected a finite number >= 0)",
                        names.get("volume", "volume"))
    if high is not None and low is not None:
        bad = np.flatnonzero(high < low)
        if bad.size:
            i = int(bad[0])
            raise _fail(path, locate, i, f"high {high[i]:g} < low {low[i]:g} (expected high >= low)",
                        names.get("high", "high"))
        for c, arr in (("open", open), ("close", close)):
            if arr is None:
                continue
            bad = np.flatnonzero((arr > high * (1 + RANGE_TOLERANCE)) | (arr < low * (1 - RANGE_TOLERANCE)))
            if bad.size:
                i = int(bad[0])
                raise _fail(path, locate, i, f"{c} {arr[i]:g} is outside the bar's range low {low[i]:g} "
                                             f".. high {high[i]:g} (expected low <= {c} <= high)",
                            names.get(c, c))
    diffs = np.diff(time)
    bad = np.flatnonzero(diffs == 0)
    if bad.size:
        raise _fail(path, locate, int(bad[0]) + 1, "duplicate timestamp (same as the previous row; expected "
                                                  "strictly increasing times)", names.get("time", "time"))
    bad = np.flatnonzero(diffs < 0)
    if bad.size:
        raise _fail(path, locate, int(bad[0]) + 1, "timestamp earlier than the previous row (expected rows "
                                                  "sorted by time, oldest first)", names.get("time", "time"))
    absent = np.full(len(close), np.nan)  # NaN: a feature that read it would produce no finite row

    def f64(arr: np.ndarray | None) -> np.ndarray:
        return absent if arr is None else arr.astype(np.float64)

    return OHLCV(symbol, time.astype(np.int64), f64(open), f64(high), f64(low), close.astype(np.float64),
                 f64(volume))


# --------------------------------------------------------------------------- synthetic market
def synthetic_sources(symbols: int, bars: int, seed: int) -> list[Source]:
    """The built-in market: ``symbols`` deterministic symbols of ``bars`` daily bars each."""
    width = max(3, len(str(symbols - 1)))
    return [Source(symbol=f"SYN{i:0{width}d}",
                   synthetic={"version": SYNTHETIC_VERSION, "seed": seed, "index": i, "bars": bars})
            for i in range(symbols)]
