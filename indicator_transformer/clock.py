"""Timestamps written into manifests and checkpoints."""

from __future__ import annotations

from datetime import UTC, datetime


def now_iso(*, precise: bool = False) -> str:
    """Current UTC time, ISO 8601 to the second (to the microsecond with ``precise``, where the
    order of two writes in the same second matters)."""
    return datetime.now(UTC).isoformat(timespec="microseconds" if precise else "seconds")
