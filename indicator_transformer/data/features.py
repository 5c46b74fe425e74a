"""TA-Lib indicator features, expressed as stationary quantities, and the forward-return label.

Every feature at bar t is computed by TA-Lib from bars <= t only (TA-Lib indicators are causal),
then scaled to a ratio, a return or a bounded oscillator - never a raw price level - so that the
model sees the same distribution whatever the price of the symbol. Rows before every feature is
defined (the indicator warm-up) are dropped.

Besides the built-in registry ``FEATURES``, a configuration may declare its own features
(``FeatureConfig.custom_features``): any TA-Lib function with its parameters, the OHLCV columns it
reads and a transform from ``TRANSFORMS`` that makes its output scale-free. :func:`declare` checks a
declaration and returns its canonical form (every parameter spelt out), which is what the
configuration stores and the cache key hashes. Every function that takes feature names takes the
declarations too (``custom``).

Bump FEATURE_CODE_VERSION whenever a formula changes (a built-in one or a transform): it is part of
every cache key.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import talib
import talib.abstract

from ..errors import ConfigError, UserError
from .ohlcv import OHLCV
from .synthetic import synthetic_symbol

FEATURE_CODE_VERSION = 1


class _TA:
    """TA-Lib, with each call made once per symbol: MACD feeds three features, Bollinger bands,
    the stochastic and the directional indicators two each. Fewer calls is less time holding the
    GIL, which is what limits preparation threads."""

    def __init__(self) -> None:
        self._results: dict[tuple, Any] = {}

    def __getattr__(self, name: str) -> Callable[..., Any]:
        fn = getattr(talib, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            # Arrays by identity: they are the same OHLCV columns for the whole symbol.
            key = (name, *(id(a) if isinstance(a, np.ndarray) else a for a in args),
                   *sorted(kwargs.items()))
            if key not in self._results:
                self._results[key] = fn(*args, **kwargs)
            return self._results[key]

        return call


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a / b with 0 where b is (near) zero: a flat volume or range must not create an inf."""
    out = np.zeros_like(a, dtype=np.float64)
    ok = np.abs(b) > 1e-12
    np.divide(a, b, out=out, where=ok)
    out[np.isnan(a) | np.isnan(b)] = np.nan
    return out


def _logret(c: np.ndarray, n: int) -> np.ndarray:
    out = np.full_like(c, np.nan)
    out[n:] = np.log(c[n:] / c[:-n])
    return out


def _macd(x: OHLCV, ta: _TA, which: int) -> np.ndarray:
    parts = ta.MACD(x.close, fastperiod=12, slowperiod=26, signalperiod=9)
    return parts[which] / x.close


def _bbands(x: OHLCV, ta: _TA) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return ta.BBANDS(x.close, timeperiod=20, nbdevup=2.0, nbdevdn=2.0)


def _bb_pos(x: OHLCV, ta: _TA) -> np.ndarray:
    up, mid, lo = _bbands(x, ta)
    return _div(x.close - mid, up - lo)


def _bb_width(x: OHLCV, ta: _TA) -> np.ndarray:
    up, mid, lo = _bbands(x, ta)
    return _div(up - lo, mid)


def _obv_chg(x: OHLCV, ta: _TA) -> np.ndarray:
    obv = ta.OBV(x.close, x.volume)
    chg = np.full_like(obv, np.nan)
    chg[5:] = obv[5:] - obv[:-5]
    return _div(chg, 5.0 * ta.SMA(x.volume, 20))


def _volume_z(x: OHLCV, ta: _TA) -> np.ndarray:
    return _div(x.volume - ta.SMA(x.volume, 20), ta.STDDEV(x.volume, 20))


C, HLC = ("close",), ("high", "low", "close")


@dataclass(frozen=True)
class Feature:
    family: str
    fn: Callable[[OHLCV, _TA], np.ndarray]
    doc: str
    inputs: tuple[str, ...] = C   # the OHLCV columns it reads


FEATURES: dict[str, Feature] = {
    "ret_1": Feature("returns", lambda x, ta: _logret(x.close, 1), "log return over 1 bar"),
    "ret_5": Feature("returns", lambda x, ta: _logret(x.close, 5), "log return over 5 bars"),
    "ret_10": Feature("returns", lambda x, ta: _logret(x.close, 10), "log return over 10 bars"),
    "ret_20": Feature("returns", lambda x, ta: _logret(x.close, 20), "log return over 20 bars"),
    "hl_range": Feature("volatility", lambda x, ta: (x.high - x.low) / x.close, "(high-low)/close", HLC),
    "body": Feature("trend", lambda x, ta: (x.close - x.open) / x.close, "(close-open)/close",
                    ("open", "close")),
    "sma20_gap": Feature("trend", lambda x, ta: x.close / ta.SMA(x.close, 20) - 1, "close/SMA20 - 1"),
    "ema50_gap": Feature("trend", lambda x, ta: x.close / ta.EMA(x.close, 50) - 1, "close/EMA50 - 1"),
    "rsi_14": Feature("momentum", lambda x, ta: ta.RSI(x.close, 14) / 100 - 0.5, "RSI(14)/100 - 0.5"),
    "macd": Feature("trend", lambda x, ta: _macd(x, ta, 0), "MACD(12,26)/close"),
    "macd_signal": Feature("trend", lambda x, ta: _macd(x, ta, 1), "MACD signal(9)/close"),
    "macd_hist": Feature("trend", lambda x, ta: _macd(x, ta, 2), "MACD histogram/close"),
    "roc_10": Feature("momentum", lambda x, ta: ta.ROC(x.close, 10) / 100, "ROC(10)/100"),
    "stoch_k": Feature("momentum", lambda x, ta: ta.STOCH(x.high, x.low, x.close)[0] / 100 - 0.5,
                       "slow %K(14,3)/100 - 0.5", HLC),
    "stoch_d": Feature("momentum", lambda x, ta: ta.STOCH(x.high, x.low, x.close)[1] / 100 - 0.5,
                       "slow %D(3)/100 - 0.5", HLC),
    "cci_20": Feature("momentum", lambda x, ta: ta.CCI(x.high, x.low, x.close, 20) / 100, "CCI(20)/100", HLC),
    "willr_14": Feature("momentum", lambda x, ta: ta.WILLR(x.high, x.low, x.close, 14) / 100 + 0.5,
                        "Williams %R(14)/100 + 0.5", HLC),
    "mfi_14": Feature("volume", lambda x, ta: ta.MFI(x.high, x.low, x.close, x.volume, 14) / 100 - 0.5,
                      "MFI(14)/100 - 0.5", (*HLC, "volume")),
    "adx_14": Feature("trend", lambda x, ta: ta.ADX(x.high, x.low, x.close, 14) / 100, "ADX(14)/100", HLC),
    "di_spread": Feature("trend", lambda x, ta: (ta.PLUS_DI(x.high, x.low, x.close, 14)
                                             - ta.MINUS_DI(x.high, x.low, x.close, 14)) / 100,
                         "(+DI - -DI)(14)/100", HLC),
    "atr_14": Feature("volatility", lambda x, ta: ta.ATR(x.high, x.low, x.close, 14) / x.close,
                      "ATR(14)/close", HLC),
    "bb_pos": Feature("volatility", _bb_pos, "(close - BB mid)/(BB upper - BB lower), BB(20, 2)"),
    "bb_width": Feature("volatility", _bb_width, "(BB upper - BB lower)/BB mid, BB(20, 2)"),
    "obv_chg": Feature("volume", _obv_chg, "5-bar OBV change / (5 x SMA20 volume)",
                       ("close", "volume")),
    "volume_z": Feature("volume", _volume_z, "volume z-score over 20 bars", ("volume",)),
}


@dataclass(frozen=True)
class FeatureSet:
    """One symbol's features after warm-up. ``label[t]`` is NaN where t + horizon is past the end."""

    features: np.ndarray   # (T, F) float32
    label: np.ndarray      # (T,) float32, forward log return over the horizon
    time: np.ndarray       # (T,) int64 ns


def forward_return(close: np.ndarray, horizon: int) -> np.ndarray:
    """log(close[t + h] / close[t]); NaN for the last h bars. Kept apart from the features."""
    out = np.full(close.shape, np.nan)
    if len(close) > horizon:
        out[:-horizon] = np.log(close[horizon:] / close[:-horizon])
    return out


# --------------------------------------------------------------------------- declared features
OHLCV_COLUMNS = ("open", "high", "low", "close", "volume")
CUSTOM_KEY = "custom_features"  # the configuration key every declaration error names
ZSCORE_MAX_WINDOW = 5000  # the z-score costs window x bars per symbol; beyond this it is no longer cheap
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_INT32 = 2**31  # TA-Lib's integer parameters are C ints
_PROBE_BARS, _MAX_PROBE_BARS = 400, 2**19  # warm-up and scale checks on the synthetic market


@dataclass(frozen=True)
class Transform:
    """How a raw TA-Lib output becomes a scale-free, comparable-across-symbols value."""

    doc: str
    use: str
    apply: Callable[[np.ndarray, OHLCV, int | None], np.ndarray]
    windowed: bool = False


def _log_change(v: np.ndarray, x: OHLCV, window: int | None) -> np.ndarray:
    out = np.full_like(v, np.nan)
    prev, cur = v[:-1], v[1:]
    both = np.isfinite(prev) & np.isfinite(cur)
    ok = both & (prev > 0) & (cur > 0)
    # Guarded: a non-positive value has no log change; 0 keeps the row rather than a NaN hole.
    out[1:][both] = 0.0
    out[1:][ok] = np.log(cur[ok] / prev[ok])
    return out


def _zscore(v: np.ndarray, x: OHLCV, window: int | None) -> np.ndarray:
    """Rolling z-score over the last ``window`` bars (t included), each window computed exactly on
    its own values: causal, and independent of how much history precedes it."""
    assert window is not None
    out = np.full_like(v, np.nan)
    if len(v) < window:
        return out
    views = np.lib.stride_tricks.sliding_window_view(v, window)
    step = max(1, 4_000_000 // window)  # bounded temporary memory whatever the window
    for lo in range(0, len(views), step):
        w = views[lo:lo + step]
        mean = w.mean(axis=1)
        std = w.std(axis=1)
        # A flat window has no spread: 0, like the built-in volume z-score (never an inf).
        flat = std <= 1e-12 * np.maximum(np.abs(mean), 1.0)
        z = np.where(flat, 0.0, (v[window - 1 + lo: window - 1 + lo + len(w)] - mean)
                     / np.where(flat, 1.0, std))
        out[window - 1 + lo: window - 1 + lo + len(w)] = z
    return out


TRANSFORMS: dict[str, Transform] = {
    "ratio_close": Transform("value / close - 1", "outputs on the price scale: moving averages, "
                             "bands, SAR, price transforms (SMA, EMA, KAMA, BBANDS, SAR, TYPPRICE)",
                             lambda v, x, w: _div(v, x.close) - 1.0),
    "div_close": Transform("value / close", "price differences: MACD, APO, MOM, ATR, STDDEV, "
                           "LINEARREG_SLOPE", lambda v, x, w: _div(v, x.close)),
    "osc100": Transform("value / 100 - 0.5", "oscillators from 0 to 100: RSI, MFI, STOCH, ADX, "
                        "AROON, ULTOSC", lambda v, x, w: v / 100.0 - 0.5),
    "pct": Transform("value / 100", "percentages and +-100 outputs: ROC, PPO, CMO, WILLR, "
                     "candlestick patterns (CDL*)", lambda v, x, w: v / 100.0),
    "log_change": Transform("log(v[t] / v[t-1]), 0 where either is not positive",
                            "positive levels that trend: a price-scale or volume output you want as "
                            "a return", _log_change),
    "zscore": Transform("(v[t] - mean) / std over the last `window` bars, 0 when flat",
                        "unbounded levels: OBV, AD, ADOSC, HT_DCPERIOD", _zscore, windowed=True),
    "none": Transform("the value itself", "outputs that are already scale-free: CORREL, BETA, "
                      "ROCP, ROCR, BOP, HT_TRENDMODE", lambda v, x, w: v),
}


def _info(fn: str) -> dict[str, Any]:
    return talib.abstract.Function(fn).info


def _param_types(fn: str) -> dict[str, str]:
    """parameter -> 'integer' or 'number' (TA-Lib: real ranges are numbers, the rest C ints)."""
    local = talib.abstract.Function(fn)._Function__localdata.opt_inputs  # no public accessor
    return {k: "number" if p["type"] in (0, 1) else "integer" for k, p in local.items()}


def _default_inputs(info: Mapping[str, Any]) -> list[str]:
    out: list[str] = []
    for value in info["input_names"].values():
        out.extend(value if isinstance(value, list) else [value])
    return out


def talib_functions() -> dict[str, list[str]]:
    """TA-Lib's function groups: group -> function names."""
    return {g: list(fns) for g, fns in talib.get_function_groups().items()}


def describe_function(fn: str) -> dict[str, Any]:
    """What a declaration of ``fn`` may say: group, inputs, parameters with defaults and types,
    outputs, TA-Lib's flags. A UserError (naming close matches) when TA-Lib has no such function."""
    if fn.upper() not in talib.get_functions():
        raise UserError(f"--function {fn}: not a TA-Lib function{_suggest(fn)}")
    name = fn.upper()
    info = _info(name)
    types = _param_types(name)
    return {"name": name, "group": info["group"], "display_name": info["display_name"],
            "inputs": _default_inputs(info), "outputs": list(info["output_names"]),
            "parameters": {k: (v, types[k]) for k, v in info["parameters"].items()},
            "flags": list(info["function_flags"] or [])}


def _suggest(fn: Any) -> str:
    import difflib

    close = difflib.get_close_matches(str(fn).upper(), talib.get_functions(), n=3)
    return (f" (did you mean {', '.join(close)}?)" if close else "") + \
        "; `indicator-transformer features --talib` lists them"


# Functions whose output is a bar position counted from the first bar of the file: it grows without
# bound and changes when history is prepended, so no transform makes it a feature.
_POSITION_OUTPUTS = {"MAXINDEX": "AROON or AROONOSC", "MININDEX": "AROON or AROONOSC",
                     "MINMAXINDEX": "AROON or AROONOSC"}


def _function_name(fn: Any, label: str) -> str:
    if isinstance(fn, str) and fn.upper() in _POSITION_OUTPUTS:
        raise _bad(label, f"{fn.upper()} returns a bar position counted from the start of the data, "
                          f"which grows without bound and shifts when history is added; use "
                          f"{_POSITION_OUTPUTS[fn.upper()]} for where the high or low lies in a window")
    if isinstance(fn, str) and fn.upper() in talib.get_functions():
        return fn.upper()
    shown = json.dumps(fn) if isinstance(fn, str) else repr(fn)[:40]
    raise _bad(label, f"'fn' {shown} is not a TA-Lib function{_suggest(fn)}")


def _bad(label: str, detail: str) -> ConfigError:
    return ConfigError(f"invalid value for '{CUSTOM_KEY}': {label}: {detail}", CUSTOM_KEY)


_KEYS = ("name", "fn", "params", "inputs", "output", "transform", "window")


def _canonical(item: Any, index: int) -> dict[str, Any]:
    """One declaration checked and spelt out in full (every parameter, inputs, output)."""
    label = f"entry {index + 1}"
    if not isinstance(item, Mapping):
        raise _bad(label, f"expected a table such as {{name = \"rsi_7\", fn = \"RSI\", params = "
                          f"{{timeperiod = 7}}, inputs = [\"close\"], transform = \"osc100\"}}, got "
                          f"{repr(item)[:60]}")
    name = item.get("name")
    if not isinstance(name, str) or _NAME.fullmatch(name) is None:
        raise _bad(label, f"'name' {repr(name)[:60]} must be a name of letters, digits and _ "
                          f"(not starting with a digit, at most 64 characters)")
    label = f"feature '{name}'"
    unknown = sorted(str(k) for k in item if k not in _KEYS)
    if unknown:
        raise _bad(label, f"unknown key(s) {', '.join(unknown)} (expected: {', '.join(_KEYS)})")
    if name in FEATURES:
        raise _bad(label, f"'{name}' is a built-in feature; give the declared one another name")
    fn = _function_name(item.get("fn"), label)
    label = f"feature '{name}' ({fn})"
    info = _info(fn)
    out: dict[str, Any] = {"name": name, "fn": fn, "params": _params(item.get("params", {}), fn, info, label),
                           "inputs": _inputs(item.get("inputs"), info, label),
                           "output": _output(item.get("output"), info, label)}
    out.update(_transform(item.get("transform"), item.get("window"), label))
    return out


def _params(given: Any, fn: str, info: Mapping[str, Any], label: str) -> dict[str, int | float]:
    if not isinstance(given, Mapping):
        raise _bad(label, f"'params' must be a table such as {{timeperiod = 7}}, got {repr(given)[:60]}")
    defaults, types = dict(info["parameters"]), _param_types(fn)
    unknown = sorted(str(k) for k in given if k not in defaults)
    if unknown:
        raise _bad(label, f"unknown parameter(s) {', '.join(unknown)} (expected: "
                          f"{', '.join(defaults) or 'none, it takes no parameters'})")
    params: dict[str, int | float] = {}
    for key, default in defaults.items():
        value = given.get(key, default)
        integer = types[key] == "integer"
        kind = "an integer" if integer else "a number"
        if isinstance(value, bool) or not isinstance(value, int if integer else int | float):
            raise _bad(label, f"parameter '{key}' = {repr(value)[:40]} must be {kind}")
        if integer and not -_INT32 <= value < _INT32 or not integer and not math.isfinite(value):
            raise _bad(label, f"parameter '{key}' = {repr(value)[:40]} is out of range")
        params[key] = int(value) if integer else float(value)
    return params


def _inputs(given: Any, info: Mapping[str, Any], label: str) -> list[str]:
    default = _default_inputs(info)
    if given is None:
        if all(c in OHLCV_COLUMNS for c in default):
            return default
        raise _bad(label, f"'inputs' is needed: the function reads {', '.join(info['input_names'])}; "
                          f"name {len(default)} of {', '.join(OHLCV_COLUMNS)}")
    if not isinstance(given, list) or not all(isinstance(c, str) for c in given):
        raise _bad(label, f"'inputs' must be a list of column names, got {repr(given)[:60]}")
    wrong = [c for c in given if c not in OHLCV_COLUMNS]
    if wrong:
        raise _bad(label, f"input(s) {', '.join(repr(c)[:30] for c in wrong)} are not OHLCV columns "
                          f"(expected some of: {', '.join(OHLCV_COLUMNS)})")
    if len(given) != len(default):
        raise _bad(label, f"'inputs' names {len(given)} column(s), the function reads {len(default)} "
                          f"(by default: {', '.join(default)})")
    return list(given)


def _output(given: Any, info: Mapping[str, Any], label: str) -> str:
    names = list(info["output_names"])
    if given is None and len(names) == 1:
        return names[0]
    if given is None:
        raise _bad(label, f"the function has {len(names)} outputs: choose one with 'output' "
                          f"(one of: {', '.join(names)})")
    if given not in names:
        raise _bad(label, f"'output' {repr(given)[:40]} is not an output of the function (expected one of: "
                          f"{', '.join(names)})")
    return given


def _transform(given: Any, window: Any, label: str) -> dict[str, Any]:
    if given not in TRANSFORMS:
        raise _bad(label, f"'transform' {repr(given)[:40]} is not one of: {', '.join(TRANSFORMS)} "
                          f"(it makes the output scale-free; see `indicator-transformer features`)")
    if not TRANSFORMS[given].windowed:
        if window is not None:
            raise _bad(label, f"'window' only applies to transform = \"zscore\", not {given}")
        return {"transform": given}
    if isinstance(window, bool) or not isinstance(window, int) or not 2 <= window <= ZSCORE_MAX_WINDOW:
        raise _bad(label, f"'window' = {repr(window)[:40]} must be an integer from 2 to "
                          f"{ZSCORE_MAX_WINDOW} (the bars of the rolling {given})")
    return {"transform": given, "window": int(window)}


def _declared_fn(d: Mapping[str, Any]) -> Callable[[OHLCV, _TA], np.ndarray]:
    outputs = list(_info(d["fn"])["output_names"])

    def compute(x: OHLCV, ta: _TA) -> np.ndarray:
        raw = getattr(ta, d["fn"])(*(getattr(x, c) for c in d["inputs"]), **d["params"])
        value = raw[outputs.index(d["output"])] if isinstance(raw, list | tuple) else raw
        # An inf from TA-Lib (EXP of a price) stays a non-finite value, which compute_features
        # handles; it is no reason for a warning per symbol.
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            return TRANSFORMS[d["transform"]].apply(np.asarray(value, dtype=np.float64), x,
                                                    d.get("window"))

    return compute


def _as_feature(d: Mapping[str, Any]) -> Feature:
    params = ", ".join(f"{k}={v}" for k, v in d["params"].items())
    window = f" over {d['window']} bars" if "window" in d else ""
    doc = (f"{d['fn']}({', '.join(d['inputs'])}{'; ' + params if params else ''}).{d['output']}, "
           f"{d['transform']}{window}: {TRANSFORMS[d['transform']].doc}")
    return Feature("declared", _declared_fn(d), doc, tuple(dict.fromkeys(d["inputs"])))


def declare(items: Sequence[Any]) -> list[dict[str, Any]]:
    """The canonical form of the declarations ``items`` (the ``custom_features`` setting), each
    checked: a known TA-Lib function, known parameters of the right type that TA-Lib accepts,
    OHLCV inputs of the function's count, an output chosen when there are several, a known
    transform, a name that is new, and a result that does not depend on the price or volume scale.
    Raises a ConfigError naming the key and the feature."""
    # A deep copy: the cached canonical forms must not be changed through a configuration.
    return copy.deepcopy(list(_declare(json.dumps(list(items), sort_keys=True, default=repr))))


@functools.lru_cache(maxsize=64)
def _declare(text: str) -> tuple[dict[str, Any], ...]:
    items = json.loads(text)
    out: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        d = _canonical(item, i)
        if any(o["name"] == d["name"] for o in out):
            raise _bad(f"feature '{d['name']}'", "the name is declared twice")
        _probe(d)
        out.append(d)
    return tuple(out)


def _registry_of(custom: Sequence[Mapping[str, Any]]) -> dict[str, Feature]:
    return _registry(json.dumps(list(custom), sort_keys=True, default=repr))


@functools.lru_cache(maxsize=64)
def _registry(text: str) -> dict[str, Feature]:
    declared = _declare(text)
    return {**FEATURES, **{d["name"]: _as_feature(d) for d in declared}}


def registry(custom: Sequence[Mapping[str, Any]] = ()) -> dict[str, Feature]:
    """Every usable feature: the built-ins and the declared ones (``custom``, checked)."""
    return dict(_registry_of(custom)) if custom else FEATURES


def _probe(d: Mapping[str, Any]) -> None:
    """Run the declaration on the synthetic market: TA-Lib's own range checks, a value that is
    defined at all, and one that does not change when every price (or the volume) is rescaled -
    a raw price level would make symbols incomparable and follow the trend."""
    label = f"feature '{d['name']}' ({d['fn']})"
    feature = _as_feature(d)
    bars = _PROBE_BARS
    while True:
        x = synthetic_symbol(1, 0, 0, bars)
        try:
            base = np.asarray(feature.fn(x, _TA()), dtype=np.float64)
        except Exception as e:  # TA-Lib raises a bare Exception for TA_BAD_PARAM
            params = ", ".join(f"{k} = {v}" for k, v in d["params"].items())
            raise _bad(label, f"TA-Lib refuses the parameters {{{params}}} ({e}); "
                              f"`indicator-transformer features --function {d['fn']}` shows them") from None
        finite = np.isfinite(base)
        if finite.sum() >= 50 or bars * 4 > _MAX_PROBE_BARS:
            break
        bars *= 4
    if not finite.any():
        raise _bad(label, f"it is never defined in {bars:_} bars (a period too long, or inputs "
                          f"outside the function's domain?)")
    for what, scaled in (("every price by 37", _rescaled(x, 37.0, 1.0)), ("the volume by 1000",
                                                                         _rescaled(x, 1.0, 1000.0))):
        other = np.asarray(feature.fn(scaled, _TA()), dtype=np.float64)
        same = np.array_equal(np.isfinite(other), finite) and np.allclose(
            other[finite], base[finite], rtol=1e-6, atol=1e-8)
        if not same:
            raise _bad(label, f"transform \"{d['transform']}\" does not make it scale-free: multiplying "
                              f"{what} changes it (try ratio_close, div_close, log_change or zscore; "
                              f"`indicator-transformer features` explains each)")


def _rescaled(x: OHLCV, price: float, volume: float) -> OHLCV:
    return OHLCV(x.symbol, x.time, x.open * price, x.high * price, x.low * price, x.close * price,
                 x.volume * volume)


def required_columns(names: Sequence[str], custom: Sequence[Mapping[str, Any]] = ()) -> frozenset[str]:
    """The OHLCV columns the named features read (plus close, which the label always needs);
    declared names need their declarations, ``custom``."""
    known = registry(custom)
    return frozenset({"close"}.union(*(known[n].inputs for n in names)))


def feature_columns(x: OHLCV, names: Sequence[str], custom: Sequence[Mapping[str, Any]] = ()) -> np.ndarray:
    """(T, F) float64 matrix of the named features over every bar, warm-up rows (NaN) included.
    ``custom``: the declarations of the declared names among ``names``."""
    ta = _TA()
    known = registry(custom)
    cols = [np.asarray(known[n].fn(x, ta), dtype=np.float64) for n in names]
    return np.column_stack(cols) if cols else np.empty((len(x), 0))


def compute_features(x: OHLCV, names: Sequence[str], horizon: int,
                     custom: Sequence[Mapping[str, Any]] = ()) -> FeatureSet:
    """The (T - warm-up, F) feature matrix and the label for one symbol.

    Warm-up = the first row at which every requested feature is finite; everything before is
    dropped. Because each indicator depends on past bars only, so does the warm-up cut.
    """
    mat = feature_columns(x, names, custom)
    finite_rows = np.isfinite(mat).all(axis=1)
    start = int(np.argmax(finite_rows)) if finite_rows.any() else len(x)
    mat = mat[start:]
    # An inf/NaN after warm-up would come from a degenerate input (e.g. a constant price); zero it
    # rather than poison a whole batch. Only past data decides it, so it stays causal.
    mat[~np.isfinite(mat)] = 0.0
    label = forward_return(x.close, horizon)[start:]
    return FeatureSet(mat.astype(np.float32), label.astype(np.float32), x.time[start:].copy())


def warmup_bars(names: Sequence[str], custom: Sequence[Mapping[str, Any]] = ()) -> int:
    """Rows the indicators need before all of them are defined (measured on a synthetic series,
    longer ones when a declared period needs more than its 400 bars)."""
    bars = _PROBE_BARS
    while True:
        cols = feature_columns(synthetic_symbol(1, 0, 0, bars), names, custom)
        defined = np.isfinite(cols).all(axis=1)
        if defined.any() or bars * 4 > _MAX_PROBE_BARS:
            # Never defined: the whole series is warm-up (not row 0, as argmax would say).
            return int(np.argmax(defined)) if defined.any() else bars
        bars *= 4
