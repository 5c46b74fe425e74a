"""The two CSV readers - pyarrow's typed fast path and the pandas reference path - must agree on
every input: the same bars for a good file, the same DataError (file, row, column, message) for a
bad one. Also the range, type and bar-consistency checks of issue 6, for CSV and Parquet."""

from __future__ import annotations

from decimal import Decimal

import numpy as np
import pandas as pd
import pytest

from indicator_transformer.data.sources import load_ohlcv_file
from indicator_transformer.errors import DataError

HEADER = "date,open,high,low,close,volume"
GOOD = [
    "2024-01-02,10,11,9,10.5,1000",
    "2024-01-03,10.5,11.5,10,11,1200",
    "2024-01-04,11,12,10.5,11.5,900",
    "2024-01-05,11.5,12,11,11.2,1100",
]


def _rows(row: int, text: str) -> list[str]:
    rows = list(GOOD)
    rows[row - 1] = text
    return rows


# name -> (rows, expected (row, column, words in the message)) ; None: the file is good
CASES: dict[str, tuple[list[str], tuple[int | None, str | None, str] | None]] = {
    "good daily bars": (GOOD, None),
    "good intraday bars": ([r.replace(",", " 09:30:00,", 1) for r in GOOD], None),
    "good bars with a zero volume": (_rows(2, "2024-01-03,10.5,11.5,10,11,0"), None),
    "open equal to high and close equal to low": (_rows(2, "2024-01-03,11.5,11.5,10,10,1200"), None),
    "open a rounding error above high": (_rows(2, "2024-01-03,11.500000000001,11.5,10,11,1200"), None),
    "date after 2262": (_rows(4, "9999-12-31,11.5,12,11,11.2,1100"),
                        (4, "date", "timestamp 9999-12-31 is outside the supported range")),
    "date before 1677": (_rows(1, "1500-01-02,10,11,9,10.5,1000"),
                         (1, "date", "timestamp 1500-01-02 is outside the supported range")),
    "timestamp after 2262": ([r.replace(",", " 10:00,", 1)
                              for r in _rows(3, "2300-01-04,11,12,10.5,11.5,900")],
                             (3, "date", "2300-01-04T10:00:00 is outside the supported range 1677-09-22 to "
                                         "2262-04-11")),
    "open above high": (_rows(2, "2024-01-03,12,11.5,10,11,1200"), (2, "open", "outside the bar's range")),
    "open below low": (_rows(2, "2024-01-03,9,11.5,10,11,1200"), (2, "open", "expected low <= open <= high")),
    "close above high": (_rows(3, "2024-01-04,11,12,10.5,12.5,900"), (3, "close", "expected low <= close")),
    "close below low": (_rows(3, "2024-01-04,11,12,10.5,10,900"), (3, "close", "outside the bar's range")),
    "high below low": (_rows(3, "2024-01-04,11,10,10.5,11.5,900"), (3, "high", "high 10 < low 10.5")),
    "NaN price": (_rows(2, "2024-01-03,10.5,11.5,10,NaN,1200"), (2, "close", "NaN")),
    "infinite price": (_rows(2, "2024-01-03,10.5,inf,10,11,1200"), (2, "high", "infinite")),
    "minus infinite price": (_rows(2, "2024-01-03,10.5,11.5,-inf,11,1200"), (2, "low", "infinite")),
    "zero price": (_rows(4, "2024-01-05,0,12,11,11.2,1100"), (4, "open", "expected a price > 0")),
    "negative price": (_rows(4, "2024-01-05,11.5,12,-1,11.2,1100"), (4, "low", "expected a price > 0")),
    "negative volume": (_rows(3, "2024-01-04,11,12,10.5,11.5,-5"), (3, "volume", ">= 0")),
    "NaN volume": (_rows(3, "2024-01-04,11,12,10.5,11.5,nan"), (3, "volume", "expected a finite number")),
    "infinite volume": (_rows(3, "2024-01-04,11,12,10.5,11.5,inf"), (3, "volume", "a finite number")),
    "duplicate timestamps": (_rows(3, "2024-01-03,11,12,10.5,11.5,900"), (3, "date", "duplicate timestamp")),
    "unsorted timestamps": (_rows(3, "2024-01-01,11,12,10.5,11.5,900"), (3, "date", "sorted by time")),
    "duplicate intraday timestamps": ([r.replace(",", " 10:00,", 1)
                                       for r in _rows(2, "2024-01-02,10.5,11.5,10,11,1200")],
                                      (2, "date", "duplicate timestamp")),
    "unparseable date": (_rows(3, "not-a-date,11,12,10.5,11.5,900"), (3, "date", "unparseable date/time")),
    "missing date": (_rows(2, ",10.5,11.5,10,11,1200"), (2, "date", "missing date/time")),
    "non-numeric price": (_rows(3, "2024-01-04,11,12,10.5,abc,900"), (3, "close", "non-numeric value 'abc'")),
    "true/false prices": (["2024-01-02,True,True,True,True,1", "2024-01-03,False,True,False,True,1"],
                          (None, "open", "true/false values")),
    "volume beyond int64": (_rows(3, "2024-01-04,11,12,10.5,11.5,99999999999999999999999"), None),
}


def _load(tmp_path, rows: list[str], *, fast: bool):
    path = tmp_path / ("FAST.csv" if fast else "SLOW.csv")
    path.write_text("\n".join([HEADER, *rows]) + "\n")
    try:
        return path, load_ohlcv_file(path, fast=fast)
    except DataError as e:
        return path, e


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_fast_and_the_pandas_csv_paths_agree_on_every_input(tmp_path, case):
    rows, expected = CASES[case]
    fast_path, fast = _load(tmp_path, rows, fast=True)
    slow_path, slow = _load(tmp_path, rows, fast=False)

    if expected is None:
        assert not isinstance(fast, DataError), str(fast)
        assert not isinstance(slow, DataError), str(slow)
        for name in ("time", "open", "high", "low", "close", "volume"):
            np.testing.assert_array_equal(getattr(fast, name), getattr(slow, name), err_msg=name)
        return
    assert isinstance(fast, DataError) and isinstance(slow, DataError), (fast, slow)
    assert str(fast).replace(str(fast_path), "<file>") == str(slow).replace(str(slow_path), "<file>")
    row, column, words = expected
    assert (fast.row, fast.column) == (row, column)
    assert words in str(fast)
    assert str(fast).startswith(str(fast_path)) and fast.exit_code == 2


def _parquet(tmp_path, **columns) -> object:
    frame = {"Date": pd.to_datetime(["2024-01-02", "2024-01-03"]), "Open": [10.0, 10.5],
             "High": [11.0, 11.5], "Low": [9.0, 10.0], "Close": [10.5, 11.0], "Volume": [1000, 1200]}
    frame.update(columns)
    path = tmp_path / "ES.parquet"
    pd.DataFrame(frame).to_parquet(path)
    return path


@pytest.mark.parametrize("column, values, kind", [
    ("Close", [True, True], "bool"),
    ("Volume", [True, False], "bool"),
    ("Open", ["10.0", "10.5"], "str"),
    ("High", [Decimal("11.0"), Decimal("11.5")], "object"),
])
def test_a_non_numeric_parquet_price_or_volume_column_is_refused_naming_it_and_its_type(
        tmp_path, column, values, kind):
    path = _parquet(tmp_path, **{column: values})
    with pytest.raises(DataError) as info:
        load_ohlcv_file(path)
    assert info.value.column == column
    assert f"column '{column}'" in str(info.value) and "expected" in str(info.value)
    assert kind in str(info.value) or (kind != "bool" and "type" in str(info.value))


def test_a_parquet_timestamp_after_2262_is_refused_not_wrapped_around(tmp_path):
    dates = np.array(["2024-01-02", "9999-12-31"], dtype="datetime64[us]")
    path = _parquet(tmp_path, Date=dates)
    with pytest.raises(DataError) as info:
        load_ohlcv_file(path)
    assert (info.value.row, info.value.column) == (2, "Date")
    assert "9999-12-31" in str(info.value) and "outside the supported range" in str(info.value)


def test_a_numeric_parquet_file_with_nullable_integer_columns_loads(tmp_path):
    path = _parquet(tmp_path, Volume=pd.array([1000, 1200], dtype="Int64"))
    assert list(load_ohlcv_file(path).volume) == [1000.0, 1200.0]



@pytest.mark.parametrize("case", ["good daily bars", "NaN price", "non-numeric price", "negative volume",
                                  "open above high", "unsorted timestamps"])
def test_the_two_csv_paths_agree_when_only_some_columns_are_required_and_others_are_absent(tmp_path, case):
    rows, _ = CASES[case]
    results = []
    for fast in (True, False):
        path = tmp_path / ("FAST.csv" if fast else "SLOW.csv")
        # No open column; the volume column is there but no chosen feature reads it.
        path.write_text("\n".join(["date,high,low,close,volume",
                                   *(",".join(r.split(",")[:1] + r.split(",")[2:]) for r in rows)]) + "\n")
        try:
            results.append((path, load_ohlcv_file(path, fast=fast, required=("high", "low", "close"))))
        except DataError as e:
            results.append((path, e))
    (fast_path, fast), (slow_path, slow) = results
    if isinstance(fast, DataError) or isinstance(slow, DataError):
        assert str(fast).replace(str(fast_path), "<f>") == str(slow).replace(str(slow_path), "<f>")
        assert "volume" not in str(fast) and "open" not in str(fast)
        return
    for name in ("time", "high", "low", "close"):
        np.testing.assert_array_equal(getattr(fast, name), getattr(slow, name), err_msg=name)
    assert np.isnan(fast.open).all() and np.isnan(fast.volume).all() and np.isnan(slow.volume).all()
