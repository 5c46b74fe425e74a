"""Reading inputs as written: a real ticker named like a missing value (NA), subfolders of a data
folder that are not read, files separated by ';' or tabs, and the file's own row numbers in messages
when a CSV has blank lines."""

from __future__ import annotations

import warnings

import pandas as pd
import pytest
from conftest import ohlcv_frame

from indicator_transformer.data.folder import discover_files
from indicator_transformer.data.ohlcv import DataNote
from indicator_transformer.data.panel import data_file_sources
from indicator_transformer.data.sources import load_ohlcv_file
from indicator_transformer.data.synthetic import synthetic_symbol
from indicator_transformer.errors import DataError, UserError


def _panel(symbols: list[str], bars: int = 40) -> pd.DataFrame:
    frames = [ohlcv_frame(synthetic_symbol(1, 5, i, bars)).assign(ticker=s) for i, s in enumerate(symbols)]
    return pd.concat(frames, ignore_index=True)


@pytest.mark.parametrize("symbol", ["NA", "NULL", "None", "N/A", "nan"])
def test_a_ticker_spelled_like_a_missing_value_is_a_real_symbol_in_a_csv_panel(tmp_path, symbol):
    path = tmp_path / "panel.csv"
    _panel(["RY", symbol, "TD"]).to_csv(path, index=False)
    sources = data_file_sources(path)
    assert sorted(s.symbol for s in sources) == sorted(["RY", symbol, "TD"])
    assert all(len(s.load()) == 40 for s in sources)
    # The same file in a data folder is split into its symbols too.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataNote)
        assert sorted(s.symbol for s in discover_files(tmp_path)) == sorted(["RY", symbol, "TD"])


def test_only_an_empty_or_blank_symbol_cell_is_a_missing_symbol(tmp_path):
    df = _panel(["NA", "TD"]).astype({"Volume": float})
    df.loc[5, "ticker"] = "   "
    path = tmp_path / "panel.csv"
    df.to_csv(path, index=False)
    with pytest.raises(DataError) as info:
        data_file_sources(path)
    assert (info.value.row, info.value.column) == (6, "ticker") and "missing symbol" in str(info.value)


def test_a_partition_folder_named_symbol_na_is_the_symbol_na(tmp_path):
    folder = tmp_path / "parts" / "symbol=NA"
    folder.mkdir(parents=True)
    ohlcv_frame(synthetic_symbol(1, 5, 0, 30)).assign(Date=lambda d: pd.to_datetime(d.Date)) \
        .to_parquet(folder / "part-0.parquet")
    sources = data_file_sources(tmp_path / "parts")
    assert [s.symbol for s in sources] == ["NA"] and len(sources[0].load()) == 30


def test_ordinary_subfolders_of_a_data_folder_are_not_read_but_named_in_one_warning(tmp_path):
    for name in ("AAPL.csv", "2024/MSFT.csv", "extra/GOOG.csv", "symbol=IBM/part-0.parquet"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
    x = synthetic_symbol(1, 5, 0, 30)
    for name in ("AAPL.csv", "2024/MSFT.csv", "extra/GOOG.csv"):
        ohlcv_frame(x).to_csv(tmp_path / name, index=False)
    typed = ohlcv_frame(x).assign(Date=lambda d: pd.to_datetime(d.Date))
    typed.to_parquet(tmp_path / "symbol=IBM" / "part-0.parquet")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        sources = discover_files(tmp_path)
    assert [s.symbol for s in sources] == ["AAPL", "IBM"]
    assert [str(w.message) for w in record] == [
        f"{tmp_path}: ignored 2 subfolder(s): 2024, extra (--data-dir reads the files directly inside it; "
        f"symbol=X partition folders are read too)"]


def test_a_data_folder_holding_only_a_subfolder_and_a_readme_says_so_instead_of_just_empty(tmp_path):
    (tmp_path / "2024").mkdir()
    ohlcv_frame(synthetic_symbol(1, 5, 0, 30)).to_csv(tmp_path / "2024" / "MSFT.csv", index=False)
    (tmp_path / "README.txt").write_text("x")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataNote)
        with pytest.raises(UserError) as info:
            discover_files(tmp_path)
    message = str(info.value)
    assert "non-data files: README.txt" in message
    assert "ignored subfolder(s): 2024: --data-dir reads the files directly inside it" in message


@pytest.mark.parametrize("sep, name, decimal", [(";", "';'", "."), (";", "';'", ","), ("\t", "tab", ".")])
def test_a_file_separated_by_semicolons_or_tabs_is_refused_saying_so(tmp_path, sep, name, decimal):
    path = tmp_path / "EU.csv"
    ohlcv_frame(synthetic_symbol(1, 5, 0, 30)).to_csv(path, index=False, sep=sep, decimal=decimal)
    for fast in (True, False):
        with pytest.raises(DataError) as info:
            load_ohlcv_file(path, fast=fast)
        assert str(info.value).startswith(f"{path}: seems to use {name} as the separator")
        assert "only comma-separated files with '.' decimals are read" in str(info.value)
    panel = tmp_path / "panel.csv"
    _panel(["A", "B"]).to_csv(panel, index=False, sep=sep, decimal=decimal)
    with pytest.raises(DataError, match=f"seems to use {name} as the separator"):
        data_file_sources(panel)


def test_a_bad_row_of_a_csv_panel_after_blank_lines_is_reported_with_the_files_own_row_number(tmp_path):
    df = _panel(["A", "B"])
    df.loc[30, "High"] = df.loc[30, "Low"] / 2   # high < low on data record 31
    lines = df.to_csv(index=False).splitlines()
    lines[5:5] = ["", "", ""]                    # three blank lines before it
    path = tmp_path / "panel.csv"
    path.write_text("\n".join(lines) + "\n")
    bad = {s.symbol: s for s in data_file_sources(path)}["A"]
    with pytest.raises(DataError) as info:
        bad.load()
    assert (info.value.row, info.value.column) == (34, "High")
    assert path.read_text().splitlines()[34] == lines[34]


def _times_csv(path, times):
    lines = ["time,open,high,low,close,volume"] + [f"{t},1,2,0.5,1.5,10" for t in times]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_column_mixing_times_with_and_without_a_zone_is_refused_naming_the_first_row_that_differs(tmp_path):
    naive = [f"2020-01-{d:02d}T12:00:00" for d in range(1, 21)]
    zoned = [t + "+02:00" for t in naive]
    with pytest.raises(DataError, match=r"row 11.*'2020-01-11T12:00:00\+02:00' has a time zone"):
        load_ohlcv_file(_times_csv(tmp_path / "A.csv", naive[:10] + zoned[10:]))
    with pytest.raises(DataError, match=r"row 11.*'2020-01-11T12:00:00' lacks a time zone"):
        load_ohlcv_file(_times_csv(tmp_path / "B.csv", zoned[:10] + naive[10:]))


def test_times_that_all_carry_a_zone_may_use_different_offsets_and_are_put_on_utc(tmp_path):
    times = [f"2020-01-{d:02d}T12:00:00{'+02:00' if d < 10 else 'Z'}" for d in range(1, 21)]
    sym = load_ohlcv_file(_times_csv(tmp_path / "C.csv", times))
    assert str(pd.Timestamp(int(sym.time[0]))) == "2020-01-01 10:00:00"
    assert str(pd.Timestamp(int(sym.time[-1]))) == "2020-01-20 12:00:00"


def test_a_binary_file_whose_first_line_holds_a_bare_carriage_return_is_a_data_error(tmp_path):
    path = tmp_path / "JUNK.csv"
    path.write_bytes(b"ab\rcd,\x00\x01" + bytes(range(256)) * 12)
    with pytest.raises(DataError, match="JUNK.csv"):
        load_ohlcv_file(path)
