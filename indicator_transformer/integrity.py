"""Digests that make damage to a file we read back detectable.

Two forms:

* A JSON document (report, manifest) carries ``"sha256"``: the digest of its own canonical JSON
  without that key. Any change to a value that still parses as JSON is caught.
* A PyTorch checkpoint (a zip archive) carries the sha256 of every byte before it in the zip
  archive's *comment*, the standard free-text field at the very end of a zip file. ``torch.load``
  ignores the comment, so the file stays one archive that ``torch.load(weights_only=True)`` reads,
  while every byte of it is covered: bytes before the comment by the digest, the comment by being
  the digest. A flipped, zeroed, truncated or appended byte anywhere therefore fails the check.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any

DIGEST_KEY = "sha256"


class IntegrityError(ValueError):
    """Content does not match its digest (or its digest is missing or malformed)."""


# ----------------------------------------------------------------------------- JSON documents
def json_safe(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by None: an undefined metric is ``null`` in
    JSON, never ``NaN`` (which strict JSON readers reject)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj


def json_digest(doc: Mapping[str, Any], key: str = DIGEST_KEY) -> str:
    """sha256 of the canonical JSON (sorted keys, no spaces, ASCII) of ``doc`` without ``key``."""
    body = {k: v for k, v in doc.items() if k != key}
    # allow_nan=False: a NaN cannot round-trip through strict JSON readers; writers use null.
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"),
                                     allow_nan=False).encode()).hexdigest()


def seal_json(doc: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``doc`` with its digest added under ``"sha256"``."""
    return {**doc, DIGEST_KEY: json_digest(doc)}


def check_json(doc: Any) -> dict[str, Any]:
    """``doc`` if it is a dict whose digest matches its content, else :class:`IntegrityError`."""
    if not isinstance(doc, dict):
        raise IntegrityError(f"expected a JSON object, found {type(doc).__name__}")
    digest = doc.get(DIGEST_KEY)
    if not isinstance(digest, str):
        raise IntegrityError("it carries no sha256 digest")
    try:
        actual = json_digest(doc)
    except (TypeError, ValueError) as e:
        raise IntegrityError(f"its content cannot be checked ({e})") from None
    if actual != digest:
        raise IntegrityError("its content does not match its sha256 digest (the file was changed "
                             "or damaged after it was written)")
    return doc


# ----------------------------------------------------------------------------- zip archives
_EOCD_SIG = b"PK\x05\x06"      # end-of-central-directory record: 22 bytes + comment, last in the file
_EOCD_LEN = 22
_SEAL_PREFIX = b"indicator-transformer sha256 "
_SEAL_LEN = len(_SEAL_PREFIX) + 64


def seal_zip(data: bytes) -> bytes:
    """``data`` (a zip archive without a comment, as ``torch.save`` writes it) with the sha256 of
    everything before the comment stored as the archive comment."""
    if len(data) < _EOCD_LEN or data[-_EOCD_LEN:-_EOCD_LEN + 4] != _EOCD_SIG or data[-2:] != b"\0\0":
        raise ValueError("not a zip archive without a comment")
    head = data[:-2] + _SEAL_LEN.to_bytes(2, "little")
    return head + _SEAL_PREFIX + hashlib.sha256(head).hexdigest().encode()


def zip_seal_status(data: bytes | memoryview) -> str:
    """'sealed' (digest present and correct), 'unsealed' (a plain zip with no comment: written
    before digests existed), or raise :class:`IntegrityError`."""
    n = len(data)
    if n >= _EOCD_LEN + _SEAL_LEN and bytes(data[n - _SEAL_LEN:n - 64]) == _SEAL_PREFIX:
        eocd = n - _SEAL_LEN - _EOCD_LEN
        if bytes(data[eocd:eocd + 4]) != _EOCD_SIG \
                or int.from_bytes(data[n - _SEAL_LEN - 2:n - _SEAL_LEN], "little") != _SEAL_LEN:
            raise IntegrityError("its end-of-archive record is damaged")
        expected = bytes(data[n - 64:]).decode("ascii", "replace")
        if hashlib.sha256(data[:n - 64 - len(_SEAL_PREFIX)]).hexdigest() != expected:
            raise IntegrityError("sha256 mismatch: the file was changed or damaged after it was "
                                 "written")
        return "sealed"
    if n >= _EOCD_LEN and bytes(data[n - _EOCD_LEN:n - _EOCD_LEN + 4]) == _EOCD_SIG \
            and bytes(data[n - 2:]) == b"\0\0":
        return "unsealed"
    raise IntegrityError("its end-of-archive record or digest is missing or damaged (truncated, or "
                         "bytes appended)")
