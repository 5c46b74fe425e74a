"""The checkpoint schema, naming, safe loading, listing and retention. Nobody else knows them.

Names in ``models/``:
    checkpoint_epoch_<E>.pth                 end of epoch E (periodic)
    checkpoint_epoch_<E>_step_<S>.pth        every --checkpoint-every steps, S = global step (periodic)
    checkpoint_epoch_<E>_interrupted.pth     stopped inside epoch E (never deleted by retention)
    best.pth                                 lowest validation loss so far (never deleted by retention)

Each file is one dict readable by ``torch.load(path, weights_only=True)``: tensors, numbers,
strings, lists and dicts only, so loading can never execute code. Files are written through
:mod:`atomic`, and retention deletes an old periodic checkpoint only after its successor is
committed.
"""

from __future__ import annotations

import io
import pickle
import re
import zipfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_write_bytes, fsync_dir, is_temp_file
from ..errors import CheckpointError

FORMAT_VERSION = 1
REQUIRED_KEYS = ("model", "optimizer", "scheduler", "epoch", "step_in_epoch", "global_step",
                 "loss_history", "rng", "sampler", "config", "normalisation", "data_fingerprint",
                 "timestamp", "format_version", "interrupted")
BEST_NAME = "best.pth"
_NAME = re.compile(r"^checkpoint_epoch_(?P<epoch>\d+)(?:_step_(?P<step>\d+))?(?P<intr>_interrupted)?\.pth$")


def epoch_checkpoint_name(epoch: int) -> str:
    return f"checkpoint_epoch_{epoch}.pth"


def step_checkpoint_name(epoch: int, global_step: int) -> str:
    return f"checkpoint_epoch_{epoch}_step_{global_step}.pth"


def interrupted_checkpoint_name(epoch: int) -> str:
    return f"checkpoint_epoch_{epoch}_interrupted.pth"


def serialize(state: dict[str, Any]) -> bytes:
    """The checkpoint as bytes (so the same bytes can go to several files)."""
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise ValueError(f"checkpoint state lacks {missing}")
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def save_checkpoint(path: str | Path, state: dict[str, Any], data: bytes | None = None) -> Path:
    """Atomically write ``state`` (or its pre-serialised ``data``) to ``path``."""
    return atomic_write_bytes(path, data if data is not None else serialize(state))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", *,
                    mmap: bool = False) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; a clear :class:`CheckpointError` otherwise.

    ``mmap=True`` maps tensor data instead of reading it (for listing many large checkpoints).
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found")
    if not path.is_file():
        raise CheckpointError(f"{path}: is not a file")
    # torch.save always writes a zip archive; anything else is damage (or a legacy pickle, which we
    # would refuse anyway), and checking first gives a precise message instead of an unpickling one.
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint (not a complete PyTorch zip "
                              f"archive)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        culprit = next((ln.strip() for ln in str(e).splitlines() if "GLOBAL" in ln or "global" in ln), "")
        raise CheckpointError(
            f"{path}: refused: it holds Python objects that loading would have to execute "
            f"(only tensors, numbers, strings, lists and dicts are accepted)"
            + (f"; found {culprit}" if culprit else "")) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, KeyError) as e:
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else 'no detail'})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a checkpoint (expected a dict, found {type(state).__name__})")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"{path}: not a training checkpoint of this tool "
                              f"(missing {', '.join(missing)})")
    if state["format_version"] != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format_version {state['format_version']} is not "
                              f"supported (expected {FORMAT_VERSION})")
    wrong = [k for k, t in _TYPES.items() if not isinstance(state[k], t)]
    history = state["loss_history"]
    if not wrong and not (isinstance(history.get("epochs"), list) and isinstance(history.get("steps"), list)):
        wrong.append("loss_history")
    if wrong:
        raise CheckpointError(f"{path}: not a valid checkpoint (wrong type for {', '.join(wrong)})")
    return state


# The types readers rely on, checked at load so that a damaged file is an error naming it, not a
# KeyError or TypeError deep in resume.
_TYPES: dict[str, type | tuple[type, ...]] = {
    "model": dict, "optimizer": dict, "scheduler": dict, "epoch": int, "step_in_epoch": int,
    "global_step": int, "loss_history": dict, "rng": dict, "sampler": dict, "config": dict,
    "normalisation": dict, "data_fingerprint": dict, "timestamp": str, "interrupted": bool,
}


@dataclass
class CheckpointInfo:
    """One row of ``resume_training.py --list``."""

    path: Path
    size: int
    state: dict[str, Any] | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.state is not None

    @property
    def global_step(self) -> int:
        return int(self.state["global_step"]) if self.state else -1

    @property
    def is_periodic(self) -> bool:
        m = _NAME.match(self.path.name)
        return bool(m) and not m.group("intr")


def checkpoint_files(models_dir: str | Path) -> list[Path]:
    """Every ``*.pth`` in the folder except in-flight temporary files."""
    d = Path(models_dir)
    if not d.is_dir():
        return []
    return sorted(p for p in d.glob("*.pth") if p.is_file() and not is_temp_file(p))


def list_checkpoints(models_dir: str | Path) -> list[CheckpointInfo]:
    """Load every checkpoint (corrupt ones are listed with their error), oldest first."""
    infos = []
    for p in checkpoint_files(models_dir):
        try:
            # Memory-mapped: listing must not read every model's weights into memory.
            infos.append(CheckpointInfo(p, p.stat().st_size, state=load_checkpoint(p, mmap=True)))
        except CheckpointError as e:
            infos.append(CheckpointInfo(p, p.stat().st_size, error=str(e).split(": ", 1)[-1]))
    # Newest last: by global step, then interrupted/periodic before best.pth for ties.
    return sorted(infos, key=lambda i: (i.global_step, i.path.name == BEST_NAME,
                                        i.state["timestamp"] if i.state else "", i.path.name))


def newest_valid(models_dir: str | Path) -> tuple[CheckpointInfo | None, list[CheckpointInfo]]:
    """The valid checkpoint with the highest global step (not best.pth when another ties), and the
    corrupt ones that were skipped."""
    infos = list_checkpoints(models_dir)
    corrupt = [i for i in infos if not i.ok]
    valid = [i for i in infos if i.ok]
    if not valid:
        return None, corrupt
    top = max(i.global_step for i in valid)
    tied = [i for i in valid if i.global_step == top]
    non_best = [i for i in tied if i.path.name != BEST_NAME]
    return (non_best or tied)[-1], corrupt


def archive_previous_run(models_dir: str | Path, extra_names: tuple[str, ...] = ()) -> Path | None:
    """Move an earlier run's checkpoints (and ``extra_names``) into
    ``previous_runs/<UTC time>/`` so that a new run's retention, ``best.pth`` and "newest
    checkpoint" never mix two runs. Nothing is deleted. Returns the archive folder, or None."""
    d = Path(models_dir)
    files = checkpoint_files(d) + [d / n for n in extra_names if (d / n).is_file()]
    if not files:
        return None
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    target = d / "previous_runs" / stamp
    n = 1
    while target.exists():
        n += 1
        target = d / "previous_runs" / f"{stamp}-{n}"
    target.mkdir(parents=True)
    for p in files:
        p.rename(target / p.name)  # same file system: atomic, no copy
    fsync_dir(d)
    fsync_dir(target)
    return target


def apply_retention(models_dir: str | Path, keep: int) -> list[Path]:
    """Delete all but the ``keep`` newest periodic checkpoints (by name order of epoch, step).

    Called only after a new periodic checkpoint is committed, so the newest is always on disk.
    Interrupted checkpoints and best.pth are never deleted here.
    """
    periodic = []
    for p in checkpoint_files(models_dir):
        m = _NAME.match(p.name)
        if not m or m.group("intr"):
            continue
        epoch = int(m.group("epoch"))
        # An end-of-epoch checkpoint comes after every step checkpoint of the same epoch.
        step = int(m.group("step")) if m.group("step") else float("inf")
        periodic.append(((epoch, step), p))
    periodic.sort()
    removed = []
    for _, p in periodic[:-keep] if keep > 0 else []:
        try:
            p.unlink()
            removed.append(p)
        except FileNotFoundError:
            pass
    return removed
