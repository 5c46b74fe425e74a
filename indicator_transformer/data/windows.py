"""Time-ordered splits, train-only normalisation and lazily built windows.

A *sample* is (symbol s, end bar t): the input is features[s][t - L + 1 : t + 1] (shape (L, F)) and
the target is label[s][t], the forward return from t to t + h. Samples are never materialised:
each split stores, per symbol, one contiguous range of end bars, and a flat sample index is turned
into (s, t) with a binary search over the cumulative range lengths. Memory is O(symbols), and the
feature arrays stay memory-mapped from the cache.

Splits use global time cut-offs (the 70% / 85% quantiles of all sample end times by default), so
every symbol's validation data lies after every symbol's training data. The last h training samples
before a cut are dropped, so no training label reaches into the validation period (a gap of h
bars); the same between validation and test.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from ..config import FeatureConfig
from .prepare import SymbolData

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class SplitIndex:
    """Per-symbol [start, stop) ranges of window end bars for one split."""

    starts: np.ndarray  # (S,) int64
    stops: np.ndarray   # (S,) int64

    @property
    def counts(self) -> np.ndarray:
        return np.maximum(self.stops - self.starts, 0)

    @property
    def offsets(self) -> np.ndarray:
        """Cumulative counts with a leading 0: sample i of symbol s is offsets[s] <= i < offsets[s+1]."""
        return np.concatenate([[0], np.cumsum(self.counts)])

    def __len__(self) -> int:
        return int(self.counts.sum())


def make_splits(symbols: list[SymbolData], cfg: FeatureConfig) -> dict[str, SplitIndex]:
    """Train/val/test end-bar ranges per symbol, in time order, gap >= horizon between them."""
    L, h = cfg.window, cfg.horizon
    # Valid end bars: a full window behind, a known label ahead.
    firsts = [L - 1 for _ in symbols]
    lasts = [len(s.label) - h for s in symbols]                       # exclusive
    pieces = [np.asarray(s.time[f:la]) for s, f, la in zip(symbols, firsts, lasts, strict=True) if la > f]
    all_times = np.concatenate(pieces) if pieces else np.empty(0, np.int64)
    if all_times.size == 0:  # no symbol is long enough for one window and its label
        return {k: SplitIndex(np.zeros(len(symbols), np.int64), np.zeros(len(symbols), np.int64))
                for k in SPLITS}
    cut1 = np.quantile(all_times, cfg.train_frac, method="lower")
    cut2 = np.quantile(all_times, cfg.train_frac + cfg.val_frac, method="lower")
    out = {k: ([], []) for k in SPLITS}
    for s, f, la in zip(symbols, firsts, lasts, strict=True):
        t = np.asarray(s.time)
        a1 = max(int(np.searchsorted(t, cut1, side="right")), f)    # first bar after cut 1
        a2 = max(int(np.searchsorted(t, cut2, side="right")), a1)   # first bar after cut 2
        ranges = {
            "train": (f, min(a1 - h, la)),  # labels of train end bars stay before a1
            "val": (a1, min(a2 - h, la)),
            "test": (a2, la),
        }
        for k, (lo, hi) in ranges.items():
            out[k][0].append(lo)
            out[k][1].append(max(hi, lo))
    return {k: SplitIndex(np.asarray(v[0], np.int64), np.asarray(v[1], np.int64)) for k, v in out.items()}


@dataclass(frozen=True)
class Normalisation:
    """Per-feature mean and std, and the label's mean and std, fitted on the training rows only.

    The model is trained on the standardised label; predictions are turned back into returns with
    ``label_mean + label_std * prediction``.
    """

    mean: np.ndarray  # (F,) float32
    std: np.ndarray   # (F,) float32
    label_mean: float = 0.0
    label_std: float = 1.0

    def to_dict(self) -> dict[str, torch.Tensor]:
        """Tensors only, so that a checkpoint holding it loads with ``weights_only=True``."""
        return {"mean": torch.from_numpy(self.mean.copy()), "std": torch.from_numpy(self.std.copy()),
                "label_mean": torch.tensor(self.label_mean, dtype=torch.float64),
                "label_std": torch.tensor(self.label_std, dtype=torch.float64)}

    @classmethod
    def from_dict(cls, d: dict[str, torch.Tensor]) -> Normalisation:
        return cls(d["mean"].numpy().astype(np.float32), d["std"].numpy().astype(np.float32),
                   float(d["label_mean"]), float(d["label_std"]))


def fit_normalisation(symbols: list[SymbolData], train: SplitIndex, window: int) -> Normalisation:
    """Mean/std over every feature row that any training window reads (and nothing later),
    and of the training labels."""
    F = symbols[0].features.shape[1]
    n = 0
    s1 = np.zeros(F, np.float64)
    s2 = np.zeros(F, np.float64)
    labels = []
    for s, lo, hi in zip(symbols, train.starts, train.stops, strict=True):
        if hi <= lo:
            continue
        rows = np.asarray(s.features[max(lo - window + 1, 0):hi], dtype=np.float64)
        n += rows.shape[0]
        s1 += rows.sum(0)
        s2 += (rows * rows).sum(0)
        labels.append(np.asarray(s.label[lo:hi], dtype=np.float64))
    if n == 0:
        return Normalisation(np.zeros(F, np.float32), np.ones(F, np.float32))
    mean = s1 / n
    std = np.sqrt(np.maximum(s2 / n - mean * mean, 0.0))
    std[std < 1e-8] = 1.0  # a constant feature: leave it centred, do not blow it up
    y = np.concatenate(labels)
    y_std = float(y.std()) if y.size > 1 and y.std() > 1e-12 else 1.0
    return Normalisation(mean.astype(np.float32), std.astype(np.float32), float(y.mean()), y_std)


class WindowDataset(Dataset):
    """Windows of one split, built on demand from the memory-mapped cache arrays.

    ``dataset[i]`` -> (x (L, F) float32 normalised and clipped to +-10, y () float32 standardised
    label).
    ``dataset.__getitems__(indices)`` builds a whole batch at once (used by the DataLoader).
    """

    CLIP = 10.0

    def __init__(self, symbols: list[SymbolData], split: SplitIndex, window: int,
                 norm: Normalisation) -> None:
        self.symbols = symbols
        self.split = split
        self.window = window
        self.mean = norm.mean
        self.inv_std = (1.0 / norm.std).astype(np.float32)
        self.label_mean = np.float32(norm.label_mean)
        self.label_inv_std = np.float32(1.0 / norm.label_std)
        self._offsets = split.offsets
        self._starts = split.starts

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def locate(self, i: int) -> tuple[int, int]:
        """Flat sample index -> (symbol index, end bar)."""
        if not 0 <= i < len(self):
            raise IndexError(f"sample {i} out of range for a split of {len(self)}")
        s = int(np.searchsorted(self._offsets, i, side="right") - 1)
        return s, int(self._starts[s] + (i - self._offsets[s]))

    def to_returns(self, standardised: np.ndarray, start: int = 0) -> np.ndarray:
        """Standardised values of samples ``start .. start + len(standardised)`` of this split
        (predictions or labels, as the model sees them) -> forward returns (float64)."""
        v = np.asarray(standardised, np.float64)
        return float(self.label_mean) + v / float(self.label_inv_std)

    def _window(self, i: int) -> tuple[np.ndarray, float]:
        s, t = self.locate(i)
        sym = self.symbols[s]
        return sym.features[t - self.window + 1: t + 1], float(sym.label[t])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = self.__getitems__([i])
        return xs[0], ys[0]

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        xs = np.empty((len(indices), self.window, len(self.mean)), np.float32)  # (B, L, F)
        ys = np.empty(len(indices), np.float32)
        for j, i in enumerate(indices):
            xs[j], ys[j] = self._window(int(i))
        xs -= self.mean
        xs *= self.inv_std
        np.clip(xs, -self.CLIP, self.CLIP, out=xs)
        ys -= self.label_mean
        ys *= self.label_inv_std
        return torch.from_numpy(xs), torch.from_numpy(ys)


def collate_batch(batch):
    """``__getitems__`` already returns a stacked (x, y) batch: pass it through."""
    return batch
