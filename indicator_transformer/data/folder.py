"""The folder of data files (``--data-dir``): which files and partition folders it holds, and the
sources they give. It sits above both readers, single files (sources.py) and panels (panel.py),
so the data package reads one way: types and single-file readers, then panels, then the folder.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from ..errors import UserError
from .ohlcv import DataNote
from .panel import data_dir_sources, partition_symbol
from .sources import SUPPORTED_SUFFIXES, Source

_SUBFOLDER_RULE = ("--data-dir reads the files directly inside it; symbol=X partition folders are read too")


def discover_files(data_dir: str | Path) -> list[Source]:
    """One source per data file in ``data_dir`` (a clear error for a bad directory).

    A data file ends in .csv, .parquet or .pq. Other files (README.txt, notes.md) are ignored and
    named in one :class:`DataNote`; hidden files silently. A file with a symbol column holding
    several symbols is a panel: each of its symbols becomes a source (noted). A subfolder named
    like ``symbol=AAPL`` (Parquet partitioned by symbol, as pyarrow writes it) is the symbol AAPL;
    other subfolders are not read (no recursion) and are named in one :class:`DataNote`.
    A symbol found in two places is an error naming both.
    """
    d = Path(data_dir)
    if not d.exists():
        raise UserError(f"{d}: data directory does not exist")
    if not d.is_dir():
        raise UserError(f"{d}: is not a directory (expected a folder of one OHLCV file per symbol; for "
                        f"one file of many symbols use --data-file)")
    files, folders, ignored, subfolders = [], [], [], []
    for p in sorted(d.iterdir()):
        if p.name.startswith("."):
            continue
        if p.is_dir():
            # Only symbol=X partitions are read: no recursion, so the layout rule stays one sentence.
            (folders if partition_symbol(p) is not None else subfolders).append(p)
        elif p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES:
            files.append(p)
        elif p.is_file():
            ignored.append(p.name)
    if ignored:
        warnings.warn(f"{d}: ignored {len(ignored)} non-data file(s): {', '.join(ignored)} (data files end "
                      f"in {', '.join(SUPPORTED_SUFFIXES)})", DataNote, stacklevel=2)
    if subfolders:
        warnings.warn(f"{d}: ignored {len(subfolders)} subfolder(s): {', '.join(p.name for p in subfolders)} "
                      f"({_SUBFOLDER_RULE})", DataNote, stacklevel=2)
    sources = data_dir_sources(d, files, folders)
    if not sources:
        found = ([f"found only non-data files: {', '.join(ignored)}"] if ignored else []) + \
            ([f"ignored subfolder(s): {', '.join(p.name for p in subfolders)}: {_SUBFOLDER_RULE}"]
             if subfolders else [])
        raise UserError(f"{d}: data directory is empty (expected files like AAPL.csv or ES.parquet"
                        + "".join(f"; {f}" for f in found) + ")")
    return sources
