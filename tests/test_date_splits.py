"""Date-based splits (--val-start / --test-start): cuts at real time stamps, per symbol where files
cover different years, with the purge gap of h bars before each cut, and clear errors."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO_ROOT, child_env, default_sigint

from indicator_transformer import cutoffs
from indicator_transformer.config import Config, FeatureConfig, build_config, load_toml, to_toml
from indicator_transformer.data.periods import split_dates
from indicator_transformer.data.prepare import SymbolData
from indicator_transformer.data.windows import choose_splits, require_windows
from indicator_transformer.errors import ConfigError, UserError

DAY = 86_400 * 10**9


def _ns(text: str) -> int:
    return int(np.datetime64(text, "ns").astype(np.int64))


def symbol(name: str, start: str, bars: int) -> SymbolData:
    """Daily bars from ``start``; the label's value is irrelevant to the cut."""
    t = _ns(start) + np.arange(bars, dtype=np.int64) * DAY
    return SymbolData(name, f"k-{name}", np.zeros((bars, 2), np.float32), np.zeros(bars, np.float32), t)


def cfg(**kw) -> FeatureConfig:
    c = FeatureConfig(features=["ret_1"], window=5, horizon=kw.pop("horizon", 3), **kw)
    c.validate()
    return c


def test_one_date_for_every_symbol_cuts_at_the_first_bar_at_or_after_it_with_purge_gaps() -> None:
    syms = [symbol("A", "2015-01-01", 800), symbol("B", "2015-06-01", 600)]
    c = cfg(val_start="2016-01-01", test_start="2016-06-01")
    choice = choose_splits(syms, c)
    assert choice.policy == "dates" and "--test-start 2016-06-01T00:00:00" in choice.reason
    sp = choice.splits
    for i, s in enumerate(syms):
        t = s.time
        val0, test0 = int(sp["val"].starts[i]), int(sp["test"].starts[i])
        assert t[val0] == _ns("2016-01-01") and t[test0] == _ns("2016-06-01")
        # The last training label (bar t + h) ends before validation begins: h bars are purged.
        last_train = int(sp["train"].stops[i]) - 1
        assert t[last_train + c.horizon] < t[val0] and int(sp["train"].stops[i]) == val0 - c.horizon
        assert int(sp["val"].stops[i]) == test0 - c.horizon
        assert t[int(sp["val"].stops[i]) - 1 + c.horizon] < t[test0]


def test_per_symbol_dates_for_files_covering_different_years_with_a_default() -> None:
    syms = [symbol("GOOG", "2008-01-01", 1500), symbol("SPX", "2014-01-01", 1500),
            symbol("X", "2014-01-01", 900)]
    c = cfg(val_start="GOOG=2011-01-01,*=2016-06-01", test_start="GOOG=2011-06-01,*=2017-01-01", horizon=1)
    dates = split_dates(syms, choose_splits(syms, c).splits)
    assert dates["GOOG"]["test"]["from"] == "2011-06-01T00:00:00"
    assert dates["GOOG"]["val"]["from"] == "2011-01-01T00:00:00"
    assert dates["SPX"]["test"]["from"] == "2017-01-01T00:00:00"
    assert dates["X"]["val"]["from"] == "2016-06-01T00:00:00"
    assert dates["GOOG"]["train"]["to"] == "2010-12-30T00:00:00"  # one bar purged before 2011-01-01


def test_a_test_date_alone_takes_validation_from_the_windows_before_it() -> None:
    syms = [symbol("A", "2015-01-01", 1000)]
    c = cfg(test_start="2017-01-01", horizon=1)
    sp = choose_splits(syms, c).splits
    before = int(sp["test"].starts[0]) - c.window + 1  # valid windows before the test cut
    assert len(sp["val"]) == pytest.approx(before * c.val_frac / (c.train_frac + c.val_frac), abs=3)
    assert int(sp["val"].stops[0]) == int(sp["test"].starts[0]) - 1


def test_a_date_outside_a_symbols_bars_empties_its_splits_and_no_test_at_all_is_refused() -> None:
    syms = [symbol("OLD", "2000-01-01", 300), symbol("NEW", "2015-01-01", 800)]
    c = cfg(val_start="2016-01-01", test_start="2016-06-01")
    sp = choose_splits(syms, c).splits
    assert sp["test"].counts[0] == 0 and sp["val"].counts[0] == 0 and sp["train"].counts[0] > 0
    late = cfg(val_start="2030-01-01", test_start="2031-01-01")
    with pytest.raises(UserError, match=r"the test split has no windows \(val_start 2030-01-01T00:00:00"):
        require_windows(choose_splits(syms, late).splits, late)


@pytest.mark.parametrize(("kw", "message"), [
    ({"test_start": "yesterday"}, r"'test_start': 'yesterday': 'yesterday' is not an ISO date"),
    ({"test_start": "A=2016-01-01,2016-02-01"}, "names no symbol"),
    ({"test_start": "A=2016-01-01,A=2016-02-01"}, "'A' appears twice"),
    ({"test_start": "2016-01-01T00:00+02:00"}, "time zone"),
    # fromisoformat alone reads this as 02:00 on that day: a cut moved two hours, silently.
    ({"test_start": "2011-06-01+02:00"}, "time zone"),
    ({"test_start": "2011-06-01x02:00"}, "is not an ISO date"),
    ({"test_start": "20110601"}, "is not an ISO date"),
    ({"val_start": "2016-01-01"}, "to be given with test_start"),
    ({"val_start": "2017-01-01", "test_start": "2016-01-01"}, "a date before test_start for every symbol"),
    ({"val_start": "A=2017-01-01,*=2015-01-01", "test_start": "2016-01-01"}, "before test_start for A"),
    ({"train_start": "2016-01-01"}, "'train_start'.*to be given with test_start"),
    ({"test_end": "2016-01-01"}, "'test_end'.*to be given with test_start"),
    ({"test_start": "2016-01-01", "test_end": "2016-01-01"}, "a date before test_end for every symbol"),
    ({"train_start": "2016-02-01", "val_start": "2016-01-01", "test_start": "2016-06-01"},
     "'train_start'.*a date before val_start"),
    ({"train_start": "A=2016-07-01,*=2015-01-01", "test_start": "2016-06-01"}, "before test_start for A"),
])
def test_bad_dates_are_config_errors_naming_the_key(kw: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        cfg(**kw)


def test_a_symbol_without_a_date_and_no_default_is_named() -> None:
    c = cfg(val_start="A=2016-01-01", test_start="A=2016-06-01")
    with pytest.raises(ConfigError, match="'test_start' gives no date for symbol B"):
        choose_splits([symbol("A", "2015-01-01", 600), symbol("B", "2015-01-01", 600)], c)


def test_dates_are_stored_canonically_and_round_trip_through_toml_and_old_configs_still_load(tmp_path
                                                                                           ) -> None:
    c = build_config({"test_start": "GOOG=2012-06-01, *=2016-01-01T09:30"}, {}, "x.toml")
    assert c.features.test_start == "GOOG=2012-06-01T00:00:00,*=2016-01-01T09:30:00"
    assert Config.from_dict(c.to_dict()) == c
    import tomllib
    (tmp_path / "c.toml").write_text(to_toml(c))
    assert build_config(load_toml(tmp_path / "c.toml"), {}, "c.toml") == c
    # An unquoted TOML date is a date object: read as the date it says.
    toml = build_config(tomllib.loads("test_start = 2016-01-01\n"), {}, "x.toml")
    assert toml.features.test_start == "2016-01-01T00:00:00"
    old = Config().to_dict()
    del old["features"]["val_start"], old["features"]["test_start"]
    assert Config.from_dict(old).features.test_start is None
    assert cutoffs.canonical_cuts("2016-01-01", "test_start") == "2016-01-01T00:00:00"
    # Spellings of one setting are one text, so a resume does not call them different.
    assert cutoffs.canonical_cuts("*=2016-01-01", "test_start") == "2016-01-01T00:00:00"
    assert cutoffs.canonical_cuts("B=2016-02-01,*=2016-03-01,A=2016-01-01", "test_start") == \
        cutoffs.canonical_cuts("*=2016-03-01,A=2016-01-01,B=2016-02-01", "test_start") == \
        "A=2016-01-01T00:00:00,B=2016-02-01T00:00:00,*=2016-03-01T00:00:00"
    assert cutoffs.canonical_cuts("D1=2011-06-01,*=2011-06-01", "test_start") == "2011-06-01T00:00:00"
    assert cutoffs.canonical_cuts("D1=2011-06-01,D2=2011-07-01,*=2011-06-01", "test_start") == \
        "D2=2011-07-01T00:00:00,*=2011-06-01T00:00:00"


def test_a_resume_adding_a_date_cut_the_checkpoint_lacks_is_refused_naming_the_flag() -> None:
    """It raised "None cannot be written as TOML" while writing the refusal."""
    from pathlib import Path

    from indicator_transformer.cli import resume

    args = resume.parser().parse_args(["--test-start", "2016-01-01"])
    with pytest.raises(UserError, match=r'--test-start "2016-01-01" conflicts with the checkpoint '
                                        r"x\.pth \(test_start = not set\)"):
        resume._check_fixed(args, Config(), Path("x.pth"))
    # The same cut, spelt another way, is no conflict.
    saved = Config().replace(test_start="2016-01-01")
    again = resume.parser().parse_args(["--test-start", "*=2016-01-01T00:00"])
    resume._check_fixed(again, saved, Path("x.pth"))


def test_the_flags_are_in_help_and_a_bad_date_exits_2_without_a_traceback(tmp_path) -> None:
    script = str(REPO_ROOT / "train_indicator_transformer.py")
    help_text = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True,
                               env=child_env(), timeout=60).stdout
    assert "--val-start" in help_text and "--test-start" in help_text
    r = subprocess.run([sys.executable, script, "--test-start", "2016-13-01", "--no-progress"], cwd=tmp_path,
                       capture_output=True, text=True, env=child_env(), timeout=60, preexec_fn=default_sigint)
    assert r.returncode == 2 and "test_start" in r.stderr and "2016-13-01" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "models").exists()


def test_evaluate_on_data_outside_a_date_cut_checkpoints_splits_is_refused_naming_the_cut(tmp_path) -> None:
    """Data of 2013-14 under a checkpoint cut at 2001-06-01 has no training split: the baselines and
    the training mean were all 0 and the table read as a real comparison. Data ending before the
    cut has no test split, and the message said 'too few bars'."""
    import dataclasses

    import pandas as pd
    from conftest import write_symbol_csv

    from indicator_transformer.data.synthetic import synthetic_symbol

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, *args], cwd=tmp_path, capture_output=True, text=True,
                              env=child_env(), timeout=300, preexec_fn=default_sigint)

    r = run(str(REPO_ROOT / "train_indicator_transformer.py"), "--symbols", "3", "--bars", "500",
            "--epochs", "1", "--batch-size", "64", "--d-model", "8", "--heads", "2", "--layers", "1",
            "--window", "8",
            "--no-progress", "--no-plots", "--test-start", "2001-06-01")
    assert r.returncode == 0, r.stderr
    for folder, start in (("late", "2013-01-01"), ("early", "1995-01-02")):
        days = pd.bdate_range(start, periods=400, tz="UTC").as_unit("ns").asi8
        bars = dataclasses.replace(synthetic_symbol(1, 3, 0, 400), time=days)
        write_symbol_csv(tmp_path / folder / "X.csv", bars)
    ev = ("-m", "indicator_transformer", "evaluate", "--checkpoint", "models/best.pth", "--data-dir")
    late = run(*ev, "late")
    assert late.returncode == 2 and "Traceback" not in late.stderr, late.stderr
    assert "the train split has no windows (test_start 2001-06-01T00:00:00" in late.stderr
    assert "--all-windows scores every window" in late.stderr
    early = run(*ev, "early")
    assert early.returncode == 2 and "the test split has no windows (test_start 2001-06-01" in early.stderr
    assert not list(tmp_path.rglob("summary.json"))[1:]  # only the training run's: no report written


def test_a_fold_bounded_by_train_start_and_test_end_keeps_every_label_inside_its_period() -> None:
    """A walk-forward fold: training from train_start (a rolling window), validation, test up to
    test_end. On real time stamps: no training label reaches validation, none of validation the
    test period, and every test window ends before test_end (the next fold's test period)."""
    syms = [symbol("A", "2014-01-01", 1200), symbol("B", "2014-03-01", 1000)]
    c = cfg(train_start="2015-01-01", val_start="2016-01-01", test_start="2016-04-01", test_end="2016-07-01",
            horizon=5)
    sp = choose_splits(syms, c).splits
    for i, s in enumerate(syms):
        t = s.time
        train = range(int(sp["train"].starts[i]), int(sp["train"].stops[i]))
        val = range(int(sp["val"].starts[i]), int(sp["val"].stops[i]))
        test = range(int(sp["test"].starts[i]), int(sp["test"].stops[i]))
        assert t[train[0]] == _ns("2015-01-01") and t[train[0] - 1] < _ns("2015-01-01")
        assert t[train[-1] + c.horizon] < _ns("2016-01-01") <= t[val[0]]
        assert t[val[-1] + c.horizon] < _ns("2016-04-01") <= t[test[0]]
        assert t[test[-1]] < _ns("2016-07-01") <= t[test[-1] + 1]  # every end bar before the next period
    # Folds that tile the calendar test every end bar once: this fold's last and the next one's first.
    nxt = choose_splits(syms, cfg(train_start="2015-04-01", val_start="2016-04-01", test_start="2016-07-01",
                                  test_end="2016-10-01", horizon=5)).splits
    for i in range(len(syms)):
        assert int(nxt["test"].starts[i]) == int(sp["test"].stops[i])
    reason = choose_splits(syms, c).reason
    assert "--train-start 2015-01-01T00:00:00 --val-start 2016-01-01T00:00:00" in reason
    old = Config().to_dict()
    del old["features"]["train_start"], old["features"]["test_end"]  # a checkpoint from before them
    assert Config.from_dict(old).features.test_end is None
