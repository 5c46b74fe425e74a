"""One naming rule, every setting reachable: each configuration field has a flag of its name in both
training commands, with its default in the help, and survives `indicator-transformer config --show`
and back; the `features` and `config` subcommands as a user runs them."""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT, child_env, default_sigint

from indicator_transformer.cli import main as cli_main
from indicator_transformer.cli import resume, train
from indicator_transformer.cli.options import DATA_FLAGS, DATA_LOCATION, FIXED_ON_RESUME, RUNTIME_FLAGS
from indicator_transformer.config import Config, build_config, flag_name, load_toml, to_toml

FIELDS = [(section, f) for section, klass in Config.section_classes().items()
          for f in dataclasses.fields(klass)]

# A value other than the default for every field, as a flag takes it.
RSI7 = '[{name = "rsi_7", fn = "RSI", params = {timeperiod = 7}, transform = "osc100"}]'
OTHER = {"data_dir": "some/data", "data_file": None, "symbols": "5", "bars": "700", "data_seed": "9",
         "skip_bad_files": True, "use_adj_close": True, "cache_dir": "c2", "prep_workers": "3",
         "features": "ret_1,rsi_7", "custom_features": RSI7, "horizon": "2", "window": "12",
         "train_frac": "0.6", "val_frac": "0.2", "d_model": "48", "heads": "8", "layers": "3",
         "dropout": "0.25", "ff_mult": "3", "epochs": "4", "batch_size": "32", "lr": "0.0003",
         "weight_decay": "0.05", "warmup_steps": "7", "grad_clip": "0.5", "seed": "11", "device": "cpu",
         "num_workers": "1", "models_dir": "m2", "checkpoint_every": "10", "keep": "4",
         "split": "per-symbol", "normalise": "global", "runs_dir": "r2", "cost_bps": "2.5",
         "precision": "bf16", "threads": "1", "val_start": "GOOG=2012-06-01,*=2016-01-01",
         "test_start": "2017-01-01", "train_start": "2010-01-01", "test_end": "2018-01-01"}


def _cli(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """``python -m indicator_transformer.cli.main ARGV`` (the ``indicator-transformer`` script)."""
    return subprocess.run([sys.executable, "-m", "indicator_transformer.cli.main", *argv], cwd=cwd,
                          env=child_env(), capture_output=True, text=True, timeout=120,
                          preexec_fn=default_sigint)


def _actions(p: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {s: a for a in p._actions for s in a.option_strings}


@pytest.mark.parametrize(("section", "field"), FIELDS, ids=[f.name for _, f in FIELDS])
def test_every_setting_has_a_flag_of_its_name_in_both_commands_with_its_default_in_the_help(section, field):
    flag = flag_name(field.name)
    for parser in (train.parser(), resume.parser(), cli_main.parser()._subparsers._group_actions[0]
                   .choices["config"]):
        action = _actions(parser).get(flag)
        assert action is not None, f"{parser.prog} has no {flag}"
        assert action.help and "default" in action.help, (parser.prog, flag, action.help)
        assert action.default is None  # not given = the file or the built-in default decides


def test_every_field_is_in_the_other_value_table():
    assert set(OTHER) == {f.name for _, f in FIELDS}


def _argv(values: dict) -> list[str]:
    argv = []
    for key, value in values.items():
        if value is None:
            continue
        argv += [flag_name(key)] if value is True else [flag_name(key), value]
    return argv


def test_every_setting_round_trips_through_config_show_and_back(tmp_path: Path, capsys) -> None:
    argv = _argv(OTHER)
    assert cli_main.main(["config", "--show", *argv]) == 0
    text = capsys.readouterr().out
    (tmp_path / "effective.toml").write_text(text)
    back = build_config(load_toml(tmp_path / "effective.toml"), {}, "effective.toml")
    args = train.parser().parse_args(argv)
    from indicator_transformer.cli.options import flag_values

    assert back == build_config({}, flag_values(args))
    for section, field in FIELDS:  # every value other than the default survived
        if OTHER[field.name] is not None:
            default = getattr(getattr(Config(), section), field.name)
            assert getattr(getattr(back, section), field.name) != default, field.name
    assert "[data]" in text and "[features]" in text and "[model]" in text and "[train]" in text
    assert to_toml(back) == text


def test_config_show_merges_defaults_file_and_flags_and_the_file_reads_back(tmp_path: Path) -> None:
    (tmp_path / "run.toml").write_text(
        'lr = 0.0005\n[model]\nff_mult = 4\n[[features.custom_features]]\nname = "obv_z"\nfn = "OBV"\n'
        'transform = "zscore"\nwindow = 40\n')
    r = _cli(["config", "--show", "--config", "run.toml", "--train-frac", "0.5", "--no-use-adj-close"],
             tmp_path)
    assert r.returncode == 0, r.stderr
    (tmp_path / "shown.toml").write_text(r.stdout)
    cfg = build_config(load_toml(tmp_path / "shown.toml"), {})
    assert cfg.train.lr == 0.0005 and cfg.model.ff_mult == 4 and cfg.features.train_frac == 0.5
    assert cfg.features.features[-1] == "obv_z" and cfg.features.custom_features[0]["window"] == 40
    assert cfg == build_config(load_toml(tmp_path / "run.toml"), {"train_frac": 0.5})
    assert "# data_dir is not set" in r.stdout


def test_a_no_flag_undoes_a_boolean_set_true_in_the_config_file(tmp_path: Path, capsys) -> None:
    (tmp_path / "run.toml").write_text("use_adj_close = true\nskip_bad_files = true\n")
    assert cli_main.main(["config", "--config", str(tmp_path / "run.toml"), "--no-use-adj-close"]) == 0
    out = capsys.readouterr().out
    assert "use_adj_close = false" in out and "skip_bad_files = true" in out


def test_resume_fixes_data_feature_model_and_optimisation_settings_and_lets_runtime_ones_change():
    fixed = {f[2:].replace("-", "_") for f in FIXED_ON_RESUME}
    sections = Config.field_sections()
    location = {f[2:].replace("-", "_") for f, _, _ in DATA_FLAGS[:DATA_LOCATION]}
    runtime = {f[2:].replace("-", "_") for f, _, _ in RUNTIME_FLAGS}
    expected = {k for k, s in sections.items() if s in ("features", "model")} | {
        "symbols", "bars", "data_seed", "use_adj_close", "batch_size", "lr", "weight_decay", "warmup_steps",
        "grad_clip", "seed"}
    assert fixed == expected
    assert fixed | location | runtime | {"epochs"} == set(sections)
    assert not (fixed & runtime) and not (fixed & location)


@pytest.mark.parametrize(("key", "why"), [("no_progress", "--no-progress"),
                                           ("prepare_only", "--prepare-only"),
                                           ("config", "cannot name another")])
def test_a_command_line_switch_in_a_config_file_is_refused_saying_why(tmp_path: Path, key, why) -> None:
    (tmp_path / "run.toml").write_text(f"{key} = true\n")
    from indicator_transformer.errors import UserError

    with pytest.raises(UserError, match=f"'{key}' is a command-line switch.*not a setting") as info:
        load_toml(tmp_path / "run.toml")
    assert why in str(info.value)


@pytest.mark.parametrize(("text", "needles"), [
    ("[train]\nno_progress = true\n", ["'no_progress' in [train]", "command-line switch"]),
    ("[data]\nprepare_only = true\n", ["'prepare_only' in [data]", "command-line switch"]),
    ("[runtime]\nnum_workers = 2\n", ["unknown section [runtime]", "[data], [features], [model], [train]"]),
    ("[data]\nlr = 0.1\n", ["unknown key 'lr' in [data]", "belongs in [train]"]),
])
def test_a_misplaced_key_or_section_says_where_it_belongs(tmp_path: Path, text: str, needles) -> None:
    from indicator_transformer.errors import UserError

    (tmp_path / "run.toml").write_text(text)
    with pytest.raises(UserError) as info:
        load_toml(tmp_path / "run.toml")
    assert all(n in str(info.value) for n in needles), str(info.value)


# ----------------------------------------------------------------------------- features
def test_features_lists_every_built_in_with_family_inputs_and_formula_and_the_transforms(capsys) -> None:
    assert cli_main.main(["features"]) == 0
    out = capsys.readouterr().out
    from indicator_transformer.data.features import FEATURES, TRANSFORMS

    for name, f in FEATURES.items():
        line = next(ln for ln in out.splitlines() if ln.startswith(name + " "))
        assert f.family in line and f.doc in line and ", ".join(f.inputs) in line
    for name in TRANSFORMS:
        assert any(ln.startswith(name + " ") for ln in out.splitlines())
    assert "custom_features = [" in out


def test_features_with_a_config_lists_its_declared_features(tmp_path: Path, capsys) -> None:
    (tmp_path / "run.toml").write_text(f'features = ["ret_1"]\ncustom_features = {RSI7}\n')
    assert cli_main.main(["features", "--config", str(tmp_path / "run.toml")]) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("rsi_7 "))
    assert "not in features" in line and "RSI(close; timeperiod=7)" in line


def test_features_talib_lists_every_function_by_group_with_parameters_and_defaults(capsys) -> None:
    import talib

    assert cli_main.main(["features", "--talib"]) == 0
    out = capsys.readouterr().out
    for group in talib.get_function_groups():
        assert f"== {group}" in out
    macd = next(ln for ln in out.splitlines() if ln.startswith("MACD "))
    assert "fastperiod=12, slowperiod=26, signalperiod=9" in macd and "macdhist" in macd
    assert len([ln for ln in out.splitlines() if ln.split(" ")[0] in talib.get_functions()]) == len(
        talib.get_functions())


def test_features_function_shows_one_with_a_declaration_that_passes_the_checks(capsys) -> None:
    assert cli_main.main(["features", "--function", "bbands"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("BBANDS: Bollinger Bands (Overlap Studies)")
    assert "nbdevup" in out and "number" in out and "choose one with output" in out
    example = out.strip().splitlines()[-1].strip()
    import tomllib

    from indicator_transformer.data.features import declare

    declared = declare([tomllib.loads(f"v = {example}")["v"]])
    assert declared[0]["transform"] == "ratio_close"


@pytest.mark.parametrize("argv", [["features", "--function", "RSII"], ["config", "--lr", "nan"],
                                  ["config", "--custom-features", "[{name = "], ["nosuch"], []])
def test_a_subcommand_mistake_exits_2_without_a_traceback(argv: list[str]) -> None:
    r = _cli(argv, REPO_ROOT)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and "error:" in r.stderr
    if argv[:1] == ["features"]:
        assert "did you mean RSI" in r.stderr


def test_each_subcommand_has_help() -> None:
    for argv in (["--help"], ["features", "--help"], ["config", "--help"]):
        r = _cli(argv, REPO_ROOT)
        assert r.returncode == 0 and "usage: indicator-transformer" in r.stdout, r.stderr
