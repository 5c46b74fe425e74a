"""The types an OHLCV source yields: one symbol's validated bars (``OHLCV``), one read of an
input (``RawInput``: its bytes and their sha256), a file's stat signature, and the warning category
for what users should know about their inputs (``DataNote``). Imports nothing of the package but
its errors: every reader, the synthetic market and the cache build on it.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class DataNote(UserWarning):
    """Something about the inputs the user should know that is not an error (ignored files, a file
    read as a panel of several symbols, a constant volume)."""

def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class OHLCV:
    """One symbol's validated bars. ``time`` is int64 nanoseconds since the epoch."""

    symbol: str
    time: np.ndarray
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray

    def __len__(self) -> int:
        return len(self.close)


@dataclass(frozen=True)
class RawInput:
    """One read of an input: the exact bytes that are parsed and the sha256 of those same bytes.

    Hashing and parsing one in-memory copy means the identity (and so the cache key) always
    describes what was computed, even if the file changes on disk between two reads.
    ``signature`` is the file's stat signature taken before reading (None for a synthetic input).
    """

    sha256: str
    data: bytes | None = None
    path: str | None = None
    signature: dict[str, int] | None = None


def stat_signature(st: os.stat_result) -> dict[str, int]:
    """(size, mtime_ns, ctime_ns, inode) of a stat result: any write to the file changes it."""
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "ino": st.st_ino}
