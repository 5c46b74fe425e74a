"""The fitted baselines of a run, saved beside its checkpoints as ``models/baselines.json``.

A run's report compares the model with ridge and LightGBM fitted on the model's own training
data. To score files the model never saw against the *same* baselines (``evaluate
--all-windows``, ``predict --baselines``), the fits are kept when the run ends:

    save_baselines(models_dir, fitted, owner)       # at the end of a run, before evaluation.json
    fitted = load_baselines(models_dir, state)      # None (with the reason) when absent or foreign

The file is plain JSON, sealed with a digest like every JSON this tool writes: ridge's
coefficients and means as numbers, LightGBM's model as its own text format (parsed by LightGBM,
never executed), each symbol's training mean. Nothing in it can run code. It records the data,
feature and split settings and seed it was fitted with; a file fitted on other data or with other
settings is not used (every checkpoint of a run, and its forks, share those and so the file). A
symbolic link in its place is refused, like a linked checkpoint: it would score against a file
this run never wrote.
"""

from __future__ import annotations

import errno
import json
import math
import os
import stat
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_write_json
from .baselines import FittedBaselines, Ridge, _lightgbm
from .integrity import IntegrityError, check_json, json_safe, seal_json

BASELINES_FILE = "baselines.json"
FORMAT = 1


def to_record(fitted: FittedBaselines, owner: dict[str, Any]) -> dict[str, Any]:
    """The JSON-able record of ``fitted``; ``owner`` is what the fits depend on (see
    :func:`owner_of`)."""
    ridge = None
    if fitted.ridge is not None:
        ridge = {"alpha": float(fitted.ridge.alpha), "coef": [float(v) for v in fitted.ridge.coef],
                 "x_mean": [float(v) for v in fitted.ridge.x_mean], "y_mean": float(fitted.ridge.y_mean)}
    lgbm = None
    if fitted.lightgbm is not None:
        lgbm = {"rounds": int(fitted.rounds),
                "model": fitted.lightgbm.model_to_string(num_iteration=int(fitted.rounds))}
    return {"format": FORMAT, "belongs_to": dict(owner), "train_mean": float(fitted.train_mean),
            "symbol_means": {k: float(v) for k, v in fitted.symbol_means.items()},
            "horizon": int(fitted.horizon), "window": int(fitted.window), "ridge": ridge, "lightgbm": lgbm,
            "details": fitted.details}


def owner_of(config: dict[str, Any], fingerprint: str, line: str, global_step: int) -> dict[str, Any]:
    """What a run's fitted baselines depend on, and where they came from: the data fingerprint,
    the feature and split settings and the seed of ``config`` (a Config.to_dict()), the line and
    step of training."""
    return {"data_fingerprint": fingerprint, "features": config.get("features"),
            "seed": (config.get("train") or {}).get("seed"), "line": line, "global_step": int(global_step)}


def save_baselines(models_dir: str | Path, fitted: FittedBaselines, owner: dict[str, Any]) -> Path:
    """Write ``models_dir/baselines.json`` atomically (complete under its name, or absent)."""
    doc = seal_json(json_safe(to_record(fitted, owner)))
    return atomic_write_json(Path(models_dir) / BASELINES_FILE, doc)


class BaselinesUnusable(ValueError):
    """Why a baselines.json cannot be used (absent, damaged, another run's)."""


def _num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def from_record(doc: dict[str, Any], where: str) -> FittedBaselines:
    """A FittedBaselines from a record; BaselinesUnusable naming the field when it is malformed."""
    def need(ok: bool, field: str, expected: str) -> None:
        if not ok:
            raise BaselinesUnusable(f"{where}: field '{field}' is not {expected}")

    need(doc.get("format") == FORMAT, "format", f"{FORMAT}")
    need(_num(doc.get("train_mean")), "train_mean", "a finite number")
    means = doc.get("symbol_means")
    need(isinstance(means, dict) and all(isinstance(k, str) and _num(v) for k, v in means.items()),
         "symbol_means", "a map of symbol to finite number")
    for key in ("horizon", "window"):
        need(isinstance(doc.get(key), int) and not isinstance(doc.get(key), bool) and doc[key] >= 1, key,
             "a positive integer")
    details = doc.get("details", {})
    need(isinstance(details, dict) and all(isinstance(v, dict) for v in details.values()), "details",
         "a table of what each baseline fitted")
    fitted = FittedBaselines(float(doc["train_mean"]), dict(means), int(doc["horizon"]), int(doc["window"]),
                             details=details)
    r, g = doc.get("ridge"), doc.get("lightgbm")
    need((r is None) == (g is None), "ridge", "present exactly when lightgbm is")
    if r is None:
        return fitted
    need(isinstance(r, dict), "ridge", "a table")
    coef, x_mean = r.get("coef"), r.get("x_mean")
    need(isinstance(coef, list) and len(coef) > 0 and all(_num(v) for v in coef), "ridge.coef",
         "a list of finite numbers")
    need(isinstance(x_mean, list) and len(x_mean) == len(coef) and all(_num(v) for v in x_mean),
         "ridge.x_mean", f"{len(coef)} finite numbers like ridge.coef")
    need(_num(r.get("alpha")) and r["alpha"] > 0, "ridge.alpha", "a positive number")
    need(_num(r.get("y_mean")), "ridge.y_mean", "a finite number")
    ridge = Ridge(float(r["alpha"]))
    ridge.coef, ridge.x_mean = np.asarray(coef, np.float64), np.asarray(x_mean, np.float64)
    ridge.y_mean = float(r["y_mean"])
    need(isinstance(g, dict) and isinstance(g.get("model"), str), "lightgbm.model", "LightGBM's model text")
    need(isinstance(g.get("rounds"), int) and g["rounds"] >= 1, "lightgbm.rounds", "a positive integer")
    try:
        booster = _lightgbm().Booster(model_str=g["model"])
    except Exception as e:  # LightGBM raises its own LightGBMError on a malformed model text
        raise BaselinesUnusable(f"{where}: field 'lightgbm.model' is not a LightGBM model "
                                f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    fitted.ridge, fitted.lightgbm, fitted.rounds = ridge, booster, int(g["rounds"])
    return fitted


def _read_own_file(path: Path) -> str:
    """The text of the regular file at ``path``, not following a symbolic link (ELOOP) and
    refusing anything else that is not a plain file (a FIFO would block the read)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        return f.read().decode("utf-8")


def load_baselines(models_dir: str | Path, state: dict[str, Any]) -> FittedBaselines:
    """The baselines fitted by the run of checkpoint ``state``, from ``models_dir/baselines.json``.
    BaselinesUnusable (with the reason, for a warning) when the file is absent, damaged, or was
    fitted by another line of training, on other data, or for other windows."""
    path = Path(models_dir) / BASELINES_FILE
    try:
        doc = check_json(json.loads(_read_own_file(path)))
    except FileNotFoundError:
        raise BaselinesUnusable(f"{path} does not exist (the run ended before the baselines were saved, "
                                f"or it predates them)") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise BaselinesUnusable(f"{path} is a symbolic link; a run's baselines are the file it wrote "
                                    f"there (remove the link)") from None
        raise BaselinesUnusable(f"{path}: cannot be read ({e.strerror or e})") from None
    except (UnicodeDecodeError, json.JSONDecodeError, IntegrityError) as e:
        raise BaselinesUnusable(f"{path}: cannot be read as a sealed report ({e})") from None
    # The fits depend on the training data, the feature and split settings and the seed, all fixed
    # for every checkpoint of a run and its forks: those must agree, not the line of training.
    owner = doc.get("belongs_to") if isinstance(doc.get("belongs_to"), dict) else {}
    config = state.get("config") or {}
    cfg = config.get("features") or {}
    if owner.get("data_fingerprint") != (state.get("data_fingerprint") or {}).get("fingerprint"):
        raise BaselinesUnusable(f"{path}: fitted on other data than this checkpoint was trained on")
    if owner.get("features") != cfg or owner.get("seed") != (config.get("train") or {}).get("seed"):
        raise BaselinesUnusable(f"{path}: fitted with other feature, split or seed settings than this "
                                f"checkpoint's")
    fitted = from_record(doc, str(path))
    if fitted.window != cfg.get("window") or fitted.horizon != cfg.get("horizon"):
        raise BaselinesUnusable(f"{path}: fitted for window {fitted.window} and horizon {fitted.horizon}, "
                                f"the checkpoint uses {cfg.get('window')} and {cfg.get('horizon')}")
    if fitted.ridge is not None and len(fitted.ridge.coef) % fitted.window:
        raise BaselinesUnusable(f"{path}: ridge has {len(fitted.ridge.coef)} inputs, not a multiple of the "
                                f"window {fitted.window}")
    return fitted
