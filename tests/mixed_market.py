"""A folder of files from different markets, like a new user's first real folder.

Daily equity-like files covering 2004-2013 next to hourly FX-like files covering 2017, with
return volatilities 10-20x apart. Each file is a built-in synthetic symbol whose log returns are
scaled and whose timestamps are replaced, so its learnable part (short-term mean reversion, slow
momentum: the same, relative to volatility, in every file) stays as simple as the built-in market's;
nothing here is shaped to favour the model.

Under one global pair of time cut-offs, the daily files land in training and the hourly ones in
validation and test, and one pooled label scale makes the hourly targets ~100x smaller in variance:
the setup in which a model trained without error and scored 1.30x the MSE of a constant.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from indicator_transformer.data.synthetic import SYNTHETIC_VERSION, synthetic_symbol

HOUR = np.timedelta64(1, "h")

# name, synthetic index, bars, frequency, first bar, log-return scale
MIXED_MARKET = [
    ("SPX", 0, 2500, "1d", "2004-01-02", 0.9),
    ("AAPL", 1, 2000, "1d", "2005-06-01", 1.6),
    ("EURUSD", 2, 3000, "1h", "2017-01-02", 0.09),
    ("USDJPY", 3, 2600, "1h", "2017-03-01", 0.12),
]


def _hourly(start: str, n: int) -> np.ndarray:
    """n hourly bars from ``start``, 24 hours a day, Monday to Friday (as FX trades)."""
    t = np.datetime64(start, "h") + np.arange(int(n * 1.5) + 200) * HOUR
    days = t.astype("datetime64[D]")
    weekday = (days.astype(np.int64) + 3) % 7  # 1970-01-01 was a Thursday: Monday = 0
    return t[weekday < 5][:n]


def mixed_market_frames(seed: int = 11) -> dict[str, pd.DataFrame]:
    """symbol -> OHLCV frame (columns Date, Open, High, Low, Close, Volume)."""
    out = {}
    for name, index, bars, freq, start, scale in MIXED_MARKET:
        b = synthetic_symbol(SYNTHETIC_VERSION, seed, index, bars)
        anchor = np.log(b.close[0])

        def rescale(price: np.ndarray, anchor: float = anchor, scale: float = scale) -> np.ndarray:
            # Scale every log move from the first close: returns scale, high >= max(open, close) holds.
            return np.exp(anchor + scale * (np.log(price) - anchor))

        if freq == "1d":
            days = np.busday_offset(np.datetime64(start, "D"), np.arange(bars), roll="forward")
            times = days.astype("datetime64[ns]")
        else:
            times = _hourly(start, bars).astype("datetime64[ns]")
        out[name] = pd.DataFrame({
            "Date": pd.to_datetime(times), "Open": rescale(b.open), "High": rescale(b.high),
            "Low": rescale(b.low), "Close": rescale(b.close), "Volume": b.volume})
    return out


def write_mixed_market(folder: Path, seed: int = 11) -> Path:
    """Write one CSV per symbol into ``folder`` (created) and return it."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, frame in mixed_market_frames(seed).items():
        frame.to_csv(folder / f"{name}.csv", index=False, date_format="%Y-%m-%d %H:%M:%S")
    return folder
