"""Use a trained model: the predicted forward return of each symbol at its latest bar (or every bar).

The checkpoint is verified, its configuration says which features, window and horizon to compute,
its normalisation turns features into model inputs and predictions back into returns, so the data
may be new files the model never saw. Windows are exactly the training ones: the L bars ending at
bar t, normalised with the training statistics and clipped the same way.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from .baselines import FitStopped, FittedBaselines
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
    split: str = ""                 # train, val, test, gap, unseen (or unknown); "" when not asked
    realised_return: float = math.nan  # the forward return that followed, where it is known
    baselines: tuple[tuple[str, float], ...] = ()  # (name, predicted return) of each saved baseline


def load_model(state: dict[str, Any], cfg: Config, n_features: int) -> IndicatorTransformer:
    """The checkpoint's model, in eval mode on the CPU (shapes were verified on load)."""
    model = IndicatorTransformer(n_features, cfg.features.window, cfg.model)
    model.load_state_dict(state["model"])
    return model.eval()


def predict(model: IndicatorTransformer, data: PreparedData, norm: Normalisation, window: int, *,
            every_bar: bool, should_stop: Callable[[], bool], split_dates: dict[str, Any] | None = None,
            baselines: FittedBaselines | None = None) -> list[Prediction] | None:
    """Predictions at each symbol's last bar, ranked across all symbols (``every_bar``: at every
    bar with a full window, ranked across the symbols of each time); None when a stop was
    requested. Latest bars of different times are still ranked together: that is the question
    "which symbol now", and the command warns when the times differ.

    ``every_bar`` rows also carry their ``split`` (from ``split_dates``, the checkpoint's record of
    each symbol's training periods; "unknown" without one) and the realised forward return where
    the data has it; ``baselines`` (a run's saved fits) adds each baseline's prediction."""
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
    extra: dict[str, np.ndarray] = {}
    if baselines is not None:
        try:
            extra = baselines.predict(ds, should_stop)
        except FitStopped:
            return None
    rows = []
    tagger = SplitTagger(split_dates) if every_bar else None
    for i in range(len(ds)):
        s, t = ds.locate(i)
        sym = data.symbols[s]
        time_ns = int(sym.time[t])
        rows.append(Prediction(sym.symbol, time_ns, float(preds[i]),
                               split=tagger.split(sym.symbol, time_ns) if tagger else "",
                               realised_return=float(sym.label[t]) if every_bar else math.nan,
                               baselines=tuple((k, float(v[i])) for k, v in extra.items())))
    return _ranked(rows, by_time=every_bar)


class SplitTagger:
    """Which split of the model's training a (symbol, time) fell in, from the checkpoint's
    ``data_profile.split_dates``: train, val or test inside those periods; gap between them (the
    purge gaps, where no window was used); unseen for a symbol the model never saw or a time
    outside its data (newer bars, or older ones than it had); unknown for a checkpoint that
    recorded no dates."""

    def __init__(self, split_dates: dict[str, Any] | None) -> None:
        self.known = split_dates is not None
        self.ranges: dict[str, list[tuple[int, int, str]]] = {}
        for sym, splits in (split_dates or {}).items():
            self.ranges[sym] = sorted((_ns(r["from"]), _ns(r["to"]), k) for k, r in splits.items() if r)

    def split(self, symbol: str, time_ns: int) -> str:
        if not self.known:
            return "unknown"
        ranges = self.ranges.get(symbol)
        if not ranges or time_ns < ranges[0][0] or time_ns > ranges[-1][1]:
            return "unseen"
        for lo, hi, name in ranges:
            if lo <= time_ns <= hi:
                return name
        return "gap"


def _ns(iso: str) -> int:
    return int(np.datetime64(iso, "ns").astype(np.int64))


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
            out.append(dataclasses.replace(r, rank=rank))
    return out


def to_csv(rows: list[Prediction]) -> str:
    """symbol,time,predicted_return,rank (ISO 8601 UTC times); then split and realised_return when
    the rows carry a split (``--all``), and one column per baseline when they carry baselines
    (``--baselines``). An unknown realised return is an empty cell."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    with_split = any(r.split for r in rows)
    names = [k for k, _ in rows[0].baselines] if rows else []
    w.writerow(["symbol", "time", "predicted_return", "rank"]
               + (["split", "realised_return"] if with_split else []) + names)
    for r in rows:
        when = pd.Timestamp(r.time_ns, tz="UTC").isoformat()
        w.writerow([r.symbol, when, f"{r.predicted_return:.8g}", r.rank]
                   + ([r.split, _num(r.realised_return)] if with_split else [])
                   + [f"{v:.8g}" for _, v in r.baselines])
    return buf.getvalue()


def test_predictions_csv(symbols: np.ndarray, times: np.ndarray, target: np.ndarray,
                         preds: dict[str, np.ndarray]) -> str:
    """A training run's ``--save-predictions`` file: every test sample with its split (test), its
    realised forward return and every predictor's forecast (the model first), the same columns as
    ``predict --all --baselines`` so one backtest script reads both."""
    model = preds["model"]
    rows = [Prediction(str(s), int(t), float(m), split="test", realised_return=float(y),
                       baselines=tuple((k, float(v[i])) for k, v in preds.items() if k != "model"))
            for i, (s, t, y, m) in enumerate(zip(symbols, times, target, model, strict=True))]
    return to_csv(sorted(_ranked(rows, by_time=True), key=lambda r: (r.symbol, r.time_ns)))


test_predictions_csv.__test__ = False  # type: ignore[attr-defined]  # not a pytest test


def _num(v: float) -> str:
    return f"{v:.8g}" if math.isfinite(v) else ""
