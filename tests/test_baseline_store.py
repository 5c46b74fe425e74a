"""Saved baselines: the fits of a run written beside its checkpoints predict, after a reload, the
very numbers of the run's own report; a foreign or damaged file is refused with its reason."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_baselines import StopAfter, nonlinear_market, train_label_mean, window_datasets

from indicator_transformer.baseline_store import (
    BASELINES_FILE,
    BaselinesUnusable,
    from_record,
    load_baselines,
    owner_of,
    save_baselines,
)
from indicator_transformer.baselines import baseline_predictions
from indicator_transformer.integrity import seal_json

FP = "ab" * 32
CONFIG = {"features": {"window": 4, "horizon": 1, "features": ["ret_1", "ret_5", "ret_10"]},
          "train": {"seed": 3}}


def state(fingerprint: str = FP, config: dict | None = None) -> dict:
    """The parts of a checkpoint that load_baselines reads."""
    return {"data_fingerprint": {"fingerprint": fingerprint}, "config": config or CONFIG,
            "lineage": {"line": "0123456789abcdef"}, "global_step": 10}


@pytest.fixture(scope="module")
def fitted_run():
    market = window_datasets(nonlinear_market())
    base = baseline_predictions(market, train_label_mean(market), 1, StopAfter(), threads=1, seed=3)
    assert base is not None and base.fitted is not None
    return market, base


def test_saved_baselines_predict_the_runs_own_test_numbers_bit_for_bit(fitted_run, tmp_path: Path) -> None:
    market, base = fitted_run
    save_baselines(tmp_path, base.fitted, owner_of(CONFIG, FP, "0123456789abcdef", 10))
    text = (tmp_path / BASELINES_FILE).read_text()
    assert "lightgbm" in text and json.loads(text)["ridge"]["alpha"] > 0
    again = load_baselines(tmp_path, state())
    preds = again.predict(market["test"], lambda: False, threads=1)
    for name, values in base.predictions.items():
        assert np.array_equal(preds[name], values), name
    # And on windows it never scored (the training split): the same as the fitted objects give.
    fresh = base.fitted.predict(market["train"], lambda: False, threads=1)
    reloaded = again.predict(market["train"], lambda: False, threads=1)
    for name in fresh:
        assert np.array_equal(fresh[name], reloaded[name]), name


def test_baselines_of_other_data_settings_or_seed_are_refused_with_the_reason(fitted_run, tmp_path) -> None:
    _, base = fitted_run
    save_baselines(tmp_path, base.fitted, owner_of(CONFIG, FP, "0123456789abcdef", 10))
    with pytest.raises(BaselinesUnusable, match="other data"):
        load_baselines(tmp_path, state(fingerprint="cd" * 32))
    with pytest.raises(BaselinesUnusable, match="seed settings"):
        load_baselines(tmp_path, state(config={**CONFIG, "train": {"seed": 4}}))
    with pytest.raises(BaselinesUnusable, match="does not exist"):
        load_baselines(tmp_path / "elsewhere", state())


def test_a_damaged_or_tampered_baselines_file_is_refused(fitted_run, tmp_path: Path) -> None:
    _, base = fitted_run
    path = save_baselines(tmp_path, base.fitted, owner_of(CONFIG, FP, "0123456789abcdef", 10))
    doc = json.loads(path.read_text())
    path.write_text(path.read_text()[:-40])
    with pytest.raises(BaselinesUnusable, match="cannot be read"):
        load_baselines(tmp_path, state())
    doc["train_mean"] = 1.0  # an edit without a new seal
    path.write_text(json.dumps(doc))
    with pytest.raises(BaselinesUnusable, match="cannot be read"):
        load_baselines(tmp_path, state())
    # Sealed, but malformed fields are named.
    for field, value, message in (("ridge", {**doc["ridge"], "coef": [1.0, "x"]}, "ridge.coef"),
                                  ("lightgbm", {**doc["lightgbm"], "model": "not a model"}, "lightgbm.model"),
                                  ("symbol_means", {"A": None}, "symbol_means")):
        bad = {k: v for k, v in doc.items() if k != "digest"}
        bad[field] = value
        with pytest.raises(BaselinesUnusable, match=message):
            from_record(seal_json(bad), "baselines.json")
