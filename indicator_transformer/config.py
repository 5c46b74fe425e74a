"""Configuration: one small dataclass per component, each checked in ``__post_init__``.

Values come from defaults, then an optional TOML file (``--config FILE``, flat keys named like the
command-line flags with ``_`` for ``-``, or in sections ``[data]`` ``[features]`` ``[model]``
``[train]``), then explicit flags. Every field has a flag of the same name (``train_frac`` /
``--train-frac``); :func:`to_toml` writes the whole configuration back as such a file.

Declared features (``custom_features``, a list of tables: any TA-Lib function, its parameters, its
OHLCV inputs and a transform; ``data/features.py`` checks them) are stored in canonical form, every
parameter spelt out. When a file or flag declares features but names no ``features`` list, the
declared ones are added to the default list; when ``features`` is given, it is exactly the list.

Every bad value raises :class:`ConfigError` (a :class:`UserError`) naming where the value came
from (the file, the flag, the checkpoint), the key, and what was expected - whatever the value:
TOML and a checkpoint's ``config`` dict can hold NaN, infinities, huge integers, booleans, empty
strings and lists.

Bounds (inclusive unless noted). Lower bounds are what the code needs; upper bounds only refuse
values that are absurd and would otherwise end deep inside NumPy/torch in a traceback or an
out-of-memory kill, never a setting someone could mean:

    symbols 1..100_000, bars 1..10_000_000 (synthetic market: symbols x bars <= 10**9)
    data_seed, seed 0 <= s < 2**63           prep_workers 1..256, num_workers 0..256
    horizon 1..100_000, window 2..8192       train_frac, val_frac in (0, 1), sum < 1
    split auto, global or per-symbol          normalise per-symbol or global
    train_start, val_start, test_start, test_end: not set, or an ISO date/time (UTC, years
    1678..2261) for every symbol, or per symbol SYM=DATE,...,*=DATE; the others need test_start,
    and where two apply to one symbol they come in the order train_start < val_start < test_start
    < test_end
    d_model 1..8192, heads 1..256 (divides d_model), layers 1..256, ff_mult 1..64,
    dropout in [0, 1), model parameters <= 10**9
    custom_features: see data/features.py (zscore window 2..5000)
    epochs 1..1_000_000, batch_size 1..65_536, lr in (0, 1], weight_decay in [0, 1],
    grad_clip > 0, warmup_steps and checkpoint_every 0..10**9, keep 2..1_000_000, cost_bps 0..10_000,
    precision fp32 or bf16, threads 0..1024 (0: torch's default)
    every float finite; paths (data_dir, cache_dir, models_dir) non-blank, without NUL characters,
    at most 4096 characters (PATH_MAX) and four different folders (runs_dir too); device auto, cpu,
    cuda or cuda:N
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import math
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .cutoffs import ANY_SYMBOL, canonical_cuts, cut_for, parse_cuts
from .errors import ConfigError, UserError

DEFAULT_FEATURES: tuple[str, ...] = (
    "ret_1", "ret_5", "ret_10", "ret_20", "hl_range", "body", "sma20_gap", "ema50_gap",
    "rsi_14", "macd", "macd_signal", "macd_hist", "roc_10", "stoch_k", "stoch_d", "cci_20",
    "willr_14", "mfi_14", "adx_14", "di_spread", "atr_14", "bb_pos", "bb_width", "obv_chg",
    "volume_z",
)

SPLIT_POLICIES = ("auto", "global", "per-symbol")
DATE_KEYS = ("train_start", "val_start", "test_start", "test_end")  # in calendar order
NORMALISATIONS = ("per-symbol", "global")
PRECISIONS = ("fp32", "bf16")
SEED_LIMIT = 2**63  # seeds are 0 <= s < 2**63: what torch.manual_seed and NumPy's SeedSequence take
MAX_PARAMETERS = 10**9  # beyond this the weights and AdamW state alone need more than 16 GB
MAX_SYNTHETIC_BARS = 10**9  # symbols x bars of the built-in market


def _short(value: Any, limit: int = 80) -> str:
    """``repr`` cut to one short line: a damaged checkpoint can hold a megabyte-long string."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _type_name(t: Any) -> str:
    if t is type(None):
        return "null"
    if typing.get_origin(t) is list:
        inner = typing.get_args(t)[0]
        return "a list of tables" if inner is dict else f"a list of {inner.__name__}"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(t, str(t))


def _typed(key: str, value: Any, hint: Any) -> Any:
    """``value`` if it has the field's type (an int is accepted for a float), else a ConfigError
    naming the key: ``8.5`` layers must not become a traceback. Floats must be finite: NaN passes
    every ``<``/``>`` check and an infinity is never a meaningful setting."""
    allowed = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) \
        else (hint,)
    for t in allowed:
        if t is type(None) and value is None:
            return value
        if t is float and isinstance(value, int | float) and not isinstance(value, bool):
            try:
                number = float(value)
            except OverflowError:  # an int beyond the float range (10**400)
                number = math.inf
            if not math.isfinite(number):
                raise ConfigError(f"invalid value for '{key}': {_short(value)} (expected a finite number)",
                                  key)
            return number
        if t is int and isinstance(value, int) and not isinstance(value, bool):
            return int(value)
        if t in (str, bool) and isinstance(value, t):
            return value
        # An unquoted TOML date (test_start = 2016-01-01) is a date object: the date it says.
        if t is str and key in DATE_KEYS and isinstance(value, datetime.date | datetime.datetime):
            return value.isoformat()
        if typing.get_origin(t) is list and isinstance(value, list) \
                and all(isinstance(v, typing.get_args(t)[0]) for v in value):
            return list(value)
    expected = " or ".join(_type_name(t) for t in allowed)
    raise ConfigError(f"invalid value for '{key}': {_short(value)} (expected {expected})", key)


def _check(cond: bool, name: str, value: Any, expected: str) -> None:
    if not cond:
        raise ConfigError(f"invalid value for '{name}': {_short(value)} (expected {expected})", name)


def _check_int(obj: Any, name: str, low: int, high: int, expected: str = "") -> None:
    value = getattr(obj, name)
    _check(low <= value <= high, name, value, expected or f"an integer from {low:_} to {high:_}")


def _check_path(obj: Any, name: str, *, optional: bool = False) -> None:
    value = getattr(obj, name)
    if optional and value is None:
        return
    # An empty path is the current folder: `--cache-dir ""` would scatter files there.
    _check(value.strip() != "" and "\0" not in value and len(value) <= 4096, name, value,
           "a folder path that is not blank, has no NUL character and at most 4096 characters")


@functools.cache
def _hints(klass: type) -> dict[str, Any]:
    return typing.get_type_hints(klass)


class _Section:
    """Type-check every field (whatever built the object), then run the section's own checks."""

    def __post_init__(self) -> None:
        hints = _hints(type(self))
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            setattr(self, f.name, _typed(f.name, getattr(self, f.name), hints[f.name]))
        self.validate()

    def validate(self) -> None:  # pragma: no cover - every section overrides it
        """Range and consistency checks; raise ConfigError naming the key."""


MAX_EPOCHS = 1_000_000
MAX_BATCH_BYTES = 2 * 2**30  # one input batch in memory


@dataclass
class DataConfig(_Section):
    """Where OHLCV comes from and where its features are cached."""

    data_dir: str | None = None          # None (and no data_file): the built-in synthetic market
    data_file: str | None = None         # one panel file (long format, a symbol column)
    symbols: int = 16                    # synthetic market size
    bars: int = 2500
    data_seed: int = 7
    skip_bad_files: bool = False
    use_adj_close: bool = False
    cache_dir: str = "cache"
    prep_workers: int = 2

    def validate(self) -> None:
        """See the module docstring for the bounds."""
        _check_path(self, "data_dir", optional=True)
        _check_path(self, "data_file", optional=True)
        _check(self.data_dir is None or self.data_file is None, "data_file", self.data_file,
               f"either data_dir or data_file, not both (data_dir = {self.data_dir})")
        _check_path(self, "cache_dir")
        _check_int(self, "symbols", 1, 100_000)
        _check_int(self, "bars", 1, 10_000_000)
        _check(self.symbols * self.bars <= MAX_SYNTHETIC_BARS, "bars", self.bars,
               f"symbols x bars <= {MAX_SYNTHETIC_BARS:_} (symbols = {self.symbols})")
        _check_int(self, "data_seed", 0, SEED_LIMIT - 1, "an integer with 0 <= data_seed < 2**63")
        _check_int(self, "prep_workers", 1, 256)


@dataclass
class FeatureConfig(_Section):
    """Which indicators, the label horizon and the window length."""

    features: list[str] = field(default_factory=lambda: list(DEFAULT_FEATURES))
    custom_features: list[dict] = field(default_factory=list)  # declared TA-Lib features
    horizon: int = 1
    window: int = 32
    train_frac: float = 0.70
    val_frac: float = 0.15
    split: str = "auto"              # auto | global | per-symbol (data/windows.py)
    # Date cuts (see parse_cuts): when set they replace train_frac/val_frac and the split
    # policy; the purge gap of horizon bars stays. None: not set.
    val_start: str | None = None
    test_start: str | None = None
    # Bounds of a walk-forward fold: training starts at train_start (a rolling window), the test
    # split's windows end before test_end (the next fold's test period).
    train_start: str | None = None
    test_end: str | None = None
    normalise: str = "per-symbol"    # per-symbol | global statistics, fitted on training rows

    def validate(self) -> None:
        """See the module docstring for the bounds."""
        from .data.features import FEATURES, declare  # the registry owns the names

        self.custom_features = declare(self.custom_features)  # canonical: every parameter spelt out
        declared = [d["name"] for d in self.custom_features]
        _check(len(self.features) >= 1, "features", self.features, "at least one feature")
        unknown = [f for f in self.features if f not in FEATURES and f not in declared]
        _check(not unknown, "features", unknown,
               f"built-in names from: {', '.join(sorted(FEATURES))}; or names declared in "
               f"custom_features: {', '.join(declared) or '(none declared)'}")
        _check(len(set(self.features)) == len(self.features), "features", self.features,
               "no duplicates")
        _check_int(self, "horizon", 1, 100_000)
        _check_int(self, "window", 2, 8192)
        _check(0 < self.train_frac < 1, "train_frac", self.train_frac, "a fraction in (0, 1)")
        _check(0 < self.val_frac < 1 and self.train_frac + self.val_frac < 1, "val_frac",
               self.val_frac, "a fraction in (0, 1) with train_frac + val_frac < 1")
        _check(self.split in SPLIT_POLICIES, "split", self.split, " or ".join(SPLIT_POLICIES))
        # Date cuts: canonical text, then the rule that validation comes before test everywhere.
        for key in DATE_KEYS:
            if getattr(self, key) is not None:
                setattr(self, key, canonical_cuts(getattr(self, key), key))
        for key, why in (("val_start", "validation runs from val_start to test_start"),
                         ("train_start", "training runs from train_start to the validation split"),
                         ("test_end", "the test split runs from test_start to test_end")):
            _check(getattr(self, key) is None or self.test_start is not None, key, getattr(self, key),
                   f"to be given with test_start ({why}); or give test_start alone")
        _check_cut_order(self)
        _check(self.normalise in NORMALISATIONS, "normalise", self.normalise, " or ".join(NORMALISATIONS))


def _check_cut_order(f: FeatureConfig) -> None:
    """Every pair of date cuts that applies to one symbol comes in calendar order (DATE_KEYS): the
    error names the earlier key of the first pair out of order, the later one and the symbol."""
    given = [(k, parse_cuts(getattr(f, k), k)) for k in DATE_KEYS if getattr(f, k) is not None]
    names = sorted({n for _, cuts in given for n in cuts})
    for i, (early, a) in enumerate(given):
        for late, b in given[i + 1:]:
            for name in names:
                x = cut_for(a, name, early) if name in a or ANY_SYMBOL in a else None
                y = cut_for(b, name, late) if name in b or ANY_SYMBOL in b else None
                _check(x is None or y is None or x < y, early, getattr(f, early),
                       f"a date before {late} for {'every symbol' if name == ANY_SYMBOL else name} "
                       f"({late} {getattr(f, late)})")


@dataclass
class ModelConfig(_Section):
    """Transformer encoder size."""

    # Tuned on the built-in market (benchmarks/tune_results.md): 32 wide and 1 layer matched 64 x 2
    # on validation loss over three seeds, with 7x fewer parameters and 2.5x less time.
    d_model: int = 32
    heads: int = 4
    layers: int = 1
    dropout: float = 0.1
    ff_mult: int = 2

    def validate(self) -> None:
        """See the module docstring for the bounds."""
        _check_int(self, "d_model", 1, 8192)
        _check_int(self, "heads", 1, 256)
        _check(self.d_model % self.heads == 0, "heads", self.heads,
               f"a divisor of d_model={self.d_model}")
        _check_int(self, "layers", 1, 256)
        _check(0.0 <= self.dropout < 1.0, "dropout", self.dropout, "a number in [0, 1)")
        _check_int(self, "ff_mult", 1, 64)
        params = self.encoder_parameters()
        _check(params <= MAX_PARAMETERS, "d_model", self.d_model,
               f"a model of at most {MAX_PARAMETERS:_} parameters; d_model={self.d_model}, "
               f"layers={self.layers}, ff_mult={self.ff_mult} make {params:_}")

    def encoder_parameters(self) -> int:
        """Parameters of the encoder layers (what dominates the model's size)."""
        d, f = self.d_model, self.ff_mult
        attention = 4 * d * d + 4 * d
        feed_forward = 2 * f * d * d + f * d + d
        return self.layers * (attention + feed_forward + 4 * d)


_DEVICE = re.compile(r"auto|cpu|cuda(:[0-9]+)?")


@dataclass
class TrainConfig(_Section):
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
    runs_dir: str | None = None      # None: "runs" beside models_dir (runlog.py)
    cost_bps: float = 0.0            # trading cost in the report's strategy figures
    # Arithmetic of the training step: fp32, or bf16 autocast (matrix products in bfloat16, the
    # loss, optimizer and weights in fp32). Validation and test always run in fp32.
    precision: str = "fp32"
    # Intra-op threads of the training process (0: torch's default, the cores or OMP_NUM_THREADS).
    threads: int = 0

    def validate(self) -> None:
        """See the module docstring for the bounds."""
        _check_int(self, "epochs", 1, MAX_EPOCHS)
        _check_int(self, "batch_size", 1, 65_536)
        _check(0 < self.lr <= 1, "lr", self.lr, "a number in (0, 1]")
        _check(0 <= self.weight_decay <= 1, "weight_decay", self.weight_decay, "a number in [0, 1]")
        _check_int(self, "warmup_steps", 0, 10**9)
        _check(self.grad_clip > 0, "grad_clip", self.grad_clip, "a number > 0")
        _check_int(self, "seed", 0, SEED_LIMIT - 1, "an integer with 0 <= seed < 2**63")
        _check(_DEVICE.fullmatch(self.device) is not None, "device", self.device,
               "auto, cpu, cuda or cuda:N")
        _check_int(self, "num_workers", 0, 256)
        _check_path(self, "models_dir")
        _check_int(self, "checkpoint_every", 0, 10**9,
                   "an integer from 0 (only at epoch end) to 1_000_000_000")
        _check_int(self, "keep", 2, 1_000_000)
        _check_path(self, "runs_dir", optional=True)
        _check(0 <= self.cost_bps <= 10_000, "cost_bps", self.cost_bps,
               "a number of basis points in [0, 10000]")
        self.cost_bps = float(self.cost_bps) + 0.0  # -0.0 -> 0.0: printed as it was meant
        _check(self.precision in PRECISIONS, "precision", self.precision, " or ".join(PRECISIONS))
        _check_int(self, "threads", 0, 1024, "an integer from 0 (torch's default) to 1024")


def _same_folder(a: str, b: str) -> bool:
    """One folder under two names: the same path, or links to one (``ln -s cache m``)."""
    return any(os.path.normcase(f(a)) == os.path.normcase(f(b)) for f in (os.path.abspath, os.path.realpath))


@dataclass
class Config:
    """The whole run configuration, saved in every checkpoint."""

    data: DataConfig = field(default_factory=DataConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    SECTIONS = ("data", "features", "model", "train")

    def __post_init__(self) -> None:
        for name, klass in self.section_classes().items():
            part = getattr(self, name)
            if not isinstance(part, klass):
                raise ConfigError(f"section [{name}] must be a {klass.__name__}, got {_short(part)}")
        # Four roles, four folders: the cache would litter a data folder with .npy files that the
        # next run reads as input, and checkpoints inside the cache make it look foreign.
        # runs_dir unset is "runs" beside the models folder (runlog.runs_dir_for): that one counts.
        paths = [("data_dir", self.data.data_dir), ("cache_dir", self.data.cache_dir),
                 ("models_dir", self.train.models_dir), ("runs_dir", self.train.runs_dir)]
        if self.train.runs_dir is None:  # first, so that the error names the setting that was given
            beside = os.path.join(os.path.dirname(os.path.abspath(self.train.models_dir)), "runs")
            paths.insert(0, ("the runs folder beside models_dir", beside))
        for i, (key_a, a) in enumerate(paths):
            for key_b, b in paths[i + 1:]:
                _check(a is None or b is None or not _same_folder(a, b), key_b, b,
                       f"a folder other than {key_a} ({a})")
        # Each bound alone is sane, but together they can ask for one batch larger than memory: the
        # input batch is (batch, window, features) float32, evaluation batches hold 1024 windows.
        per_batch = max(self.train.batch_size, 1024) * self.features.window * len(self.features.features) * 4
        _check(per_batch <= MAX_BATCH_BYTES, "batch_size", self.train.batch_size,
               f"a batch of at most {MAX_BATCH_BYTES // 2**30} GiB: max(batch_size, 1024) x window "
               f"{self.features.window} x {len(self.features.features)} features x 4 bytes is "
               f"{per_batch / 2**30:.1f} GiB (lower --batch-size or --window)")

    @staticmethod
    def section_classes() -> dict[str, type]:
        """Section name -> its dataclass, in file order."""
        return {"data": DataConfig, "features": FeatureConfig, "model": ModelConfig,
                "train": TrainConfig}

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Plain nested dict (JSON/TOML/checkpoint friendly)."""
        return {s: dataclasses.asdict(getattr(self, s)) for s in self.SECTIONS}

    @classmethod
    def from_dict(cls, d: Any, *, source: str = "config",
                  origins: Mapping[str, str] | None = None) -> Config:
        """Rebuild from :meth:`to_dict` output, which may come from a damaged file.

        Anything else than four tables of exactly the known keys with valid values is a
        :class:`ConfigError` naming ``source`` (or ``origins[key]``, where a key came from
        elsewhere: a flag) and the section or key; never another exception.
        """
        origins = origins or {}
        if not isinstance(d, dict):
            raise ConfigError(f"expected a table of the sections {', '.join(cls.SECTIONS)}, got "
                              f"{_short(d)}", source=source)
        extra = [k for k in d if k not in cls.SECTIONS]
        if extra:
            raise ConfigError(f"unknown section(s): {', '.join(_short(k) for k in extra)}", source=source)
        parts = {}
        try:
            for name, klass in cls.section_classes().items():
                parts[name] = klass(**_section_values(d, name, klass))
            return cls(**parts)
        except ConfigError as e:
            raise e.at(origins.get(e.key, source) if e.key else source) from None

    @classmethod
    def field_sections(cls) -> dict[str, str]:
        """Flat key -> section name, for flags and flat TOML files."""
        out = {}
        for name, klass in cls.section_classes().items():
            for f in dataclasses.fields(klass):
                out[f.name] = name
        return out

    def replace(self, source: str = "configuration", origins: Mapping[str, str] | None = None,
                **flat: Any) -> Config:
        """A copy with flat keys (``epochs=3``, ``d_model=32``) replaced and re-validated; errors
        name ``origins[key]`` when given for that key, else ``source``."""
        sections = self.field_sections()
        d = self.to_dict()
        for key, value in flat.items():
            if key not in sections:
                raise ConfigError(f"unknown configuration key '{key}'",
                                  source=(origins or {}).get(key, source))
            d[sections[key]][key] = value
        return Config.from_dict(d, source=source, origins=origins)


# Keys added after checkpoints were first written, with the value that behaved as before: an older
# checkpoint (or a saved configuration) without them still loads. Any other missing key is damage.
ADDED_LATER: dict[str, dict[str, Any]] = {"data": {"data_file": None},
                                          "features": {"custom_features": [], "val_start": None,
                                                       "test_start": None, "train_start": None,
                                                       "test_end": None},
                                          "train": {"precision": "fp32", "threads": 0}}


def _section_values(d: dict[Any, Any], name: str, klass: type) -> dict[str, Any]:
    """The keyword arguments of section ``name``, or a ConfigError on a damaged structure."""
    if name not in d:
        raise ConfigError(f"section [{name}] is missing")
    values = d[name]
    if not isinstance(values, dict):
        raise ConfigError(f"section [{name}] must be a table of settings, got {_short(values)}")
    odd = [k for k in values if not isinstance(k, str)]
    if odd:
        raise ConfigError(f"section [{name}] has a key that is not a string: {_short(odd[0])}")
    known = {f.name for f in dataclasses.fields(klass)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown key(s) in [{name}]: {', '.join(_short(k) for k in unknown)}")
    values = {**ADDED_LATER.get(name, {}), **values}
    missing = sorted(known - set(values))
    if missing:
        raise ConfigError(f"section [{name}] is missing key(s): {', '.join(missing)}")
    return dict(values)


# Command-line switches that are not saved settings, and why a config file cannot hold them.
SWITCHES: dict[str, str] = {
    "no_progress": "how one invocation shows its progress is not part of the run",
    "no_plots": "whether one invocation draws its plots is not part of the run",
    "save_predictions": "whether one invocation writes predictions.csv is not part of the run",
    "prepare_only": "it says what one invocation does (stop after preparing), not how to train",
    "config": "a config file cannot name another one",
    "list": "it lists checkpoints instead of training",
    "checkpoint": "which checkpoint to resume from belongs to the resume command line",
    "allow_data_change": "accepting changed data is a decision for one resume, not a setting",
    "show": "it belongs to the config command",
    "resume": "continuing an earlier run is a decision for one invocation (--resume auto), not a setting",
}


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a flat TOML config file (keys named like the flags, ``_`` or ``-``).

    Sections ``[data]``, ``[features]``, ``[model]``, ``[train]`` are accepted too and flattened.
    A key given twice (``batch-size`` and ``batch_size``, or flat and in its section) is an error.
    """
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: config file not found") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a folder, expected a TOML config file") from None
    except OSError as e:  # permission denied, a device, an I/O error...
        raise UserError(f"{path}: cannot read the config file ({e.strerror or e})") from None
    except ValueError as e:  # a NUL in the name (ValueError), bad TOML, not UTF-8 (both subclasses)
        raise UserError(f"{path}: not a valid TOML config file: {e}") from None
    sections = Config.field_sections()
    flat: dict[str, Any] = {}

    def put(key: str, value: Any, where: str) -> None:
        if key in flat:
            raise UserError(f"{path}: '{key}' is given twice{where}")
        flat[key] = value

    def refuse_switch(key: str, where: str = "") -> None:
        name = key.replace("-", "_")
        if name in SWITCHES:
            raise UserError(f"{path}: '{key}'{where} is a command-line switch ({flag_name(name)}), not a "
                            f"setting: {SWITCHES[name]}. A config file holds only the settings saved with "
                            f"a run (`indicator-transformer config --show` prints them); pass "
                            f"{flag_name(name)} on the command line")

    for key, value in raw.items():
        name = key.replace("-", "_")
        if name in COMMAND_SECTIONS:  # read by its own command (load_command_section)
            continue
        if key in Config.SECTIONS and isinstance(value, dict):
            for k, v in value.items():
                owner = sections.get(k.replace("-", "_"))
                if owner != key:
                    refuse_switch(k, f" in [{key}]")
                    raise UserError(f"{path}: unknown key '{k}' in [{key}]"
                                    + (f" (it belongs in [{owner}])" if owner else
                                       f" (the keys of [{key}] are: "
                                       f"{', '.join(sorted(n for n, o in sections.items() if o == key))})"))
                put(k.replace("-", "_"), v, f" (again in [{key}])")
        elif name in sections:  # before the next test: `features` is a key and a section
            put(name, value, "")
        elif key in Config.SECTIONS:
            raise UserError(f"{path}: [{key}] must be a table of settings, got {_short(value)}")
        elif isinstance(value, dict):
            raise UserError(f"{path}: unknown section [{key}] (the sections are "
                            f"{', '.join(f'[{n}]' for n in Config.SECTIONS)}; settings may also be "
                            f"written flat, outside any section)")
        else:
            refuse_switch(key)
            raise UserError(f"{path}: unknown key '{key}' (expected one of: "
                            f"{', '.join(sorted(sections))})")
    # Types now, so that the error names this file even before the values are merged.
    hints = {k: v for klass in Config.section_classes().values() for k, v in _hints(klass).items()}
    try:
        return {k: _typed(k, v, hints[k]) for k, v in flat.items()}
    except ConfigError as e:
        raise e.at(str(path)) from None


# Sections of a config file that belong to one command's own flags, not to the run settings:
# every command accepts the file, the named command reads the section.
COMMAND_SECTIONS = ("walk_forward",)


def load_command_section(path: str | Path, section: str, keys: dict[str, type | tuple[type, ...]]
                         ) -> dict[str, Any]:
    """``[section]`` of the TOML file ``path`` (``walk_forward`` or ``walk-forward``), its keys
    named like the command's flags (``_`` or ``-``) and checked against ``keys`` (name -> the
    accepted TOML types); {} when the file has no such section. The file as a whole is checked by
    :func:`load_toml`, which the caller runs too."""
    raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    found = [k for k in raw if k.replace("-", "_") == section]
    if len(found) > 1:
        raise UserError(f"{path}: [{section}] is given twice ({' and '.join(found)})")
    if not found:
        return {}
    table = raw[found[0]]
    if not isinstance(table, dict):
        raise UserError(f"{path}: [{found[0]}] must be a table of settings, got {_short(table)}")
    out: dict[str, Any] = {}
    for k, v in table.items():
        name = k.replace("-", "_")
        if name not in keys:
            raise UserError(f"{path}: unknown key '{k}' in [{found[0]}] (its keys are: "
                            f"{', '.join(sorted(keys))})")
        if name in out:
            raise UserError(f"{path}: '{k}' is given twice in [{found[0]}]")
        want = keys[name]
        if isinstance(v, bool) and bool not in (want if isinstance(want, tuple) else (want,)) \
                or not isinstance(v, want):
            names = " or ".join(t.__name__ for t in (want if isinstance(want, tuple) else (want,)))
            raise UserError(f"{path}: [{found[0]}] {k} = {_short(v)}: expected {names}")
        out[name] = v
    return out


def flag_name(key: str) -> str:
    """The command-line flag of configuration key ``key``: ``batch_size`` -> ``--batch-size``."""
    return "--" + key.replace("_", "-")


def build_config(file_values: dict[str, Any], flag_values: dict[str, Any],
                 file_name: str | None = None) -> Config:
    """Defaults <- TOML file values <- explicit flags (``None`` flags are ignored).

    A bad value is reported against where it came from: the flag, else the file."""
    flags = {k: v for k, v in flag_values.items() if v is not None}
    origins = {k: file_name for k in file_values} if file_name else {}
    origins.update({k: flag_name(k) for k in flags})
    merged = dict(file_values)
    merged.update(flags)
    if "features" not in merged and isinstance(merged.get("custom_features"), list):
        # Declared but no list given: use them, beside the defaults. A declaration is made to be used.
        declared = [d.get("name") for d in merged["custom_features"] if isinstance(d, dict)]
        merged["features"] = list(DEFAULT_FEATURES) + [n for n in declared if n not in DEFAULT_FEATURES]
        origins.setdefault("features", origins.get("custom_features", file_name or "configuration"))
    return Config().replace(source=file_name or "configuration", origins=origins, **merged)


# --------------------------------------------------------------------------- writing TOML
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _toml_string(text: str) -> str:
    out = []
    for ch in text:
        code = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\u{code:04x}")
        elif 0xD800 <= code <= 0xDFFF:  # a name decoded with surrogateescape: not valid TOML
            raise ConfigError(f"{_short(text)} cannot be written as TOML (it is not valid UTF-8)")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def setting_text(value: Any) -> str:
    """A setting's value for a message: its TOML text, or "not set" for an optional setting
    that is unset (TOML has no null)."""
    return "not set" if value is None else toml_value(value)


def toml_value(value: Any) -> str:
    """``value`` (a setting or a part of one) as TOML text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)  # shortest text that reads back to the same float; always finite here
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k if _BARE_KEY.fullmatch(k) else _toml_string(k)} = {toml_value(v)}"
                               for k, v in value.items()) + "}"
    raise ConfigError(f"{_short(value)} cannot be written as TOML")


def to_toml(cfg: Config) -> str:
    """The whole configuration as a TOML file that ``--config`` reads back to an equal Config:
    one section per component, every key (an unset optional one as a comment)."""
    lines = ["# indicator-transformer configuration (defaults, file and flags merged).",
             "# Use it with --config FILE; every key also has a flag of the same name (--batch-size)."]
    for name, klass in Config.section_classes().items():
        part = getattr(cfg, name)
        lines += ["", f"[{name}]"]
        for f in dataclasses.fields(klass):
            value = getattr(part, f.name)
            if value is None:
                lines.append(f"# {f.name} is not set (TOML has no null)")
            elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
                lines += [f"{f.name} = ["] + [f"    {toml_value(v)}," for v in value] + ["]"]
            else:
                lines.append(f"{f.name} = {toml_value(value)}")
    return "\n".join(lines) + "\n"
