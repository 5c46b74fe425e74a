"""The search space of a sweep, read from a TOML file whose keys are the train settings' names:

    lr = {low = 1e-4, high = 1e-2, log = true}
    d_model = {choices = [16, 32, 64]}
    window = {low = 16, high = 64, step = 16}

Only settings that change the model or its optimisation can be swept. Paths, the data, the label,
the splits (every trial is compared on the same validation windows), switches and settings that
change only speed or files are refused, naming the file and the key, as is any bad range. Values
are checked as the configuration checks them; a combination that makes no valid model (heads not
dividing d_model) is skipped at sampling time with the reason (see :func:`invalid`).
"""

from __future__ import annotations

import itertools
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import Config, ConfigError
from ..errors import UserError

# key -> the section it lives in; the settings a sweep may vary.
SWEEPABLE = ("window", "normalise", "d_model", "heads", "layers", "dropout", "ff_mult", "epochs",
             "batch_size", "lr", "weight_decay", "warmup_steps", "grad_clip")
# Why each other setting cannot be swept (the refusal's message).
_DATA = "it changes the data, the label or the splits that every trial is compared on"
_SPEED = "it changes only speed or where files go, not the model"
WHY_NOT: dict[str, str] = {
    **{k: "a path" for k in ("data_dir", "data_file", "cache_dir", "models_dir", "runs_dir")},
    **{k: _DATA for k in ("symbols", "bars", "data_seed", "features", "custom_features", "horizon",
                          "train_frac", "val_frac", "split", "val_start", "test_start", "train_start",
                          "test_end")},
    **{k: "a switch" for k in ("skip_bad_files", "use_adj_close")},
    **{k: _SPEED for k in ("device", "num_workers", "prep_workers", "threads", "checkpoint_every",
                           "keep", "precision")},
    "seed": "selecting a seed on validation selects noise (walk-forward --seeds measures the spread)",
    "cost_bps": "it changes only the report's strategy figures, not the model",
}
_TABLE_KEYS = {"low", "high", "log", "step", "choices"}


@dataclass(frozen=True)
class Param:
    """One swept setting: a range (``low``..``high``, ``log``, ``step``) or a list of ``choices``."""

    name: str
    kind: str                      # "int", "float" or "categorical"
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] = ()

    def distribution(self) -> Any:
        """The Optuna distribution."""
        from optuna.distributions import (
            CategoricalDistribution,
            FloatDistribution,
            IntDistribution,
        )

        if self.kind == "categorical":
            return CategoricalDistribution(list(self.choices))
        if self.kind == "int":
            return IntDistribution(int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        return FloatDistribution(float(self.low), float(self.high), log=self.log, step=self.step)

    def record(self) -> dict[str, Any]:
        """JSON-able, as kept in the study."""
        if self.kind == "categorical":
            return {"choices": list(self.choices)}
        return {"low": self.low, "high": self.high, "log": self.log, "step": self.step}

    def values(self) -> list[Any] | None:
        """Every value, when there are few (for the check of combinations), else None."""
        if self.kind == "categorical":
            return list(self.choices)
        if self.kind == "int" and not self.log:
            step = int(self.step or 1)
            n = (int(self.high) - int(self.low)) // step + 1
            return list(range(int(self.low), int(self.high) + 1, step)) if n <= 512 else None
        return None


@dataclass(frozen=True)
class Space:
    """The swept settings, in the file's order."""

    params: tuple[Param, ...]
    path: str

    def record(self) -> dict[str, Any]:
        return {p.name: p.record() for p in self.params}

    def names(self) -> list[str]:
        return [p.name for p in self.params]


def load_space(path: str | Path, base: Config) -> Space:
    """Read and check ``path``; every error names the file and the key (exit code 2)."""
    where = str(path)
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"--space {where}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"--space {where}: a folder, expected a TOML file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"--space {where}: cannot be read ({getattr(e, 'strerror', None) or e})") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{where}: not valid TOML ({e})") from None
    flat: dict[str, Any] = {}
    for key, value in raw.items():  # [model] / [train] tables of settings are accepted too
        if key in Config.SECTIONS and isinstance(value, dict) and not (_TABLE_KEYS & set(value)):
            for k, v in value.items():
                _put(flat, k, v, where)
        else:
            _put(flat, key, value, where)
    if not flat:
        raise UserError(f"{where}: no settings to sweep (expected lines such as "
                        f"lr = {{low = 1e-4, high = 1e-2, log = true}})")
    fields = Config.field_sections()
    params = []
    for key, spec in flat.items():
        if key not in fields:
            raise UserError(f"{where}: '{key}' is not a setting (the sweepable ones: {', '.join(SWEEPABLE)})")
        if key not in SWEEPABLE:
            raise UserError(f"{where}: '{key}' cannot be swept: {WHY_NOT.get(key, 'not a model setting')}")
        params.append(_param(key, spec, where, base))
    space = Space(tuple(params), where)
    _check_some_valid(space, base)
    return space


def _put(flat: dict[str, Any], key: str, value: Any, where: str) -> None:
    name = key.replace("-", "_")
    if name in flat:
        raise UserError(f"{where}: '{key}' is given twice")
    flat[name] = value


def _param(key: str, spec: Any, where: str, base: Config) -> Param:
    at = f"{where}: {key}"
    if not isinstance(spec, dict):
        raise UserError(f"{at} = {spec!r}: expected a table, such as {{low = 1, high = 4}} or "
                        f"{{choices = [16, 32]}}")
    odd = sorted(set(spec) - _TABLE_KEYS)
    if odd:
        raise UserError(f"{at}: unknown key(s) {', '.join(odd)} (expected low, high, log, step or choices)")
    current = getattr(getattr(base, Config.field_sections()[key]), key)
    if "choices" in spec:
        if set(spec) != {"choices"}:
            raise UserError(f"{at}: give either choices or low/high, not both")
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise UserError(f"{at}: choices must be a non-empty list")
        if len(set(map(repr, choices))) != len(choices):
            raise UserError(f"{at}: choices {choices!r} hold a value twice")
        for c in choices:
            _check_value(key, c, at, base)
        return Param(key, "categorical", choices=tuple(choices))
    if "low" not in spec or "high" not in spec:
        raise UserError(f"{at}: expected low and high (or choices)")
    if isinstance(current, str):
        raise UserError(f"{at}: a text setting: give its values as choices = [...]")
    is_int = isinstance(current, int) and not isinstance(current, bool)
    low, high, log, step = spec["low"], spec["high"], spec.get("log", False), spec.get("step")
    for name, v in (("low", low), ("high", high)) + ((("step", step),) if step is not None else ()):
        ok = isinstance(v, int) if is_int else isinstance(v, int | float)
        if isinstance(v, bool) or not ok or (isinstance(v, float) and not math.isfinite(v)):
            want = "a whole number" if is_int else "a finite number"
            raise UserError(f"{at}: {name} = {v!r}: expected {want}")
    if not isinstance(log, bool):
        raise UserError(f"{at}: log = {log!r}: expected true or false")
    if not low < high:
        raise UserError(f"{at}: low = {low!r} must be below high = {high!r}")
    if step is not None and not step > 0:
        raise UserError(f"{at}: step = {step!r}: expected a number > 0")
    if log and low <= 0:
        raise UserError(f"{at}: log = true needs low > 0 (low = {low!r})")
    if log and step is not None and not (is_int and step == 1):
        raise UserError(f"{at}: log = true cannot be given with step")
    if step is not None and not is_int \
            and abs(round((high - low) / step) * step - (high - low)) > 1e-9 * abs(high):
        raise UserError(f"{at}: high - low = {high - low!r} is not a whole number of steps of {step!r}")
    for v in (low, high):
        _check_value(key, v, at, base)
    return Param(key, "int" if is_int else "float", low=low, high=high, log=log, step=step)


def _check_value(key: str, value: Any, at: str, base: Config) -> None:
    """A value of the setting that the configuration itself refuses (ConfigError) is a bad range;
    one refused only together with other settings (heads vs d_model) is left to :func:`invalid`."""
    try:
        base.replace(**{key: value})
    except ConfigError as e:
        if e.key == key or e.key is None:
            if key in ("d_model", "heads") and "divisor" in e.detail:
                return
            raise UserError(f"{at}: {value!r}: {e.detail}") from None


def invalid(base: Config, params: dict[str, Any]) -> str | None:
    """Why these sampled values together make no valid run (the skipped trial's reason), or None."""
    try:
        base.replace(source="the sampled settings", **params)
    except ConfigError as e:
        return e.detail
    return None


def _check_some_valid(space: Space, base: Config) -> None:
    """Refuse a space in which no combination of its listed values is valid (heads dividing no
    d_model), before any trial starts; mixed spaces are checked at sampling time instead."""
    values = [(p.name, p.values()) for p in space.params if p.name in ("d_model", "heads")]
    if not values or any(v is None for _, v in values):
        return
    names = [n for n, _ in values]
    for combo in itertools.islice(itertools.product(*[v for _, v in values]), 100_000):
        if invalid(base, dict(zip(names, combo, strict=True))) is None:
            return
    raise UserError(f"{space.path}: no value of {' and '.join(names)} in the space makes a valid model "
                    f"(heads must divide d_model; the base settings: d_model={base.model.d_model}, "
                    f"heads={base.model.heads})")
