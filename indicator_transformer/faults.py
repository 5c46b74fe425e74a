"""Named pause points, so a test can deliver a *real* signal at an exact moment.

Set ``INDICATOR_TRANSFORMER_PAUSE_AT`` to ``"<point>:<n>"`` (several separated by commas), or to
``"<point>:<n>@<k>"`` to pause only the k-th time that point is reached with that value (for example
``before_commit:best.pth@2``, the second write of best.pth). When the program reaches that point
with that value, it prints ``PAUSED <point> <n>`` to stderr and waits (up to 60 s, or
``INDICATOR_TRANSFORMER_PAUSE_TIMEOUT`` seconds) until a new signal arrives - a real one, sent by
the test - then carries on, so the signal lands exactly there. Points:

    train_step       after optimizer step n (n = global step)
    val_batch        after validation batch n of an epoch (n counts from 1)
    test_batch       after batch n of the final test evaluation
    prepare_symbol   after symbol n (1-based, completion order) of preparation was committed in memory
    prepare_commit   after a periodic manifest commit during preparation (n = symbols done so far)
    claim            just before a training command takes its models folder (n = 0)
    exiting          the command's last step, its exit code decided (n = the code)
    before_commit    inside an atomic write, the temporary file complete, before its rename
                     (n = the final file name, e.g. checkpoint_epoch_2_interrupted.pth; "*" = any)

``INDICATOR_TRANSFORMER_TRACE`` names points (comma-separated) at which the program only prints
``AT <point> <value>`` to stderr and goes on: evidence for a test that another process has reached
a place where it blocks (``agree``: a rank entering the stop agreement, value ``train:<global
step>`` or ``<split>:<batch>``).

Under torchrun every rank pauses, unless ``INDICATOR_TRANSFORMER_PAUSE_RANKS`` names the ranks
(and attempts) that do (see :func:`..training.distributed.pauses_here`): at every point, writes
included. With the variable unset, :func:`point` costs one dict lookup.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

ENV = "INDICATOR_TRANSFORMER_PAUSE_AT"
# A pause ends by itself after this long (INDICATOR_TRANSFORMER_PAUSE_TIMEOUT seconds: a test that
# signals another process than the paused one sets it short).
try:
    TIMEOUT_S = max(float(os.environ.get("INDICATOR_TRANSFORMER_PAUSE_TIMEOUT", "60")), 0.0)
except ValueError:
    TIMEOUT_S = 60.0


def _parse(spec: str) -> dict[str, dict[str, int]]:
    """point -> {value: occurrence (0 = every time)}."""
    out: dict[str, dict[str, int]] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, value = part.partition(":")
        value, _, nth = (value or "*").partition("@")
        out.setdefault(name, {})[value] = int(nth) if nth.isdigit() else 0
    return out


_PAUSES = _parse(os.environ.get(ENV, ""))
_TRACES = frozenset(filter(None, os.environ.get("INDICATOR_TRANSFORMER_TRACE", "").split(",")))


def trace(name: str, value: Any) -> None:
    """Print ``AT <name> <value>`` when INDICATOR_TRANSFORMER_TRACE names the point (a set lookup
    otherwise)."""
    if name in _TRACES:
        print(f"AT {name} {value}", file=sys.stderr, flush=True)
_SEEN: dict[tuple[str, str], int] = {}


def point(name: str, value: Any) -> None:
    """Pause here if the environment asks for it (see the module docstring).

    The pause ends when a signal arrives that had not arrived before the pause began.
    """
    wanted = _PAUSES.get(name)
    if not wanted:
        return
    key = str(value) if str(value) in wanted else "*" if "*" in wanted else None
    if key is None:
        return
    _SEEN[(name, key)] = count = _SEEN.get((name, key), 0) + 1
    if wanted[key] and wanted[key] != count:
        return
    from .shutdown import signal_seen_count
    from .training.distributed import pauses_here

    if not pauses_here():  # under torchrun, INDICATOR_TRANSFORMER_PAUSE_RANKS picks the ranks
        return

    seen = signal_seen_count()
    print(f"PAUSED {name} {value}", file=sys.stderr, flush=True)
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline and signal_seen_count() == seen:
        time.sleep(0.01)
