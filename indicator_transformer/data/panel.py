"""Panel inputs: many symbols in one file (long format: date, symbol, open, ...) or in a folder of
Parquet files partitioned by symbol (``symbol=AAPL/part-0.parquet``, as pyarrow writes them).

A panel is read and parsed ONCE, whatever the number of its symbols, then split by its symbol
column (matched case-insensitively: symbol, ticker, instrument, asset, code). Each symbol becomes a
:class:`~.sources.Source` whose identity is the sha256 of a canonical encoding of its own parsed
rows (sorted by time), so appending a day to one symbol changes that symbol's cache key only, and
the key always describes exactly the values the features are computed from. A symbol's rows need
not be contiguous nor sorted in the file; two rows of one symbol at the same time are an error.
Every message names the file, the symbol and the file's own row number.

Parsing is lenient at first (a bad cell is remembered, not raised) so that a bad row of one symbol
is reported for that symbol only, when it is prepared, and only if a chosen feature reads its column.
"""

from __future__ import annotations

import hashlib
import json
import threading
import urllib.parse
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError, UserError
from .ohlcv import OHLCV, DataNote
from .sources import (
    _ACCEPTED,
    OHLCV_COLUMNS,
    SUPPORTED_SUFFIXES,
    SYMBOL_NAMES,
    Source,
    _assemble,
    csv_file_rows,
    csv_header,
    index_as_column,
    map_columns,
    non_numeric,
    numeric_values,
    read_frame,
    read_input_bytes,
    select_columns,
    value_columns,
)
from .timeparse import time_column, time_values

PARQUET_SUFFIXES = (".parquet", ".pq")
_VALUE_SOURCES = ("open", "high", "low", "close", "volume", "adj_close")
_SYMBOL_HELP = f"a column named one of {', '.join(SYMBOL_NAMES)}, matched case-insensitively"
_LAYOUTS = ("expected a CSV or Parquet panel file with a symbol column, or a folder of Parquet files "
            "partitioned by symbol such as symbol=AAPL/part-0.parquet; for a folder of one file per "
            "symbol use --data-dir")


def symbol_column(columns: Iterable[object]) -> object | None:
    """The column naming each row's symbol, or None."""
    return next((c for c in columns if str(c).strip().lower() in SYMBOL_NAMES), None)


def partition_symbol(folder: Path) -> str | None:
    """``AAPL`` for a folder named ``symbol=AAPL`` (any symbol-column name; the value is
    URI-decoded, as pyarrow encodes it); None for any other folder."""
    key, sep, value = folder.name.partition("=")
    if not sep or key.strip().lower() not in SYMBOL_NAMES:
        return None
    value = urllib.parse.unquote(value).strip()
    return value or None


def partition_files(folder: Path) -> list[Path]:
    """The Parquet files of one partition (nested folders included), without the hidden and
    ``_``-prefixed files writers leave beside them (``_SUCCESS``, ``_common_metadata``)."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in PARQUET_SUFFIXES
                  and not any(part.startswith((".", "_")) for part in p.relative_to(folder).parts))


def peek_columns(path: Path) -> list[str] | None:
    """A data file's column names, read cheaply (a CSV's first line, a Parquet file's schema);
    None when that fails (the full read then reports the problem)."""
    try:
        if path.suffix.lower() == ".csv":
            with open(path, "rb") as fh:
                head = fh.read(4096)  # a header line is short: one small read per file on a warm start
                if b"\n" not in head:
                    head += fh.read((1 << 16) - len(head))
            return csv_header(head)
        import pyarrow.parquet as pq

        return list(pq.read_schema(path).names)
    except Exception:  # noqa: BLE001 - any reader failure: leave the report to the full read
        return None


def _count_symbols(path: Path, column: str) -> int | None:
    """How many distinct symbols the file's symbol column holds (reading that column only)."""
    try:
        import pyarrow as pa

        if path.suffix.lower() == ".csv":
            import pyarrow.csv as pcsv

            table = pcsv.read_csv(path, read_options=pcsv.ReadOptions(use_threads=False),
                                  convert_options=pcsv.ConvertOptions(include_columns=[column],
                                                                      column_types={column: pa.string()}))
        else:
            import pyarrow.parquet as pq

            table = pq.read_table(path, columns=[column])
        return len(table.column(0).drop_null().unique())
    except Exception:  # noqa: BLE001 - unreadable: treat as a panel, whose full read reports it
        return None


@dataclass
class _Column:
    """One parsed column of a panel, in file order."""

    name: str                                  # as the file names it (for messages)
    values: np.ndarray                         # float64, or int64 ns for the time
    bad: np.ndarray | None = None              # cells that did not parse (None: none)
    explain: Callable[[int], str] | None = None  # the message for bad cell i
    problem: str | None = None                 # the whole column is unusable (its type)


def _concat(cols: list[_Column], offsets: np.ndarray) -> _Column:
    """The same column of several files, one after the other."""
    if len(cols) == 1:
        return cols[0]
    problem = next((c.problem for c in cols if c.problem), None)
    if problem:
        return _Column(cols[0].name, np.empty(0), problem=problem)
    bad = None
    if any(c.bad is not None for c in cols):
        bad = np.concatenate([c.bad if c.bad is not None else np.zeros(len(c.values), bool) for c in cols])

    def explain(i: int) -> str:
        k = int(np.searchsorted(offsets, i, side="right")) - 1
        e = cols[k].explain
        assert e is not None
        return e(i - int(offsets[k]))

    return _Column(cols[0].name, np.concatenate([c.values for c in cols]), bad, explain)


@dataclass
class _Part:
    """What one file of a panel holds."""

    mapping: dict[str, object]
    columns: list[object]
    cols: dict[str, _Column]
    symbols: np.ndarray | None   # object array of stripped strings, or None (partition: from the folder)
    rows: np.ndarray             # each record's row as the file numbers it (blank lines counted)


class Panel:
    """One panel input: a file, or one symbol's partition folder (``files``: its Parquet files).

    Loaded at most once (thread-safe); a load error is kept and raised to every caller.
    """

    def __init__(self, path: Path, files: Sequence[Path], *, symbol: str | None = None) -> None:
        self.path = Path(path)
        self.files = [Path(f) for f in files]
        self.fixed_symbol = symbol              # a partition's symbol, from its folder name
        self.symbol_column: str | None = None
        self._lock = threading.Lock()
        self._loaded = False
        self._error: DataError | None = None
        self._mapping: dict[str, object] = {}
        self._columns: list[object] = []
        self._cols: dict[str, _Column] = {}
        self._file_of = np.empty(0, np.int32)
        self._row_of = np.empty(0, np.int64)
        self._index: dict[str, np.ndarray] = {}
        self._identity: dict[str, str] = {}

    # ------------------------------------------------------------------ loading
    @property
    def loaded(self) -> bool:
        return self._loaded

    def load(self) -> Panel:
        """Read and parse every file of the panel (once); raises its DataError on every call."""
        with self._lock:
            if not self._loaded:
                try:
                    self._read()
                except DataError as e:
                    self._error = e
                self._loaded = True
        if self._error is not None:
            e = self._error  # a fresh exception per caller: threads must not share one traceback
            raise DataError(e.path, e.problem, row=e.row, column=e.column)
        return self

    def _read(self) -> None:
        if not self.files:
            raise DataError(self.path, f"holds no Parquet files ({_LAYOUTS})")
        parts = [self._read_file(f) for f in self.files]
        first = parts[0]
        for f, part in zip(self.files[1:], parts[1:], strict=True):
            if part.mapping != first.mapping:
                raise DataError(f, f"has other columns than {self.files[0].name} (found: "
                                   f"{', '.join(map(str, part.columns))}; expected the same columns in every "
                                   f"file of {self.path})")
        self._mapping, self._columns = first.mapping, first.columns
        sizes = [len(p.cols["time"].values) for p in parts]
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        self._cols = {c: _concat([p.cols[c] for p in parts], offsets) for c in first.cols}
        self._file_of = np.repeat(np.arange(len(parts), dtype=np.int32), sizes)
        self._row_of = np.concatenate([p.rows for p in parts])
        if self.fixed_symbol is not None:
            symbols = np.full(int(offsets[-1]), self.fixed_symbol, dtype=object)
        else:
            symbols = np.concatenate([p.symbols for p in parts])
        self._group(symbols)

    def _read_file(self, f: Path) -> _Part:
        data = read_input_bytes(f)
        header = csv_header(data) if f.suffix.lower() == ".csv" else []
        sym = symbol_column(header)
        df = read_frame(f, data, text_columns=(sym,) if sym is not None else ())
        if not hasattr(df, "iloc"):
            df = df.to_pandas(date_as_object=False, split_blocks=True)
        df, index_time = index_as_column(df)
        if len(df) == 0:
            raise DataError(f, "has a header but no data rows")
        columns = list(df.columns)
        found = ", ".join(str(c) for c in columns)
        mapping = map_columns(f, columns, index_time=index_time)
        if "time" not in mapping:
            raise DataError(f, f"missing column(s) time (found: {found}; {_ACCEPTED})")
        if "symbol" not in mapping and self.fixed_symbol is None:
            raise DataError(f, f"has no symbol column (found: {found}; expected {_SYMBOL_HELP}; for a "
                               f"folder of one file per symbol use --data-dir)")
        series, tname = time_column(df, mapping)
        values, bad, explain, problem = time_values(series)
        if problem:
            raise DataError(f, problem, column=tname)
        cols = {"time": _Column(tname, values, bad, explain if bad is not None else None)}
        text = f.suffix.lower() == ".csv"
        for canon in _VALUE_SOURCES:
            if canon in mapping:
                s = df[mapping[canon]]
                v, b, p = numeric_values(s, text=text)
                cols[canon] = _Column(str(mapping[canon]), v, b,
                                      (lambda i, s=s: non_numeric(s, i)) if b is not None else None, p)
        # Both CSV readers skip blank lines: messages give the file's own row numbers.
        file_rows = csv_file_rows(data, len(df)) if text else None
        rows = file_rows if file_rows is not None else np.arange(1, len(df) + 1, dtype=np.int64)
        symbols = self._symbols(f, df, mapping, rows)
        return _Part({k: str(v) for k, v in mapping.items()}, columns, cols, symbols, rows)

    def _symbols(self, f: Path, df, mapping: dict[str, object], rows: np.ndarray) -> np.ndarray | None:
        if "symbol" not in mapping:
            return None
        name = mapping["symbol"]
        self.symbol_column = str(name)
        s = df[name]
        text = s.astype(object).where(s.notna(), "").astype(str).str.strip().to_numpy(dtype=object)
        empty = np.flatnonzero(text == "")
        if empty.size:
            raise DataError(f, f"missing symbol (expected the symbol of every row in column '{name}')",
                            row=int(rows[empty[0]]), column=str(name))
        if self.fixed_symbol is not None:
            other = np.flatnonzero(text != self.fixed_symbol)
            if other.size:
                i = int(other[0])
                raise DataError(f, f"symbol {text[i]!r} in the folder of symbol {self.fixed_symbol!r} "
                                   f"(expected only {self.fixed_symbol!r} in {self.path.name})",
                                row=int(rows[i]), column=str(name))
        return text

    def _group(self, symbols: np.ndarray) -> None:
        """Each symbol's row positions sorted by time, and the sha256 of its rows."""
        import pandas as pd

        codes, uniques = pd.factorize(symbols, sort=True)
        order = np.lexsort((self._cols["time"].values, codes))
        bounds = np.searchsorted(codes[order], np.arange(len(uniques) + 1))
        for k, symbol in enumerate(uniques):
            idx = order[bounds[k]:bounds[k + 1]]
            self._index[str(symbol)] = idx
            self._identity[str(symbol)] = self._hash_rows(idx)

    def _hash_rows(self, idx: np.ndarray) -> str:
        """sha256 of a canonical encoding of one symbol's parsed rows, in time order: which columns
        there are, then each column's values and bad-cell mask. The same values give the same
        identity wherever the rows sit in the file and however the readers typed the columns."""
        h = hashlib.sha256()
        head = {"format": "panel-rows/1", "rows": len(idx),
                "columns": {c: ("unusable" if col.problem else "values") for c, col in self._cols.items()}}
        h.update(json.dumps(head, sort_keys=True).encode())
        for c in sorted(self._cols):
            col = self._cols[c]
            if col.problem:
                continue
            h.update(np.ascontiguousarray(col.values[idx]).tobytes())
            bad = col.bad[idx] if col.bad is not None else None
            h.update(b"\x01" + np.packbits(bad).tobytes() if bad is not None and bad.any() else b"\x00")
        return h.hexdigest()

    # ------------------------------------------------------------------ per symbol
    def symbols(self) -> list[str]:
        """The symbols, sorted."""
        return sorted(self.load()._index)

    def label(self, symbol: str) -> str:
        """How messages name one symbol of this panel."""
        return f"{self.path} (symbol {symbol})"

    def identity(self, symbol: str) -> str:
        """The sha256 of the symbol's own rows (loads the panel if needed)."""
        return self.load()._identity[symbol]

    def known_identity(self, symbol: str) -> str | None:
        """The identity when the panel is already loaded (no work), else None."""
        return self.identity(symbol) if self._loaded else None

    def _where(self, j: int, symbol: str) -> str:
        return f"{self.files[int(self._file_of[j])]} (symbol {symbol})"

    def bars(self, symbol: str, *, use_adj_close: bool = False, required: Iterable[str] | None = None
             ) -> OHLCV:
        """The validated bars of one symbol, from the columns the features need (``required``)."""
        self.load()
        need = OHLCV_COLUMNS if required is None else tuple(required)
        cols = select_columns(self.path, self._mapping, self._columns, use_adj_close, need)
        source = {c: c for c in ("time", *OHLCV_COLUMNS)}
        source.update({"close": "adj_close" if use_adj_close else "close", "raw_close": "close"})
        wanted = value_columns(cols, need)
        idx = self._index[symbol]
        for c in ("time", *wanted):
            self._check_cells(self._cols[source[c]], idx, symbol)
        time = self._cols["time"].values[idx]
        self._check_duplicates(time, idx, symbol)
        arrays = {c: self._cols[source[c]].values[idx] for c in wanted}
        names = {c: self._cols[source[c]].name for c in cols if c != "time_of_day"}

        def locate(i: int) -> tuple[object, int]:
            j = int(idx[i])
            return self._where(j, symbol), int(self._row_of[j])

        return _assemble(self.path, time, arrays, names, symbol=symbol, locate=locate)

    def _check_cells(self, col: _Column, idx: np.ndarray, symbol: str) -> None:
        if col.problem:
            raise DataError(self.path, col.problem, column=col.name)
        if col.bad is None:
            return
        bad = idx[col.bad[idx]]
        if bad.size:
            j = int(bad.min())  # the first bad row in file order
            assert col.explain is not None
            raise DataError(self._where(j, symbol), col.explain(j), row=int(self._row_of[j]), column=col.name)

    def _check_duplicates(self, time: np.ndarray, idx: np.ndarray, symbol: str) -> None:
        dup = np.flatnonzero(np.diff(time) == 0)
        if not dup.size:
            return
        a, b = sorted((int(idx[dup[0]]), int(idx[dup[0] + 1])))
        other = f"row {self._row_of[a]}" + ("" if self._file_of[a] == self._file_of[b]
                                            else f" of {self.files[int(self._file_of[a])]}")
        shown = np.datetime_as_string(np.datetime64(int(time[dup[0]]), "ns"))
        shown = shown.removesuffix("T00:00:00.000000000")
        raise DataError(self._where(b, symbol), f"duplicate timestamp {shown} for this symbol (also in "
                                                f"{other}; expected one row per symbol and time)",
                        row=int(self._row_of[b]), column=self._cols["time"].name)


# --------------------------------------------------------------------------- sources
def panel_sources(panel: Panel) -> list[Source]:
    """One source per symbol of a panel (loads it: raises its DataError)."""
    return [Source(symbol=s, panel=panel) for s in panel.symbols()]


def _partition_folders(folder: Path) -> list[tuple[str, Path]]:
    return [(s, p) for p in sorted(folder.iterdir()) if p.is_dir() and not p.name.startswith(".")
            and (s := partition_symbol(p)) is not None]


class _Places:
    """Sources by symbol, refusing a symbol found in two places."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.sources: list[Source] = []
        self._where: dict[str, str] = {}

    def add(self, src: Source, place: str) -> None:
        if src.symbol in self._where:
            raise UserError(f"{self.root}: symbol '{src.symbol}' appears twice: in {self._where[src.symbol]} "
                            f"and in {place} (expected each symbol in one place)")
        self._where[src.symbol] = place
        self.sources.append(src)


def data_file_sources(data_file: str | Path) -> list[Source]:
    """The symbols of ``--data-file``: a panel CSV/Parquet file, or a folder partitioned by symbol."""
    p = Path(data_file)
    if not p.exists():
        raise UserError(f"{p}: data file does not exist ({_LAYOUTS})")
    if p.is_dir():
        parts = _partition_folders(p)
        if not parts:
            raise UserError(f"{p}: is a folder without symbol=... partition folders ({_LAYOUTS})")
        places = _Places(p)
        for symbol, folder in parts:
            panel = Panel(folder, partition_files(folder), symbol=symbol)
            places.add(Source(symbol, panel=panel), f"{folder.name}/")
        return places.sources
    if p.suffix.lower() not in SUPPORTED_SUFFIXES:
        raise DataError(p, f"unsupported file type '{p.suffix or '(none)'}' ({_LAYOUTS})")
    return panel_sources(Panel(p, [p]))


def _panel_in(path: Path) -> Panel | None:
    """A Panel for a data-folder file whose symbol column holds several symbols, else None (a file
    of one symbol, with or without a symbol column, stays a one-symbol file named by its stem)."""
    columns = peek_columns(path)
    column = symbol_column(columns or [])
    if column is None:
        return None
    count = _count_symbols(path, str(column))
    if count is not None and count <= 1:
        return None
    return Panel(path, [path])


def data_dir_sources(root: Path, files: list[Path], folders: list[Path]) -> list[Source]:
    """The sources of a data folder's data files and ``symbol=...`` partition folders (see
    :func:`~.folder.discover_files`)."""
    places = _Places(root)
    for p in files:
        panel = _panel_in(p)
        if panel is None:
            places.add(Source(symbol=p.stem, path=p), p.name)
            continue
        try:
            symbols = panel.symbols()
        except DataError:
            # A bad panel is reported with the other bad files when it is prepared.
            places.add(Source(symbol=p.stem, panel=panel), p.name)
            continue
        warnings.warn(f"{p}: holds {len(symbols)} symbols in its '{panel.symbol_column}' column; each is "
                      f"prepared as its own symbol (a panel file, as --data-file reads it)", DataNote,
                      stacklevel=3)
        for s in symbols:
            places.add(Source(symbol=s, panel=panel), f"{p.name} (column '{panel.symbol_column}')")
    for folder in folders:
        symbol = partition_symbol(folder)
        if symbol is not None:
            places.add(Source(symbol, panel=Panel(folder, partition_files(folder), symbol=symbol)),
                       f"{folder.name}/")
    return places.sources
