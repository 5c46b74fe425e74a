"""Configuration: one small dataclass per component, each checked in ``__post_init__``.

Values come from defaults, then an optional TOML file (``--config FILE``, flat keys named like the
command-line flags with ``_`` for ``-``), then explicit flags. Every bad value raises
:class:`UserError` naming the field and what was expected.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UserError

DEFAULT_FEATURES: tuple[str, ...] = (
    "ret_1", "ret_5", "ret_10", "ret_20", "hl_range", "body", "sma20_gap", "ema50_gap",
    "rsi_14", "macd", "macd_signal", "macd_hist", "roc_10", "stoch_k", "stoch_d", "cci_20",
    "willr_14", "mfi_14", "adx_14", "di_spread", "atr_14", "bb_pos", "bb_width", "obv_chg",
    "volume_z",
)


def _typed(source: str, key: str, value: Any, hint: Any) -> Any:
    """``value`` if it has the field's type (an int is accepted for a float), else a UserError
    naming the key: a TOML file can hold any type, and ``8.5`` layers must not become a traceback."""
    allowed = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) \
        else (hint,)
    for t in allowed:
        if t is type(None) and value is None:
            return value
        if t is float and isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if t is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if t in (str, bool) and isinstance(value, t):
            return value
        if typing.get_origin(t) is list and isinstance(value, list) \
                and all(isinstance(v, typing.get_args(t)[0]) for v in value):
            return list(value)
    expected = " or ".join("null" if t is type(None) else str(t) if typing.get_origin(t) else t.__name__
                           for t in allowed)
    raise UserError(f"{source}: invalid value for '{key}': {value!r} (expected {expected})")


def _check(cond: bool, name: str, value: Any, expected: str) -> None:
    if not cond:
        raise UserError(f"invalid value for '{name}': {value!r} (expected {expected})")


@dataclass
class DataConfig:
    """Where OHLCV comes from and where its features are cached."""

    data_dir: str | None = None          # None: the built-in synthetic market
    symbols: int = 16                    # synthetic market size
    bars: int = 2500
    data_seed: int = 7
    skip_bad_files: bool = False
    use_adj_close: bool = False
    cache_dir: str = "cache"
    prep_workers: int = 2

    def __post_init__(self) -> None:
        _check(self.symbols >= 1, "symbols", self.symbols, "an integer >= 1")
        _check(self.bars >= 1, "bars", self.bars, "an integer >= 1")
        _check(self.prep_workers >= 1, "prep_workers", self.prep_workers, "an integer >= 1")


@dataclass
class FeatureConfig:
    """Which indicators, the label horizon and the window length."""

    features: list[str] = field(default_factory=lambda: list(DEFAULT_FEATURES))
    horizon: int = 1
    window: int = 32
    train_frac: float = 0.70
    val_frac: float = 0.15

    def __post_init__(self) -> None:
        from .data.features import FEATURES  # the registry owns the names

        _check(len(self.features) >= 1, "features", self.features, "at least one feature")
        unknown = [f for f in self.features if f not in FEATURES]
        _check(not unknown, "features", unknown, f"names from: {', '.join(sorted(FEATURES))}")
        _check(len(set(self.features)) == len(self.features), "features", self.features,
               "no duplicates")
        _check(self.horizon >= 1, "horizon", self.horizon, "an integer >= 1")
        _check(self.window >= 2, "window", self.window, "an integer >= 2")
        _check(0 < self.train_frac < 1, "train_frac", self.train_frac, "a fraction in (0, 1)")
        _check(0 < self.val_frac < 1 and self.train_frac + self.val_frac < 1, "val_frac",
               self.val_frac, "a fraction in (0, 1) with train_frac + val_frac < 1")


@dataclass
class ModelConfig:
    """Transformer encoder size."""

    d_model: int = 64
    heads: int = 4
    layers: int = 2
    dropout: float = 0.1
    ff_mult: int = 2

    def __post_init__(self) -> None:
        _check(self.d_model >= 1, "d_model", self.d_model, "an integer >= 1")
        _check(self.heads >= 1, "heads", self.heads, "an integer >= 1")
        _check(self.d_model % self.heads == 0, "heads", self.heads,
               f"a divisor of d_model={self.d_model}")
        _check(self.layers >= 1, "layers", self.layers, "an integer >= 1")
        _check(0.0 <= self.dropout < 1.0, "dropout", self.dropout, "a number in [0, 1)")
        _check(self.ff_mult >= 1, "ff_mult", self.ff_mult, "an integer >= 1")


@dataclass
class TrainConfig:
    """Optimisation, checkpoints and devices."""

    epochs: int = 6
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 50
    grad_clip: float = 1.0
    seed: int = 0
    device: str = "auto"
    num_workers: int = 0
    models_dir: str = "models"
    checkpoint_every: int = 0
    keep: int = 3

    def __post_init__(self) -> None:
        _check(self.epochs >= 1, "epochs", self.epochs, "an integer >= 1")
        _check(self.batch_size >= 1, "batch_size", self.batch_size, "an integer >= 1")
        _check(self.lr > 0, "lr", self.lr, "a number > 0")
        _check(self.weight_decay >= 0, "weight_decay", self.weight_decay, "a number >= 0")
        _check(self.warmup_steps >= 0, "warmup_steps", self.warmup_steps, "an integer >= 0")
        _check(self.grad_clip > 0, "grad_clip", self.grad_clip, "a number > 0")
        _check(self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"), "device",
               self.device, "auto, cpu, cuda or cuda:N")
        _check(self.num_workers >= 0, "num_workers", self.num_workers, "an integer >= 0")
        _check(self.checkpoint_every >= 0, "checkpoint_every", self.checkpoint_every,
               "an integer >= 0 (0 = only at epoch end)")
        _check(self.keep >= 2, "keep", self.keep, "an integer >= 2")


@dataclass
class Config:
    """The whole run configuration, saved in every checkpoint."""

    data: DataConfig = field(default_factory=DataConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    SECTIONS = ("data", "features", "model", "train")

    @staticmethod
    def section_classes() -> dict[str, type]:
        """Section name -> its dataclass, in file order."""
        return {"data": DataConfig, "features": FeatureConfig, "model": ModelConfig,
                "train": TrainConfig}

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Plain nested dict (JSON/TOML/checkpoint friendly)."""
        return {s: dataclasses.asdict(getattr(self, s)) for s in self.SECTIONS}

    @classmethod
    def from_dict(cls, d: dict[str, dict[str, Any]], *, source: str = "config") -> Config:
        """Rebuild from :meth:`to_dict` output; unknown keys are an error naming them."""
        parts = {}
        for name, klass in cls.section_classes().items():
            values = dict(d.get(name, {}))
            known = {f.name for f in dataclasses.fields(klass)}
            unknown = sorted(set(values) - known)
            if unknown:
                raise UserError(f"{source}: unknown key(s) in [{name}]: {', '.join(unknown)}")
            hints = typing.get_type_hints(klass)
            for key, value in values.items():
                values[key] = _typed(source, key, value, hints[key])
            parts[name] = klass(**values)
        return cls(**parts)

    @classmethod
    def field_sections(cls) -> dict[str, str]:
        """Flat key -> section name, for flags and flat TOML files."""
        out = {}
        for name, klass in cls.section_classes().items():
            for f in dataclasses.fields(klass):
                out[f.name] = name
        return out

    def replace(self, source: str = "configuration", **flat: Any) -> Config:
        """A copy with flat keys (``epochs=3``, ``d_model=32``) replaced and re-validated; errors
        name ``source``."""
        sections = self.field_sections()
        d = self.to_dict()
        for key, value in flat.items():
            if key not in sections:
                raise UserError(f"{source}: unknown configuration key '{key}'")
            d[sections[key]][key] = value
        return Config.from_dict(d, source=source)


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a flat TOML config file (keys named like the flags, ``_`` for ``-``).

    Sections ``[data]``, ``[features]``, ``[model]``, ``[train]`` are accepted too and flattened.
    """
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: config file not found") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid TOML: {e}") from None
    sections = Config.field_sections()
    flat: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, dict) and key in Config.SECTIONS:
            for k, v in value.items():
                if sections.get(k) != key:
                    raise UserError(f"{path}: unknown key '{k}' in [{key}]")
                flat[k] = v
        elif key.replace("-", "_") in sections:
            flat[key.replace("-", "_")] = value
        else:
            raise UserError(f"{path}: unknown key '{key}' (expected one of: "
                            f"{', '.join(sorted(sections))})")
    # Types now, so that the error names this file even when a flag is merged in later.
    hints = {k: v for klass in Config.section_classes().values()
             for k, v in typing.get_type_hints(klass).items()}
    return {k: _typed(str(path), k, v, hints[k]) for k, v in flat.items()}


def build_config(file_values: dict[str, Any], flag_values: dict[str, Any],
                 file_name: str | None = None) -> Config:
    """Defaults <- TOML file values <- explicit flags (``None`` flags are ignored)."""
    merged = dict(file_values)
    merged.update({k: v for k, v in flag_values.items() if v is not None})
    return Config().replace(source=file_name or "configuration", **merged)
