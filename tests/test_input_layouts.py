"""Data as it comes (issue 9): panel files of many symbols (CSV, Parquet, a folder partitioned by
symbol), a DatetimeIndex in Parquet, separate Date and Time columns, only the columns the chosen
features need, and stray non-data files in a data folder. Real files, real preparation, and real
end-to-end training through the CLI."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import REPO_ROOT, ohlcv_frame

from indicator_transformer.config import DataConfig, FeatureConfig
from indicator_transformer.data.cache import FeatureCache
from indicator_transformer.data.folder import discover_files
from indicator_transformer.data.ohlcv import DataNote
from indicator_transformer.data.panel import data_file_sources
from indicator_transformer.data.prepare import expected_keys, prepare, resolve_sources
from indicator_transformer.data.sources import load_ohlcv_file
from indicator_transformer.data.synthetic import synthetic_symbol
from indicator_transformer.errors import DataError, DataErrors, UserError

TINY = ["--epochs", "1", "--window", "8", "--batch-size", "64", "--d-model", "8", "--heads", "2",
        "--layers", "1", "--no-progress"]
NO_VOLUME = ["ret_1", "rsi_14", "atr_14"]


def _frame(i: int, bars: int = 300, seed: int = 3, symbol_column: str | None = "Symbol") -> pd.DataFrame:
    df = ohlcv_frame(synthetic_symbol(1, seed, i, bars))
    return df.assign(**{symbol_column: f"S{i}"}) if symbol_column else df


def _panel(n: int = 3, bars: int = 300, *, symbol_column: str = "Symbol", shuffle: bool = True
           ) -> pd.DataFrame:
    """Long format, rows of the symbols interleaved in random order (as exports often are)."""
    df = pd.concat([_frame(i, bars, symbol_column=symbol_column) for i in range(n)], ignore_index=True)
    return df.sample(frac=1, random_state=1).reset_index(drop=True) if shuffle else df


def _prepare(sources, root: Path, features: FeatureConfig | None = None, **kwargs):
    kwargs.setdefault("show_progress", False)
    return prepare(sources, features or FeatureConfig(window=8), FeatureCache(root).open(), **kwargs)


def _file_row(df: pd.DataFrame, symbol: str, position: int) -> int:
    """The 1-based data row of the file holding a symbol's bar number ``position`` (in time order)."""
    rows = df.index[df["Symbol"] == symbol]
    order = np.argsort(pd.to_datetime(df.loc[rows, "Date"]).to_numpy(), kind="stable")
    return int(rows[order[position]]) + 1


# --------------------------------------------------------------------------- panels
def test_a_shuffled_panel_csv_parquet_and_partitioned_folder_give_each_symbol_its_own_sorted_bars(tmp_path):
    df = _panel()
    df.to_csv(tmp_path / "panel.csv", index=False)
    df.to_parquet(tmp_path / "panel.parquet", index=False)
    pq.write_to_dataset(pa.Table.from_pandas(df, preserve_index=False), tmp_path / "parts",
                        partition_cols=["Symbol"])

    layouts = {name: data_file_sources(tmp_path / name) for name in ("panel.csv", "panel.parquet", "parts")}

    for name, sources in layouts.items():
        assert [s.symbol for s in sources] == ["S0", "S1", "S2"], name
        for i, src in enumerate(sources):
            x, got = synthetic_symbol(1, 3, i, 300), src.load()
            np.testing.assert_array_equal(got.time, x.time)
            np.testing.assert_allclose(got.close, x.close, rtol=1e-12)
            assert got.symbol == f"S{i}"
    # The identity is the symbol's parsed rows, whatever the layout that held them.
    ids = {name: [s.identity() for s in sources] for name, sources in layouts.items()}
    assert ids["panel.csv"] == ids["panel.parquet"] == ids["parts"]
    assert len(set(ids["panel.csv"])) == 3


def test_appending_a_day_to_one_symbol_of_a_panel_recomputes_only_that_symbol(tmp_path):
    path = tmp_path / "panel.csv"
    df = _panel(bars=300)
    df.to_csv(path, index=False)
    cfg = DataConfig(data_file=str(path))
    cold = _prepare(resolve_sources(cfg), tmp_path / "cache")
    warm = _prepare(resolve_sources(cfg), tmp_path / "cache")

    extra = _frame(1, bars=301).iloc[[-1]]  # S1's next day, appended at the end of the file
    pd.concat([df, extra]).to_csv(path, index=False)
    after = _prepare(resolve_sources(cfg), tmp_path / "cache")

    assert (cold.hits, cold.misses) == (0, 3) and (warm.hits, warm.misses) == (3, 0)
    assert (after.hits, after.misses) == (2, 1)
    assert "(cache hits 2, misses 1)" in after.summary()
    keys = {s.symbol: s.key for s in warm.symbols}
    changed = [s.symbol for s in after.symbols if keys[s.symbol] != s.key]
    assert changed == ["S1"]
    assert len(after.symbols[1].label) == len(warm.symbols[1].label) + 1


def test_a_panel_file_is_read_once_for_all_its_symbols_not_once_per_symbol(tmp_path):
    path = tmp_path / "panel.parquet"
    _panel().to_parquet(path, index=False)
    sources = resolve_sources(DataConfig(data_file=str(path)))
    path.unlink()  # every symbol must now come from the one read made by resolve_sources

    cold = _prepare(sources, tmp_path / "cache")
    warm = _prepare(sources, tmp_path / "cache")

    assert (cold.misses, warm.hits) == (3, 3)
    assert len({s.panel for s in sources}) == 1


def test_a_duplicate_time_within_a_symbol_names_the_file_the_symbol_and_both_file_rows(tmp_path):
    df = _panel(shuffle=False)
    dup = df[df["Symbol"] == "S1"].iloc[[10]]
    df = pd.concat([df, dup], ignore_index=True)  # the same S1 bar again, at the end of the file
    path = tmp_path / "panel.csv"
    df.to_csv(path, index=False)

    with pytest.raises(DataErrors) as info:
        _prepare(data_file_sources(path), tmp_path / "cache")

    (err,) = info.value.errors
    assert err.path == f"{path} (symbol S1)" and err.column == "Date"
    assert err.row == len(df)  # the file's own row number of the later copy
    assert f"also in row {_file_row(df, 'S1', 10)}" in str(err) and "one row per symbol and time" in str(err)


def test_a_bad_row_names_the_file_the_symbol_and_the_file_row_and_the_other_symbols_still_train(tmp_path):
    df = _panel()
    row = _file_row(df, "S2", 50)
    df.loc[row - 1, "Close"] = -1.0
    path = tmp_path / "panel.csv"
    df.to_csv(path, index=False)

    with pytest.raises(DataErrors) as info:
        _prepare(data_file_sources(path), tmp_path / "cache")
    (err,) = info.value.errors
    assert str(err).startswith(f"{path} (symbol S2), row {row}, column 'Close': price -1")

    with pytest.warns(UserWarning, match="skipping bad file"):
        result = _prepare(data_file_sources(path), tmp_path / "cache", skip_bad_files=True)
    assert [s.symbol for s in result.symbols] == ["S0", "S1"]
    assert result.skipped == [f"{path} (symbol S2)"]


def test_an_unparseable_date_in_one_symbol_is_that_symbols_error_with_its_file_row(tmp_path):
    df = _panel()
    row = _file_row(df, "S0", 3)
    df.loc[row - 1, "Date"] = "not-a-date"
    path = tmp_path / "panel.csv"
    df.to_csv(path, index=False)
    with pytest.raises(DataErrors) as info:
        _prepare(data_file_sources(path), tmp_path / "cache")
    (err,) = info.value.errors
    assert (err.path, err.row, err.column) == (f"{path} (symbol S0)", row, "Date")
    assert "unparseable date/time 'not-a-date'" in str(err)


def test_a_column_a_feature_needs_missing_from_a_panel_is_reported_once_for_the_file(tmp_path):
    path = tmp_path / "panel.csv"
    _panel().drop(columns=["Volume"]).to_csv(path, index=False)
    with pytest.raises(DataErrors) as info:
        _prepare(data_file_sources(path), tmp_path / "cache")  # the default features read volume
    (err,) = info.value.errors
    assert err.path == str(path) and "missing column(s) volume" in str(err)
    assert "the chosen features need" not in str(err)

    features = FeatureConfig(features=NO_VOLUME, window=8)
    result = _prepare(data_file_sources(path), tmp_path / "cache", features)
    assert len(result.symbols) == 3


def test_layouts_that_are_not_panels_are_refused_naming_the_file_and_what_is_accepted(tmp_path):
    plain = tmp_path / "AAPL.csv"
    _frame(0, symbol_column=None).to_csv(plain, index=False)
    with pytest.raises(DataError) as info:
        data_file_sources(plain)
    assert str(info.value).startswith(str(plain)) and "has no symbol column" in str(info.value)
    assert "symbol, ticker, instrument, asset, code" in str(info.value) and "--data-dir" in str(info.value)

    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "AAPL.csv").write_text(plain.read_text())
    with pytest.raises(UserError, match="symbol=AAPL/part-0.parquet") as info:
        data_file_sources(folder)
    assert str(folder) in str(info.value) and "--data-dir" in str(info.value)

    with pytest.raises(UserError, match="does not exist"):
        data_file_sources(tmp_path / "nope.csv")
    (tmp_path / "panel.txt").write_text("x")
    with pytest.raises(DataError, match=r"unsupported file type '\.txt'.*CSV or Parquet panel"):
        data_file_sources(tmp_path / "panel.txt")


def test_a_partition_holding_another_symbols_rows_is_refused(tmp_path):
    part = tmp_path / "parts" / "symbol=AAA"
    part.mkdir(parents=True)
    _frame(0).rename(columns={"Symbol": "symbol"}).to_parquet(part / "part-0.parquet", index=False)
    (src,) = data_file_sources(tmp_path / "parts")
    with pytest.raises(DataError, match="symbol 'S0' in the folder of symbol 'AAA'") as info:
        src.load()
    assert info.value.row == 1


# --------------------------------------------------------------------------- data folders
def test_a_data_folder_reads_a_multi_symbol_file_as_a_panel_and_says_so(tmp_path):
    _panel(2).to_csv(tmp_path / "panel.csv", index=False)
    _frame(5, symbol_column="Ticker").assign(Ticker="X").to_csv(tmp_path / "ONE.csv", index=False)

    with pytest.warns(DataNote, match=r"panel\.csv: holds 2 symbols in its 'Symbol' column; each is "
                                      r"prepared as its own symbol"):
        sources = discover_files(tmp_path)

    assert [s.symbol for s in sources] == ["ONE", "S0", "S1"]  # one symbol in a file: named by the file
    result = _prepare(sources, tmp_path / "cache")
    assert len(result.symbols) == 3


def test_a_symbol_in_a_panel_and_in_its_own_file_is_an_error_naming_both(tmp_path):
    _panel(2).to_csv(tmp_path / "panel.csv", index=False)
    _frame(1, symbol_column=None).to_csv(tmp_path / "S1.csv", index=False)
    with pytest.raises(UserError, match=r"symbol 'S1' appears twice: in S1\.csv and in panel\.csv "
                                        r"\(column 'Symbol'\)"), warnings.catch_warnings():
        warnings.simplefilter("ignore", DataNote)
        discover_files(tmp_path)


def test_a_panel_in_a_data_folder_that_cannot_be_split_is_reported_with_the_other_bad_files(tmp_path):
    df = _panel(2, shuffle=False)
    df.loc[4, "Symbol"] = None
    df.to_csv(tmp_path / "panel.csv", index=False)
    (tmp_path / "BAD.csv").write_text("date,open,high,low,close,volume\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataNote)  # no "holds 2 symbols" note for a panel that failed
        sources = discover_files(tmp_path)
    with pytest.raises(DataErrors) as info:
        _prepare(sources, tmp_path / "cache")
    assert [str(e) for e in info.value.errors] == [
        f"{tmp_path / 'BAD.csv'}: has a header but no data rows",
        f"{tmp_path / 'panel.csv'}, row 5, column 'Symbol': missing symbol (expected the symbol of every row "
        f"in column 'Symbol')"]


def test_non_data_files_are_ignored_in_one_note_and_hidden_ones_silently(tmp_path):
    _frame(0, symbol_column=None).to_csv(tmp_path / "S0.csv", index=False)
    for name in ("README.txt", "notes.md", ".DS_Store"):
        (tmp_path / name).write_text("not data")

    with pytest.warns(DataNote) as record:
        sources = discover_files(tmp_path)

    assert [s.symbol for s in sources] == ["S0"]
    assert [str(w.message) for w in record] == [
        f"{tmp_path}: ignored 2 non-data file(s): README.txt, notes.md (data files end in .csv, .parquet, "
        f".pq)"]


def test_a_folder_with_only_non_data_files_is_empty_and_says_what_it_found(tmp_path):
    (tmp_path / "README.txt").write_text("x")
    with pytest.raises(UserError, match=r"directory is empty .*found only non-data files: README\.txt"), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore", DataNote)
        discover_files(tmp_path)


def test_a_bad_data_file_is_still_a_hard_error(tmp_path):
    _frame(0, symbol_column=None).to_csv(tmp_path / "S0.csv", index=False)
    (tmp_path / "BAD.csv").write_text("date,open,high,low,close,volume\n2024-01-02,x,1,1,1,1\n")
    with pytest.raises(DataErrors, match=r"BAD\.csv, row 1, column 'open': non-numeric value 'x'"):
        _prepare(discover_files(tmp_path), tmp_path / "cache")


# --------------------------------------------------------------------------- file layouts
@pytest.mark.parametrize("index_name", ["Date", None])
def test_a_parquet_file_with_a_datetime_index_uses_the_index_as_the_time(tmp_path, index_name):
    x = synthetic_symbol(1, 3, 0, 50)
    df = ohlcv_frame(x).drop(columns=["Date"])
    df.index = pd.DatetimeIndex(pd.to_datetime(x.time), name=index_name)
    df.to_parquet(tmp_path / "ES.parquet")

    got = load_ohlcv_file(tmp_path / "ES.parquet")

    np.testing.assert_array_equal(got.time, x.time)
    np.testing.assert_allclose(got.close, x.close, rtol=1e-12)


def test_separate_date_and_time_columns_are_combined_into_intraday_timestamps(tmp_path):
    path = tmp_path / "ES.csv"
    path.write_text("Date,Time,Open,High,Low,Close,Volume\n"
                    "2024-01-02,09:30,10,11,9,10.5,100\n2024-01-02,09:31,10.5,11,10,10.8,120\n"
                    "2024-01-03,09:30:00,10.8,11,10,10.9,90\n")
    got = load_ohlcv_file(path)
    assert list(pd.to_datetime(got.time).strftime("%Y-%m-%d %H:%M")) == [
        "2024-01-02 09:30", "2024-01-02 09:31", "2024-01-03 09:30"]

    path.write_text(path.read_text().replace("2024-01-02,09:31", "2024-01-02,"))
    with pytest.raises(DataError) as info:
        load_ohlcv_file(path)
    assert (info.value.row, info.value.column) == (2, "Date+Time") and "missing date/time" in str(info.value)


def test_two_time_columns_that_are_not_a_date_and_a_time_are_refused_saying_what_is_accepted(tmp_path):
    path = tmp_path / "ES.csv"
    path.write_text("Date,Timestamp,Open,High,Low,Close,Volume\n2024-01-02,2024-01-02,10,11,9,10.5,100\n")
    with pytest.raises(DataError, match=r"two columns mean 'time': 'Date' and 'Timestamp' \(expected one "
                                        r"date/time column, or one 'Date' and one 'Time' column"):
        load_ohlcv_file(path)


# --------------------------------------------------------------------------- required columns
def test_only_the_columns_the_chosen_features_read_are_required_and_the_others_are_never_read(tmp_path):
    x = synthetic_symbol(1, 3, 0, 300)
    ohlcv_frame(x).drop(columns=["Volume", "Open"]).to_csv(tmp_path / "S0.csv", index=False)
    features = FeatureConfig(features=NO_VOLUME, window=8)

    result = _prepare(discover_files(tmp_path), tmp_path / "cache", features)
    bars = discover_files(tmp_path)[0].load(required=["high", "low", "close"])

    assert len(result.symbols) == 1 and np.isfinite(result.symbols[0].features).all()
    assert np.isnan(bars.volume).all() and np.isnan(bars.open).all()  # never a plausible value
    with pytest.raises(DataErrors, match=r"missing column\(s\) volume .*the chosen features need high, low, "
                                         r"close, volume"):
        _prepare(discover_files(tmp_path), tmp_path / "c2", FeatureConfig(features=["ret_1", "obv_chg",
                                                                                  "atr_14"], window=8))


def test_a_bad_value_in_a_column_no_chosen_feature_reads_is_not_an_error(tmp_path):
    path = tmp_path / "S0.csv"
    df = ohlcv_frame(synthetic_symbol(1, 3, 0, 300))
    df.loc[5, "Volume"] = -1
    df.to_csv(path, index=False)
    assert len(load_ohlcv_file(path, required=["close"])) == 300
    with pytest.raises(DataError, match="volume -1"):
        load_ohlcv_file(path)


def test_the_cache_key_differs_when_a_column_the_features_read_differs(tmp_path):
    features = FeatureConfig(features=NO_VOLUME, window=8)
    df = _panel(2)
    df.to_csv(tmp_path / "a.csv", index=False)
    df.assign(High=df["High"] * 1.01).to_csv(tmp_path / "b.csv", index=False)
    df.drop(columns=["Volume"]).to_csv(tmp_path / "c.csv", index=False)

    a, b, c = (expected_keys(DataConfig(data_file=str(tmp_path / n)), features) for n in ("a.csv", "b.csv",
                                                                                            "c.csv"))
    assert all(a[s] != b[s] for s in a)  # atr_14 reads high
    assert all(a[s] != c[s] for s in a)  # other columns: other rows, so another key (never a stale hit)


@pytest.mark.parametrize("volume, words", [(0.0, "volume is zero in every row"),
                                           (500.0, "volume is the same (500) in every row")])
def test_a_constant_volume_read_by_a_chosen_feature_is_warned_about_naming_the_symbol(tmp_path, volume,
                                                                                      words):
    _panel(2).assign(Volume=volume).to_csv(tmp_path / "panel.csv", index=False)
    with pytest.warns(DataNote, match=r"panel\.csv \(symbol S[01]\): " + re.escape(words) + r", so mfi_14, "
                                      r"obv_chg, volume_z carry no information") as record:
        _prepare(data_file_sources(tmp_path / "panel.csv"), tmp_path / "cache")
    assert len([w for w in record if "volume is" in str(w.message)]) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataNote)  # no volume feature chosen: nothing to say
        _prepare(data_file_sources(tmp_path / "panel.csv"), tmp_path / "c2", FeatureConfig(features=NO_VOLUME,
                                                                                           window=8))


# --------------------------------------------------------------------------- end to end
def _train(run_python, cwd: Path, *args: str):
    r = run_python([str(REPO_ROOT / "train_indicator_transformer.py"), *args, *TINY], cwd=cwd, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def test_a_panel_csv_and_a_partitioned_parquet_folder_train_end_to_end(tmp_path, run_python):
    df = _panel(3)
    df.drop(columns=["Volume"]).to_csv(tmp_path / "panel.csv", index=False)  # no volume: not needed
    pq.write_to_dataset(pa.Table.from_pandas(df.rename(columns={"Symbol": "ticker"}), preserve_index=False),
                        tmp_path / "parts", partition_cols=["ticker"])

    r = _train(run_python, tmp_path, "--data-file", "panel.csv", "--features", ",".join(NO_VOLUME),
               "--models-dir", "m1")
    assert "Prepared 3/3 symbols" in r.stderr and "misses 3" in r.stderr
    r = _train(run_python, tmp_path, "--data-file", "parts", "--models-dir", "m2")
    assert "Prepared 3/3 symbols" in r.stderr
    assert (tmp_path / "m1" / "evaluation.json").exists() and (tmp_path / "m2" / "evaluation.json").exists()


def test_a_data_folder_of_a_panel_parquet_an_indexed_parquet_an_intraday_csv_and_a_readme_trains_end_to_end(
        tmp_path, run_python):
    data = tmp_path / "data"
    data.mkdir()
    _panel(2).to_parquet(data / "panel.parquet", index=False)
    x = synthetic_symbol(1, 4, 7, 300)
    indexed = ohlcv_frame(x).drop(columns=["Date"])
    indexed.index = pd.DatetimeIndex(pd.to_datetime(x.time), name="Date")
    indexed.to_parquet(data / "IDX.parquet")
    y = synthetic_symbol(1, 4, 8, 300)
    stamps = pd.to_datetime(y.time) + pd.Timedelta(hours=9, minutes=30)
    ohlcv_frame(y).assign(Date=stamps.strftime("%m/%d/%Y"), Time=stamps.strftime("%H:%M")) \
        .to_csv(data / "INTRA.csv", index=False)
    (data / "README.txt").write_text("where these files came from")
    (data / "notes.md").write_text("# notes")

    r = _train(run_python, tmp_path, "--data-dir", str(data))

    assert "Prepared 4/4 symbols" in r.stderr
    assert "warning: " + f"{data}: ignored 2 non-data file(s): README.txt, notes.md" in r.stderr
    assert "panel.parquet: holds 2 symbols in its 'Symbol' column" in r.stderr


def test_a_refused_layout_through_the_cli_is_one_error_line_and_exit_code_2(tmp_path, run_python):
    _frame(0, symbol_column=None).to_csv(tmp_path / "AAPL.csv", index=False)
    r = run_python([str(REPO_ROOT / "train_indicator_transformer.py"), "--data-file", "AAPL.csv", *TINY],
                   cwd=tmp_path, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    assert f"error: {Path('AAPL.csv')}: has no symbol column" in r.stderr
    assert not (tmp_path / "models").exists()
