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
    # Dates other than ISO: one format for the whole column, never guessed cell by cell.
    "day-first dates": ([f"{d}/01/2024,10,11,9,10.5,1000" for d in ("09", "12", "13", "14")], None),
    "month-first dates with a time of day": ([f"01/{13 + i}/2024 9:{30 + i} AM,10,11,9,10.5,1000"
                                              for i in range(4)], None),
    "dates with dots and the day first": ([f"{13 + i}.02.2024,10,11,9,10.5,1000" for i in range(4)], None),
    "monthly dates whose day and month cannot be told apart": (
        [f"01/0{m}/2024,10,11,9,10.5,1000" for m in range(1, 5)],
        (None, "date", "the day/month order of the dates is ambiguous: in every date the first and second "
                       "numbers are 12 or less, so '01/02/2024' could be day 1 of month 2 or day 2 of "
                       "month 1 (write dates as YYYY-MM-DD (ISO 8601))")),
    "dates switching from ISO to US format": (_rows(3, "01/04/2024,11,12,10.5,11.5,900"),
                                              (3, "date", "unparseable date/time '01/04/2024' (expected the "
                                                          "column's one format ISO 8601")),
    "a month-first date in a day-first column": (
        ["13/01/2024,10,11,9,10.5,1000", "14/01/2024,10,11,9,10.5,1000", "01/15/2024,10,11,9,10.5,1000"],
        (3, "date", "unparseable date/time '01/15/2024' (expected the column's one format DD/MM/YYYY, "
                    "as in '13/01/2024'")),
    "dates switching from US to ISO format": (
        ["01/13/2024,10,11,9,10.5,1000", "2024-01-14,10,11,9,10.5,1000"],
        (2, "date", "format MM/DD/YYYY, as in '01/13/2024'")),
    "a semicolon-separated file with decimal commas": (
        ["2024-01-02;10;11;9;10,5;1000"], (None, None, "seems to use ';' as the separator")),
}
# These headers replace HEADER for the cases named.
HEADERS = {"a semicolon-separated file with decimal commas": "date;open;high;low;close;volume"}


def _load(tmp_path, rows: list[str], *, fast: bool, header: str = HEADER):
    path = tmp_path / ("FAST.csv" if fast else "SLOW.csv")
    path.write_text("\n".join([header, *rows]) + "\n")
    try:
        return path, load_ohlcv_file(path, fast=fast)
    except DataError as e:
        return path, e


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_fast_and_the_pandas_csv_paths_agree_on_every_input(tmp_path, case):
    rows, expected = CASES[case]
    header = HEADERS.get(case, HEADER)
    fast_path, fast = _load(tmp_path, rows, fast=True, header=header)
    slow_path, slow = _load(tmp_path, rows, fast=False, header=header)

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
        message = str(fast).replace(str(fast_path), "<f>")  # a temporary path may hold "open" (popen-gw0)
        assert "volume" not in message and "open" not in message
        return
    for name in ("time", "high", "low", "close"):
        np.testing.assert_array_equal(getattr(fast, name), getattr(slow, name), err_msg=name)
    assert np.isnan(fast.open).all() and np.isnan(fast.volume).all() and np.isnan(slow.volume).all()


@pytest.mark.parametrize("fast", [True, False])
def test_day_first_and_month_first_dates_are_read_as_the_whole_column_shows_on_both_paths(tmp_path, fast):
    # 02/01/2024 is January 2nd in a column that also holds 13/01/2024, and February 1st in one that
    # holds 01/13/2024: never a guess per cell.
    day_first = ["02/01/2024,10,11,9,10.5,1000", "13/01/2024,10,11,9,10.5,1000"]
    month_first = ["01/13/2024,10,11,9,10.5,1000", "02/01/2024,10,11,9,10.5,1000"]
    for rows, expected in ((day_first, ["2024-01-02", "2024-01-13"]),
                           (month_first, ["2024-01-13", "2024-02-01"])):
        _, got = _load(tmp_path, rows, fast=fast)
        assert list(pd.to_datetime(got.time).strftime("%Y-%m-%d")) == expected


@pytest.mark.parametrize("fast", [True, False])
def test_a_monthly_day_first_file_is_refused_as_ambiguous_not_read_as_consecutive_days(tmp_path, fast):
    rows = [f"01/{m:02d}/2015,10,11,9,10.5,1000" for m in range(1, 13)]
    path, got = _load(tmp_path, rows, fast=fast)
    assert isinstance(got, DataError)
    assert (got.row, got.column) == (None, "date")
    assert str(got).startswith(f"{path}, column 'date': the day/month order of the dates is ambiguous")
    assert "'01/02/2015'" in str(got) and "YYYY-MM-DD (ISO 8601)" in str(got)


@pytest.mark.parametrize("fast", [True, False])
def test_iso_dates_with_zones_and_a_date_and_time_pair_still_load_on_both_paths(tmp_path, fast):
    _, zoned = _load(tmp_path, ["2024-03-01T09:30:00-05:00,10,11,9,10.5,100",
                                "2024-03-01 15:31:00Z,10,11,9,10.5,100",
                                "2024-03-01T16:32:00+01:00,10,11,9,10.5,100"], fast=fast)
    assert list(pd.to_datetime(zoned.time).strftime("%H:%M")) == ["14:30", "15:31", "15:32"]
    path = tmp_path / "FX.csv"
    path.write_text("Date,Time,Open,High,Low,Close,Volume\n2020.01.01,13:00,1,1,1,1,0\n"
                    "2020.01.02,14:00,1,1,1,1,0\n")
    fx = load_ohlcv_file(path, fast=fast)
    assert list(pd.to_datetime(fx.time).strftime("%Y-%m-%d %H:%M")) == ["2020-01-01 13:00",
                                                                        "2020-01-02 14:00"]
    path.write_text("Date,Open,High,Low,Close,Volume\n02-Jan-24,1,1,1,1,0\n03-Jan-24,1,1,1,1,0\n")
    assert list(pd.to_datetime(load_ohlcv_file(path, fast=fast).time).strftime("%Y-%m-%d")) == [
        "2024-01-02", "2024-01-03"]


@pytest.mark.parametrize("fast", [True, False])
def test_a_bad_row_after_blank_lines_is_reported_with_the_files_own_row_number(tmp_path, fast):
    rows = list(GOOD)
    rows[3] = "2024-01-05,11.5,12,13,11.2,1100"   # high < low, on file line 7 after two blank lines
    path = tmp_path / "BLANK.csv"
    path.write_text("\n".join([HEADER, rows[0], "", rows[1], "  ", rows[2], rows[3]]) + "\n")
    with pytest.raises(DataError) as info:
        load_ohlcv_file(path, fast=fast)
    assert (info.value.row, info.value.column) == (6, "high")  # line 7 of the file, the header is line 1
    assert path.read_text().splitlines()[info.value.row] == rows[3]
