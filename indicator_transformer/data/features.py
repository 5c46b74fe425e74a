"""TA-Lib indicator features, expressed as stationary quantities, and the forward-return label.

Every feature at bar t is computed by TA-Lib from bars <= t only (TA-Lib indicators are causal),
then scaled to a ratio, a return or a bounded oscillator - never a raw price level - so that the
model sees the same distribution whatever the price of the symbol. Rows before every feature is
defined (the indicator warm-up) are dropped.

Bump FEATURE_CODE_VERSION whenever a formula changes: it is part of every cache key.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import talib

from .sources import OHLCV

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


def required_columns(names: list[str]) -> frozenset[str]:
    """The OHLCV columns the named features read (plus close, which the label always needs)."""
    return frozenset({"close"}.union(*(FEATURES[n].inputs for n in names)))


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


def feature_columns(x: OHLCV, names: list[str]) -> np.ndarray:
    """(T, F) float64 matrix of the named features over every bar, warm-up rows (NaN) included."""
    ta = _TA()
    cols = [np.asarray(FEATURES[n].fn(x, ta), dtype=np.float64) for n in names]
    return np.column_stack(cols) if cols else np.empty((len(x), 0))


def compute_features(x: OHLCV, names: list[str], horizon: int) -> FeatureSet:
    """The (T - warm-up, F) feature matrix and the label for one symbol.

    Warm-up = the first row at which every requested feature is finite; everything before is
    dropped. Because each indicator depends on past bars only, so does the warm-up cut.
    """
    mat = feature_columns(x, names)
    finite_rows = np.isfinite(mat).all(axis=1)
    start = int(np.argmax(finite_rows)) if finite_rows.any() else len(x)
    mat = mat[start:]
    # An inf/NaN after warm-up would come from a degenerate input (e.g. a constant price); zero it
    # rather than poison a whole batch. Only past data decides it, so it stays causal.
    mat[~np.isfinite(mat)] = 0.0
    label = forward_return(x.close, horizon)[start:]
    return FeatureSet(mat.astype(np.float32), label.astype(np.float32), x.time[start:].copy())


def warmup_bars(names: list[str]) -> int:
    """Rows the indicators need before all of them are defined (measured on a synthetic series)."""
    from .sources import synthetic_symbol

    cols = feature_columns(synthetic_symbol(1, 0, 0, 400), names)
    return int(np.argmax(np.isfinite(cols).all(axis=1)))
