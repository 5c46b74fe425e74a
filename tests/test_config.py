"""config.py: every value of every field, from any source (flag, TOML, a checkpoint's dict), is either
accepted as a sane value or refused with a UserError naming where it came from and the key."""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

import pytest

from indicator_transformer.config import (
    SEED_LIMIT,
    Config,
    ConfigError,
    build_config,
    load_toml,
)
from indicator_transformer.errors import UserError
from indicator_transformer.training.rng import seed_everything

EXTREMES = [0, -1, 1, 2**31, 2**63, 2**64, 10**400, 0.5, -0.0, 1e308, float("nan"), float("inf"),
            float("-inf"), "", "   ", "\0", "x" * 5000, True, False, None, [], ["ret_1"], {"a": 1}]
KEYS = sorted(Config.field_sections())


def _sane(cfg: Config) -> None:
    """What every accepted configuration must satisfy, whatever was asked for."""
    for section in Config.SECTIONS:
        part = getattr(cfg, section)
        for f in dataclasses.fields(part):
            value = getattr(part, f.name)
            if isinstance(value, float):
                assert math.isfinite(value), (f.name, value)
            if isinstance(value, int) and not isinstance(value, bool):
                assert 0 <= value < 2**63, (f.name, value)
            if f.name.endswith("_dir") and value is not None:
                assert value.strip() and "\0" not in value, (f.name, value)
    assert cfg.model.d_model % cfg.model.heads == 0
    assert cfg.train.lr <= 1 and cfg.features.window <= 8192 and cfg.train.batch_size <= 65_536
    assert cfg.data.symbols * cfg.data.bars <= 10**9


@pytest.mark.parametrize("key", KEYS)
def test_every_field_accepts_a_sane_value_or_refuses_an_extreme_one_naming_the_key(key: str) -> None:
    for value in EXTREMES:
        try:
            cfg = Config().replace(**{key: value})
        except UserError as e:
            assert key in str(e), (key, value, str(e))  # cross-field errors name it as d_model=1
            assert len(str(e)) < 400 and "\n" not in str(e)  # one readable line, even for 5000 x's
            continue
        # Any other exception fails the test by itself.
        _sane(cfg)


@pytest.mark.parametrize(("key", "value"), [
    ("lr", float("inf")), ("lr", float("nan")), ("lr", 10.0), ("weight_decay", float("inf")),
    ("grad_clip", float("inf")), ("dropout", float("nan")), ("train_frac", 10**400),
    ("seed", 2**64), ("seed", -5), ("data_seed", -5), ("data_seed", 2**63),
    ("window", 10**9), ("batch_size", 10**7), ("d_model", 10**6), ("symbols", 10**7),
    ("bars", 10**9), ("layers", 10**5), ("prep_workers", 10**6), ("num_workers", 10**6),
    ("epochs", 10**30), ("device", "cuda:x"), ("device", "cuda:"), ("cache_dir", ""),
    ("cache_dir", "  "), ("models_dir", ""), ("data_dir", ""), ("data_dir", "a\0b"),
])
def test_absurd_values_that_used_to_be_accepted_or_to_crash_later_are_refused(key: str, value: object
                                                                              ) -> None:
    with pytest.raises(ConfigError, match=f"^run.toml: invalid value for '{key}'"):
        Config().replace(source="run.toml", **{key: value})


def test_seeds_accept_the_whole_documented_range() -> None:
    cfg = Config().replace(seed=SEED_LIMIT - 1, data_seed=0)
    assert cfg.train.seed == 2**63 - 1
    seed_everything(cfg.train.seed)  # torch, numpy and random all take it


def test_seed_everything_refuses_a_seed_outside_the_range_instead_of_a_torch_overflow() -> None:
    for bad in (-1, 2**63, True):
        with pytest.raises(ValueError, match="0 <= seed < 2\\*\\*63"):
            seed_everything(bad)


def test_a_model_too_large_to_be_meant_is_refused_before_torch_allocates_it() -> None:
    with pytest.raises(ConfigError, match="'d_model'.*parameters"):
        Config().replace(d_model=8192, heads=8, layers=2)
    assert Config().replace(d_model=1024, heads=8, layers=8).model.d_model == 1024


def test_the_same_folder_for_two_roles_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'models_dir'.*other than cache_dir"):
        Config().replace(cache_dir=str(tmp_path / "x"), models_dir=str(tmp_path / "x" / "."))
    with pytest.raises(ConfigError, match="'cache_dir'.*other than data_dir"):
        Config().replace(data_dir=str(tmp_path), cache_dir=str(tmp_path))


# ----------------------------------------------------------------------------- from_dict
def _good() -> dict:
    return Config().to_dict()


def _with(section: str, key: object, value: object) -> dict:
    d = _good()
    d[section][key] = value
    return d


def _without(section: str, key: str | None = None) -> dict:
    d = _good()
    if key is None:
        del d[section]
    else:
        del d[section][key]
    return d


@pytest.mark.parametrize(("damaged", "names"), [
    (5, "data, features, model, train"),
    (None, "data, features, model, train"),
    ([], "data, features, model, train"),
    ({**_good(), "data": 5}, "[data]"),
    ({**_good(), "train": ["epochs", 3]}, "[train]"),
    ({**_good(), "model": None}, "[model]"),
    (_without("features"), "[features]"),
    (_without("train", "lr"), "lr"),
    ({**_good(), 7: {}}, "7"),
    ({**_good(), "extra": {}}, "extra"),
    (_with("data", 3, 1), "[data]"),
    (_with("data", ("a", "b"), 1), "[data]"),
    (_with("model", "nope", 1), "nope"),
    (_with("train", "lr", "fast"), "'lr'"),
    (_with("train", "lr", float("nan")), "'lr'"),
    (_with("train", "lr", float("inf")), "'lr'"),
    (_with("train", "epochs", 2.0), "'epochs'"),
    (_with("train", "epochs", None), "'epochs'"),
    (_with("train", "seed", 2**200), "'seed'"),
    (_with("train", "device", 3), "'device'"),
    (_with("model", "heads", True), "'heads'"),
    (_with("model", "d_model", {"x": 1}), "'d_model'"),
    (_with("features", "features", "rsi_14"), "'features'"),
    (_with("features", "features", [1, 2]), "'features'"),
    (_with("features", "features", [["ret_1"]]), "'features'"),
    (_with("features", "features", []), "'features'"),
    (_with("data", "data_dir", ""), "'data_dir'"),
    (_with("data", "cache_dir", 5), "'cache_dir'"),
    (_with("data", "skip_bad_files", "yes"), "'skip_bad_files'"),
    (_with("train", "models_dir", "y" * 10**6), "'models_dir'"),
])
def test_a_damaged_config_dict_is_a_user_error_naming_the_source_and_the_section_or_key(damaged: object,
                                                                                        names: str) -> None:
    with pytest.raises(UserError) as info:
        Config.from_dict(damaged, source="models/checkpoint_epoch_3.pth")  # type: ignore[arg-type]
    message = str(info.value)
    assert message.startswith("models/checkpoint_epoch_3.pth: ")
    assert names in message
    assert len(message) < 1000


def test_from_dict_round_trips_to_dict() -> None:
    cfg = Config().replace(d_model=32, heads=8, lr=0.5, data_dir="ohlcv", features=["ret_1", "rsi_14"])
    assert Config.from_dict(cfg.to_dict()) == cfg


# ----------------------------------------------------------------------------- TOML and flags
def test_a_bad_flag_is_named_as_the_flag_even_when_a_config_file_is_given(tmp_path: Path) -> None:
    cfg = tmp_path / "run.toml"
    cfg.write_text('epochs = 2\ncache_dir = "c"\n')
    with pytest.raises(ConfigError, match="^--cache-dir: invalid value for 'cache_dir'"):
        build_config(load_toml(cfg), {"cache_dir": ""}, str(cfg))
    cfg.write_text("lr = nan\n")
    with pytest.raises(ConfigError, match=f"^{cfg}: invalid value for 'lr'"):
        build_config(load_toml(cfg), {"epochs": 3}, str(cfg))
    cfg.write_text("lr = 0.5\n")
    with pytest.raises(ConfigError, match="^--seed: invalid value for 'seed'"):
        build_config(load_toml(cfg), {"seed": -1}, str(cfg))


@pytest.mark.parametrize("text", ["batch_size = 8\nbatch-size = 9\n", "epochs = 2\n[train]\nepochs = 3\n"])
def test_a_key_given_twice_in_a_toml_file_is_an_error_not_a_silent_choice(tmp_path: Path, text: str) -> None:
    cfg = tmp_path / "run.toml"
    cfg.write_text(text)
    with pytest.raises(UserError, match="given twice"):
        load_toml(cfg)


def test_a_section_of_a_toml_file_accepts_dashed_keys_like_the_flat_form(tmp_path: Path) -> None:
    cfg = tmp_path / "run.toml"
    cfg.write_text("[train]\nbatch-size = 8\n")
    assert load_toml(cfg) == {"batch_size": 8}
    cfg.write_text('features = ["ret_1"]\n[model]\nd_model = 8\n')  # `features`: a key and a section
    assert load_toml(cfg) == {"features": ["ret_1"], "d_model": 8}
    cfg.write_text("[features]\nwindow = 8\n")
    assert load_toml(cfg) == {"window": 8}
    cfg.write_text("train = 5\n")
    with pytest.raises(UserError, match=r"\[train\] must be a table"):
        load_toml(cfg)


def test_a_config_path_that_cannot_be_read_is_a_user_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=f"^{tmp_path}: is a folder"):
        load_toml(tmp_path)
    loop = tmp_path / "loop.toml"
    os.symlink(loop, loop)  # ELOOP: an OSError that is neither "not found" nor "a folder"
    with pytest.raises(UserError, match=f"^{loop}: cannot read the config file"):
        load_toml(loop)
    with pytest.raises(UserError, match="not a valid TOML config file"):
        load_toml(str(tmp_path / "a\0b.toml"))
    if os.geteuid() != 0:  # root reads anything
        locked = tmp_path / "locked.toml"
        locked.write_text("epochs = 1\n")
        locked.chmod(0)
        with pytest.raises(UserError, match=f"^{locked}: cannot read the config file"):
            load_toml(locked)
