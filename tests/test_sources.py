"""sources.py: every bad input names its file, row and column; real-world layouts load; the
synthetic market looks like a market."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from indicator_transformer.data.folder import discover_files
from indicator_transformer.data.sources import Source, load_ohlcv_file, synthetic_sources
from indicator_transformer.data.synthetic import synthetic_symbol
from indicator_transformer.errors import DataError, UserError

HEADER = "date,open,high,low,close,volume"
GOOD_ROWS = [
    "2024-01-02,10,11,9,10.5,1000",
    "2024-01-03,10.5,11.5,10,11,1200",
    "2024-01-04,11,12,10.5,11.5,900",
    "2024-01-05,11.5,12,11,11.2,1100",
]


def _csv(tmp_path, rows, *, header=HEADER, name="AAPL.csv"):
    path = tmp_path / name
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def _with_row(row_number: int, text: str) -> list[str]:
    """GOOD_ROWS with data row ``row_number`` (1-based, header excluded) replaced."""
    rows = list(GOOD_ROWS)
    rows[row_number - 1] = text
    return rows


# --------------------------------------------------------------------------- bad inputs
BAD_ROWS = {
    "non-numeric value": (3, "2024-01-04,11,12,10.5,abc,900", "close", "non-numeric value 'abc'"),
    "missing price": (2, "2024-01-03,10.5,11.5,10,,1200", "close", "NaN"),
    "NaN price": (2, "2024-01-03,10.5,11.5,10,NaN,1200", "close", "NaN"),
    "infinite price": (2, "2024-01-03,10.5,inf,10,11,1200", "high", "infinite"),
    "negative price": (4, "2024-01-05,11.5,12,-1,11.2,1100", "low", "expected a price > 0"),
    "zero price": (4, "2024-01-05,0,12,11,11.2,1100", "open", "expected a price > 0"),
    "high below low": (3, "2024-01-04,11,10,10.5,11.5,900", "high", "high 10 < low 10.5"),
    "unsorted timestamps": (3, "2024-01-01,11,12,10.5,11.5,900", "date", "sorted by time"),
    "duplicate timestamps": (3, "2024-01-03,11,12,10.5,11.5,900", "date", "duplicate timestamp"),
    "unparseable date": (3, "not-a-date,11,12,10.5,11.5,900", "date", "unparseable date/time"),
    "missing date": (2, ",10.5,11.5,10,11,1200", "date", "missing date/time"),
    "row with a field too few": (2, "2024-01-03,10.5,11.5,10,11", "volume", "volume nan"),
    "negative volume": (3, "2024-01-04,11,12,10.5,11.5,-5", "volume", "expected a finite number >= 0"),
}


@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_a_bad_value_raises_a_data_error_naming_the_file_row_and_column(tmp_path, case):
    row, text, column, problem = BAD_ROWS[case]
    path = _csv(tmp_path, _with_row(row, text))

    with pytest.raises(DataError) as info:
        load_ohlcv_file(path)

    err = info.value
    assert err.path == str(path)
    assert (err.row, err.column) == (row, column)
    message = str(err)
    assert str(path) in message
    assert f"row {row}" in message and f"column '{column}'" in message
    assert problem in message
    assert err.exit_code == 2


@pytest.mark.parametrize("missing", ["None", "<NA>", "n/a", "NULL", "#N/A"])
def test_every_usual_spelling_of_a_missing_price_is_reported_as_missing(tmp_path, missing):
    path = _csv(tmp_path, _with_row(2, f"2024-01-03,10.5,11.5,10,{missing},1200"))
    with pytest.raises(DataError) as info:
        load_ohlcv_file(path)
    assert (info.value.row, info.value.column) == (2, "close")
    assert "missing, NaN or infinite price" in str(info.value)


BAD_FILES = {
    "missing column": (lambda p: p.write_text(
        "date,open,high,low,close\n2024-01-02,10,11,9,10.5\n"), "missing column(s) volume"),
    "empty file": (lambda p: p.write_bytes(b""), "file is empty"),
    "blank lines only": (lambda p: p.write_text("\n\n\n"), "file is empty"),
    "header only": (lambda p: p.write_text(HEADER + "\n"), "header but no data rows"),
    "undecodable bytes": (lambda p: p.write_bytes(b"\xff\xfe\x00garbage"), "cannot be decoded as UTF-8"),
    "numeric dates": (lambda p: p.write_text(
        "time,open,high,low,close,volume\n1,1,1,1,1,1\n2,1,1,1,1,1\n"), "numeric values in the date/time"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_a_bad_file_raises_a_data_error_naming_the_file_and_the_problem(tmp_path, case):
    write, problem = BAD_FILES[case]
    path = tmp_path / "MSFT.csv"
    write(path)

    with pytest.raises(DataError) as info:
        load_ohlcv_file(path)

    assert str(info.value).startswith(str(path))
    assert problem in str(info.value)


def test_an_unsupported_suffix_is_a_data_error_naming_the_expected_types(tmp_path):
    path = tmp_path / "AAPL.txt"
    path.write_text("\n".join([HEADER, *GOOD_ROWS]) + "\n")
    with pytest.raises(DataError) as info:
        load_ohlcv_file(path)
    message = str(info.value)
    assert str(path) in message and "'.txt'" in message and ".csv" in message and ".parquet" in message


def test_a_corrupt_parquet_file_is_a_data_error_not_a_crash(tmp_path):
    path = tmp_path / "ES.parquet"
    path.write_bytes(b"PAR1 this is not really parquet PAR1")
    with pytest.raises(DataError, match="cannot be read as parquet"):
        load_ohlcv_file(path)


def test_an_empty_data_directory_is_a_user_error_naming_it(tmp_path):
    (tmp_path / ".hidden").write_text("ignored")
    with pytest.raises(UserError, match="data directory is empty") as info:
        discover_files(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_a_nonexistent_data_directory_is_a_user_error_naming_it(tmp_path):
    missing = tmp_path / "no" / "such" / "dir"
    with pytest.raises(UserError, match="does not exist") as info:
        discover_files(missing)
    assert str(missing) in str(info.value)


def test_a_file_given_as_the_data_directory_is_a_user_error(tmp_path):
    path = _csv(tmp_path, GOOD_ROWS)
    with pytest.raises(UserError, match="is not a directory"):
        discover_files(path)


def test_discovery_returns_one_sorted_source_per_file_and_skips_hidden_files(tmp_path):
    for name in ("MSFT.csv", "AAPL.csv", "ES.parquet", ".DS_Store"):
        (tmp_path / name).write_text("x")
    (tmp_path / "sub").mkdir()
    sources = discover_files(tmp_path)
    assert [s.symbol for s in sources] == ["AAPL", "ES", "MSFT"]
    assert all(s.path.parent == tmp_path for s in sources)


def test_two_files_for_one_symbol_are_a_user_error(tmp_path):
    (tmp_path / "AAPL.csv").write_text("x")
    (tmp_path / "AAPL.parquet").write_text("x")
    with pytest.raises(UserError, match="appears twice"):
        discover_files(tmp_path)


# --------------------------------------------------------------------------- real-world layouts
def _bars(n=30, seed=0):
    return synthetic_symbol(1, seed, 0, n)


def _assert_loaded(got, x, *, close=None):
    np.testing.assert_array_equal(got.time, x.time)
    np.testing.assert_allclose(got.open, x.open, rtol=1e-12)
    np.testing.assert_allclose(got.high, x.high, rtol=1e-12)
    np.testing.assert_allclose(got.low, x.low, rtol=1e-12)
    np.testing.assert_allclose(got.close, x.close if close is None else close, rtol=1e-12)
    np.testing.assert_allclose(got.volume, x.volume, rtol=1e-12)


def _frame(x, time_name="Date", fmt="%Y-%m-%d"):
    return pd.DataFrame({time_name: pd.to_datetime(x.time).strftime(fmt), "Open": x.open,
                         "High": x.high, "Low": x.low, "Close": x.close, "Volume": x.volume})


@pytest.mark.parametrize("time_name", ["Date", "Datetime", "timestamp", "TIME", " date "])
def test_capitalised_and_aliased_column_names_are_recognised(tmp_path, time_name):
    x = _bars()
    path = tmp_path / "AAPL.csv"
    _frame(x, time_name).to_csv(path, index=False)
    got = load_ohlcv_file(path)
    assert got.symbol == "AAPL"
    _assert_loaded(got, x)


def test_short_column_names_and_extra_columns_are_accepted(tmp_path):
    x = _bars()
    df = pd.DataFrame({"ts": pd.to_datetime(x.time).strftime("%Y-%m-%d"), "o": x.open, "h": x.high,
                       "l": x.low, "c": x.close, "v": x.volume, "dividends": 0.0, "ticker": "X"})
    path = tmp_path / "X.csv"
    df.to_csv(path, index=False)
    _assert_loaded(load_ohlcv_file(path), x)


def test_an_unnamed_first_index_column_as_pandas_writes_it_is_the_time(tmp_path):
    x = _bars()
    df = _frame(x).set_index(pd.to_datetime(x.time)).drop(columns="Date")
    path = tmp_path / "SPY.csv"
    df.to_csv(path)  # header starts with an empty name: ",Open,High,..."
    assert path.read_text().startswith(",Open,High,Low,Close,Volume")
    _assert_loaded(load_ohlcv_file(path), x)


def test_adj_close_is_ignored_by_default_and_used_as_close_when_asked(tmp_path):
    x = _bars()
    adj = x.close * 0.97
    df = _frame(x)
    df["Adj Close"] = adj
    path = tmp_path / "IBM.csv"
    df.to_csv(path, index=False)

    _assert_loaded(load_ohlcv_file(path), x)
    got = load_ohlcv_file(path, use_adj_close=True)
    np.testing.assert_allclose(got.close, adj, rtol=1e-12)
    # open, high and low are adjusted by the same factor, so the bar stays consistent
    for name in ("open", "high", "low"):
        np.testing.assert_allclose(getattr(got, name), getattr(x, name) * 0.97, rtol=1e-12)
    assert np.all(got.low <= got.close) and np.all(got.close <= got.high)
    assert Source("IBM", path=path).load(use_adj_close=True).close[0] == pytest.approx(adj[0])


def test_an_adjusted_close_outside_the_unadjusted_range_loads_as_a_consistent_adjusted_bar(tmp_path):
    # A 2:1 split adjustment halves the early closes: unadjusted highs and lows would not contain them.
    x = _bars()
    adj = x.close * np.where(np.arange(len(x)) < 15, 0.5, 1.0)
    df = _frame(x)
    df["Adj Close"] = adj
    path = tmp_path / "SPLIT.csv"
    df.to_csv(path, index=False)
    got = load_ohlcv_file(path, use_adj_close=True)
    np.testing.assert_allclose(got.high[:15], x.high[:15] * 0.5, rtol=1e-12)
    np.testing.assert_allclose(got.high[15:], x.high[15:], rtol=1e-12)


def test_use_adj_close_on_a_file_without_an_adjusted_close_is_a_data_error(tmp_path):
    path = _csv(tmp_path, GOOD_ROWS)
    with pytest.raises(DataError, match="--use-adj-close was given but there is no adjusted close"):
        load_ohlcv_file(path, use_adj_close=True)


def test_parquet_files_load_like_csv_files(tmp_path):
    x = _bars()
    df = _frame(x)
    df["Date"] = pd.to_datetime(x.time)  # a real datetime column, as parquet keeps it
    df.to_parquet(tmp_path / "ES.parquet")
    df.to_parquet(tmp_path / "NQ.pq")
    _assert_loaded(load_ohlcv_file(tmp_path / "ES.parquet"), x)
    _assert_loaded(load_ohlcv_file(tmp_path / "NQ.pq"), x)


def test_intraday_timestamps_keep_their_minutes(tmp_path):
    rows = [f"2024-03-01 09:{30 + i:02d}:00,10,11,9,10.5,{100 + i}" for i in range(20)]
    path = _csv(tmp_path, rows, header="Datetime,Open,High,Low,Close,Volume")
    got = load_ohlcv_file(path)
    assert len(got) == 20
    assert np.all(np.diff(got.time) == 60 * 10**9)
    assert got.time[0] == np.datetime64("2024-03-01T09:30:00", "ns").astype(np.int64)


def test_iso_and_us_date_layouts_of_the_same_bars_load_identically(tmp_path):
    # ISO dates take pyarrow's typed fast path; US dates are parsed as text by pandas.
    x = _bars(60, seed=4)
    _frame(x, fmt="%Y-%m-%d").to_csv(tmp_path / "ISO.csv", index=False)
    _frame(x, fmt="%m/%d/%Y").to_csv(tmp_path / "US.csv", index=False)
    iso, us = load_ohlcv_file(tmp_path / "ISO.csv"), load_ohlcv_file(tmp_path / "US.csv")
    for name in ("time", "open", "high", "low", "close", "volume"):
        np.testing.assert_array_equal(getattr(iso, name), getattr(us, name))
    _assert_loaded(iso, x)


def test_timezone_aware_timestamps_are_converted_to_utc(tmp_path):
    rows = ["2024-03-01T09:30:00-05:00,10,11,9,10.5,100", "2024-03-01T09:31:00-05:00,10,11,9,10.5,100"]
    got = load_ohlcv_file(_csv(tmp_path, rows))
    assert got.time[0] == np.datetime64("2024-03-01T14:30:00", "ns").astype(np.int64)


def test_the_identity_of_a_file_changes_with_one_byte_of_its_content(tmp_path):
    a = _csv(tmp_path, GOOD_ROWS, name="A.csv")
    b = _csv(tmp_path, _with_row(4, "2024-01-05,11.5,12,11,11.3,1100"), name="B.csv")
    c = _csv(tmp_path, GOOD_ROWS, name="C.csv")
    assert Source("A", path=a).identity() == Source("C", path=c).identity()
    assert Source("A", path=a).identity() != Source("B", path=b).identity()


# --------------------------------------------------------------------------- synthetic market
def test_the_synthetic_market_is_deterministic_for_a_seed_and_differs_for_another():
    a = synthetic_symbol(1, 7, 3, 500)
    b = synthetic_symbol(1, 7, 3, 500)
    c = synthetic_symbol(1, 8, 3, 500)
    d = synthetic_symbol(1, 7, 4, 500)
    for f in dataclasses.fields(a):
        np.testing.assert_array_equal(getattr(a, f.name), getattr(b, f.name))
    assert not np.allclose(a.close, c.close)
    assert not np.allclose(a.close, d.close)


def test_synthetic_sources_name_symbols_and_load_them_under_their_names():
    sources = synthetic_sources(12, 300, seed=5)
    assert [s.symbol for s in sources][:2] == ["SYN000", "SYN001"]
    assert len({s.identity() for s in sources}) == 12
    bars = sources[11].load()
    assert bars.symbol == "SYN011" and len(bars) == 300
    assert synthetic_sources(12, 300, seed=5)[3].identity() == sources[3].identity()
    assert synthetic_sources(12, 300, seed=6)[3].identity() != sources[3].identity()


def test_an_unknown_synthetic_version_is_refused():
    with pytest.raises(UserError, match="version 99"):
        synthetic_symbol(99, 0, 0, 100)


@pytest.mark.parametrize("index", range(6))
def test_synthetic_bars_are_consistent_ohlc_with_positive_prices_and_sorted_times(index):
    x = synthetic_symbol(1, 11, index, 2000)
    assert np.all(x.low > 0) and np.all(x.volume >= 0)
    assert np.all(x.low <= np.minimum(x.open, x.close))
    assert np.all(x.high >= np.maximum(x.open, x.close))
    assert np.all(np.diff(x.time) > 0)


def test_synthetic_volume_grows_with_the_size_of_the_move():
    corrs = []
    for index in range(8):
        x = synthetic_symbol(1, 3, index, 3000)
        abs_ret = np.abs(np.diff(np.log(x.close)))
        corrs.append(np.corrcoef(abs_ret, x.volume[1:])[0, 1])
    assert min(corrs) > 0.2, corrs


def test_synthetic_returns_show_volatility_clustering():
    acfs = []
    for index in range(8):
        x = synthetic_symbol(1, 3, index, 3000)
        a = np.abs(np.diff(np.log(x.close)))
        acfs.append(np.corrcoef(a[1:], a[:-1])[0, 1])
    assert np.mean(acfs) > 0.05 and min(acfs) > 0.0, acfs


def test_a_megabyte_garbage_line_is_refused_with_a_short_message(tmp_path) -> None:
    from conftest import write_symbol_csv

    from indicator_transformer.data.sources import load_ohlcv_file
    from indicator_transformer.data.synthetic import synthetic_symbol
    from indicator_transformer.errors import DataError

    path = write_symbol_csv(tmp_path / "A.csv", synthetic_symbol(1, 3, 0, 300))
    with open(path, "a") as f:
        f.write("x" * 1_000_000 + "\n")
    with pytest.raises(DataError) as info:
        load_ohlcv_file(path)
    assert len(str(info.value)) < 1000 and "1,000,000 characters" in str(info.value)
