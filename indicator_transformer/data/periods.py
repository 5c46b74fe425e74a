"""Each symbol's train / validation / test period as dates: what ``summary.json`` records, what a
checkpoint keeps (``data_profile.split_dates``) and what ``predict --all`` tags its rows with.

    split_dates(symbols, {"train": SplitIndex, "val": ..., "test": ...})
    -> {"GOOG": {"train": {"from": "2004-09-14T00:00:00", "to": ..., "windows": 1650},
                 "val": ..., "test": None}}

The times are those of the first and last window end bar of the split (UTC, seconds); a split
with no window of that symbol is None.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from .prepare import SymbolData


def split_dates(symbols: list[SymbolData], splits: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per symbol and split: {from, to, windows} of its window end bars, or None when empty.
    ``splits`` maps a split name to an object with per-symbol ``starts`` / ``stops`` arrays."""
    out: dict[str, dict[str, Any]] = {}
    for i, s in enumerate(symbols):
        row: dict[str, Any] = {}
        for name, sp in splits.items():
            lo, hi = int(sp.starts[i]), int(sp.stops[i])
            row[name] = None if hi <= lo else {"from": _iso(int(s.time[lo])), "to": _iso(int(s.time[hi - 1])),
                                               "windows": hi - lo}
        out[s.symbol] = row
    return out


def _iso(ns: int) -> str:
    return str(np.datetime64(ns, "ns").astype("datetime64[s]"))


def label_digest(label: np.ndarray) -> str:
    """A short digest of a symbol's forward returns as stored: the same bars under another name
    (a training file copied and renamed) have the same one. Kept per symbol in a checkpoint's
    ``data_profile.label_digests``."""
    return hashlib.sha256(np.ascontiguousarray(label, np.float32).tobytes()).hexdigest()[:32]
