"""Use a trained model: the predicted forward return of each symbol at its latest bar (or every bar).

The checkpoint is verified, its configuration says which features, window and horizon to compute,
its normalisation turns features into model inputs and predictions back into returns, so the data
may be new files the model never saw. Windows are exactly the training ones: the L bars ending at
bar t, normalised with the training statistics and clipped the same way.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from .config import Config
from .data.prepare import PreparedData
from .data.windows import Normalisation, SplitIndex, WindowDataset
from .model import IndicatorTransformer

BATCH = 1024


@dataclass(frozen=True)
class Prediction:
    symbol: str
    time_ns: int
    predicted_return: float
    rank: int = 0  # 1 = highest predicted return among the symbols at that time


def load_model(state: dict[str, Any], cfg: Config, n_features: int) -> IndicatorTransformer:
    """The checkpoint's model, in eval mode on the CPU (shapes were verified on load)."""
    model = IndicatorTransformer(n_features, cfg.features.window, cfg.model)
    model.load_state_dict(state["model"])
    return model.eval()


def predict(model: IndicatorTransformer, data: PreparedData, norm: Normalisation, window: int, *,
            every_bar: bool, should_stop: Callable[[], bool]) -> list[Prediction] | None:
    """Predictions at each symbol's last bar, ranked across all symbols (``every_bar``: at every
    bar with a full window, ranked across the symbols of each time); None when a stop was
    requested. Latest bars of different times are still ranked together: that is the question
    "which symbol now", and the command warns when the times differ."""
    # One [first, last] range of window end bars per symbol: the same inputs training built.
    lengths = np.array([len(sym.time) for sym in data.symbols], np.int64)
    stops = np.where(lengths >= window, lengths, 0)
    starts = np.where(lengths >= window, window - 1 if every_bar else lengths - 1, 0)
    ds = WindowDataset(data.symbols, SplitIndex(starts, stops), window, norm)
    out = np.empty(len(ds), np.float64)
    with torch.no_grad():
        for a in range(0, len(ds), BATCH):
            if should_stop():
                return None
            x, _ = ds.__getitems__(list(range(a, min(a + BATCH, len(ds)))))
            out[a:a + len(x)] = model(x).double().numpy()
    preds = ds.to_returns(out)  # each symbol's own label scale
    rows = []
    for i in range(len(ds)):
        s, t = ds.locate(i)
        rows.append(Prediction(data.symbols[s].symbol, int(data.symbols[s].time[t]), float(preds[i])))
    return _ranked(rows, by_time=every_bar)


def _ranked(rows: list[Prediction], *, by_time: bool = True) -> list[Prediction]:
    """Rank within each time (or all rows together), highest predicted return first; ties share
    the better rank."""
    groups: dict[int, list[Prediction]] = {}
    for r in rows:
        groups.setdefault(r.time_ns if by_time else 0, []).append(r)
    out = []
    for t in sorted(groups):
        group = sorted(groups[t], key=lambda r: (-r.predicted_return, r.symbol))
        rank = 0
        for i, r in enumerate(group):
            if i == 0 or r.predicted_return != group[i - 1].predicted_return:
                rank = i + 1
            out.append(Prediction(r.symbol, r.time_ns, r.predicted_return, rank))
    return out


def to_csv(rows: list[Prediction]) -> str:
    """symbol,time,predicted_return,rank (ISO 8601 UTC times)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["symbol", "time", "predicted_return", "rank"])
    for r in rows:
        w.writerow([r.symbol, pd.Timestamp(r.time_ns, tz="UTC").isoformat(), f"{r.predicted_return:.8g}",
                    r.rank])
    return buf.getvalue()
