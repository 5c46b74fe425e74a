"""Capture and restore every RNG a training step can touch, in a form ``weights_only`` loads."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def capture_rng(include_cuda: bool) -> dict[str, Any]:
    """Python, NumPy, torch CPU (and CUDA) generator states as tensors, ints and lists."""
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": _to_lists(random.getstate()),
        "numpy": {"bit_generator": np_state["bit_generator"],
                  "key": torch.from_numpy(np.asarray(np_state["state"]["key"], dtype=np.int64)),
                  "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                  "gauss": float(np_state["gauss"])},
        "torch": torch.get_rng_state(),
    }
    if include_cuda and torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng`."""
    random.setstate(_to_tuples(state["python"]))
    npst = state["numpy"]
    np.random.set_state({"bit_generator": npst["bit_generator"],
                         "state": {"key": npst["key"].numpy().astype(np.uint32), "pos": npst["pos"]},
                         "has_gauss": npst["has_gauss"], "gauss": npst["gauss"]})
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def rng_state_problem(state: dict[str, Any]) -> str | None:
    """Which part of a captured state its generator refuses ('python', 'numpy', 'torch'), tried
    on private generators so the global ones are never touched; None when all accept it."""
    npst = state["numpy"]
    trials = {
        "python": lambda: random.Random().setstate(_to_tuples(state["python"])),
        "numpy": lambda: np.random.RandomState().set_state(
            (npst["bit_generator"], npst["key"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"],
             npst["gauss"])),
        "torch": lambda: torch.Generator().set_state(state["torch"]),
    }
    for part, trial in trials.items():
        try:
            trial()
        except (ValueError, TypeError, OverflowError, RuntimeError, IndexError) as e:
            return f"{part} ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
    return None


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) from one integer, ``0 <= seed < 2**63``.

    The configuration enforces the range; outside it torch would fail with an obscure overflow
    and a negative seed would alias its absolute value in ``random``."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise ValueError(f"seed must be an integer with 0 <= seed < 2**63, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _to_lists(x: Any) -> Any:
    if isinstance(x, tuple):
        return [_to_lists(v) for v in x]
    return x


def _to_tuples(x: Any) -> Any:
    if isinstance(x, list):
        return tuple(_to_tuples(v) for v in x)
    return x
