"""The feature cache: the only module that knows its layout.

Layout of ``cache/``::

    manifest.json                         the commit record (written atomically, under .lock)
    <SYMBOL>-<key>.features.npy           (T, F) float32, no pickle, memory-mappable
    <SYMBOL>-<key>.label.npy              (T,)  float32 forward return
    <SYMBOL>-<key>.time.npy               (T,)  int64 ns
    .lock                                 inter-process lock around manifest updates
    .<name>.<pid>.<rand>.tmp              in-flight writes (ignored by readers)

An entry exists only once a manifest listing it has been written: data files are written first
(each atomically), the manifest after them. The key hashes the raw input bytes (or synthetic spec),
the feature list and horizon, FEATURE_CODE_VERSION, and the TA-Lib and NumPy versions, so any
change recomputes instead of silently reusing stale features.

Two processes may prepare the same cache at once: data files with the same key have the same
content and are put in place by atomic renames, and each manifest update re-reads the manifest
from disk under the lock and merges into it, so neither process loses the other's entries.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import talib
from filelock import FileLock

from ..atomic import atomic_write_bytes, atomic_write_json, is_temp_file, remove_stale_temp_files
from ..clock import now_iso
from ..errors import UserError
from .features import FEATURE_CODE_VERSION, FeatureSet
from .sources import Source, sha256_file

MANIFEST = "manifest.json"
LOCK = ".lock"
CACHE_FORMAT_VERSION = 1
ARRAYS = ("features", "label", "time")
# Every data file name this module writes (see put). Names read from a manifest must match it, so
# a damaged or hostile manifest can never point a reader - or validate_cache's deletions - outside
# the cache folder or at a file the cache did not write.
_DATA_NAME = re.compile(r"^[A-Za-z0-9._=+^-]+-[0-9a-f]{64}\.(features|label|time)\.npy$")


def is_data_name(name: object) -> bool:
    """True for a file name the cache writes for an entry's array."""
    return isinstance(name, str) and _DATA_NAME.fullmatch(name) is not None


class CacheWarning(UserWarning):
    """A cache entry was dropped (and will be recomputed)."""


def cache_key(identity: str, features: list[str], horizon: int) -> str:
    """The entry key: any change to input, feature code or library versions changes it."""
    spec = {
        "input": identity,
        "features": list(features),
        "horizon": int(horizon),
        "feature_code_version": FEATURE_CODE_VERSION,
        "talib": talib.__version__,
        "numpy": np.__version__,
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def _safe_symbol(symbol: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=+^-]", "_", symbol)[:80] or "_"


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


@dataclass
class ValidationReport:
    """What a cache validation found and did."""

    valid: list[str] = field(default_factory=list)          # keys
    corrupt: list[str] = field(default_factory=list)        # keys (hash/header/size mismatch)
    missing: list[str] = field(default_factory=list)        # keys with a missing file
    orphaned: list[Path] = field(default_factory=list)      # files no entry lists
    temp_removed: list[Path] = field(default_factory=list)
    bytes: dict[str, int] = field(default_factory=lambda: {"valid": 0, "corrupt": 0, "missing": 0,
                                                            "orphaned": 0})
    manifest_problem: str | None = None

    @property
    def consistent(self) -> bool:
        return not (self.corrupt or self.missing or self.orphaned or self.manifest_problem)


class FeatureCache:
    """A folder of per-symbol feature arrays committed by ``manifest.json``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._lock = threading.Lock()            # guards the in-memory manifest between threads
        self._flock = FileLock(str(self.root / LOCK))
        self.entries: dict[str, dict[str, Any]] = {}
        self._pending: set[str] = set()           # keys written by us, not yet in a manifest
        # Input file -> its stat signature and sha256, so an unchanged file is not re-hashed on
        # every start (the key still comes from the content hash; only its computation is saved).
        self.inputs: dict[str, dict[str, Any]] = {}
        self._pending_inputs: set[str] = set()

    # --------------------------------------------------------------------- opening
    def open(self) -> FeatureCache:
        """Create the folder, drop leftovers and cheaply validate entries (files present, sizes)."""
        self.root.mkdir(parents=True, exist_ok=True)
        remove_stale_temp_files(self.root)
        entries, self.inputs, problem = self._read_manifest_doc()
        if problem:
            warnings.warn(f"{self.root / MANIFEST}: {problem}; starting with an empty cache",
                          CacheWarning, stacklevel=2)
        for key, entry in list(entries.items()):
            bad = self._quick_check(entry)
            if bad:
                warnings.warn(f"cache entry {entry.get('symbol', '?')} ({key[:12]}): {bad}; "
                              f"it will be recomputed", CacheWarning, stacklevel=2)
                del entries[key]
        self.entries = entries
        return self

    def _read_manifest_doc(self) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]], str | None]:
        """(entries, remembered input hashes, problem) of the manifest on disk."""
        path = self.root / MANIFEST
        if not path.exists():
            return {}, {}, None
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            return {}, {}, f"unreadable manifest ({e})"
        if not isinstance(doc, dict) or not isinstance(doc.get("entries"), dict):
            return {}, {}, "manifest has no 'entries' object"
        if doc.get("format_version") != CACHE_FORMAT_VERSION:
            return {}, {}, f"manifest format_version {doc.get('format_version')!r} is not " \
                           f"{CACHE_FORMAT_VERSION}"
        entries = {k: v for k, v in doc["entries"].items()
                   if isinstance(v, dict) and isinstance(v.get("files"), dict)}
        inputs = doc.get("inputs") if isinstance(doc.get("inputs"), dict) else {}
        inputs = {k: v for k, v in inputs.items() if isinstance(v, dict) and isinstance(v.get("sha256"), str)}
        return entries, inputs, None

    def _quick_check(self, entry: dict[str, Any]) -> str | None:
        for part in ARRAYS:
            meta = entry["files"].get(part)
            if not isinstance(meta, dict) or "name" not in meta:
                return f"manifest lists no '{part}' file"
            if not (is_data_name(meta["name"]) and isinstance(meta.get("bytes"), int)
                    and isinstance(meta.get("dtype"), str) and isinstance(meta.get("shape"), list)
                    and all(isinstance(n, int) for n in meta["shape"])):
                return f"malformed manifest record for its '{part}' file"
            p = self.root / meta["name"]
            try:
                size = p.stat().st_size
            except OSError:
                return f"file {meta['name']} is missing"
            if size != meta.get("bytes"):
                return f"file {meta['name']} has {size} bytes, manifest says {meta.get('bytes')}"
        return None

    # --------------------------------------------------------------------- reading
    def get(self, key: str) -> dict[str, np.ndarray] | None:
        """Memory-mapped arrays of a committed entry, or None when absent or unreadable."""
        with self._lock:
            entry = self.entries.get(key)
        if entry is None:
            return None
        try:
            return self._load(entry, fast=True)
        except (OSError, ValueError, TypeError) as e:
            warnings.warn(f"cache entry {entry.get('symbol')} ({key[:12]}) unreadable: {e}; "
                          f"it will be recomputed", CacheWarning, stacklevel=2)
            with self._lock:
                self.entries.pop(key, None)
            return None

    def _load(self, entry: dict[str, Any], *, fast: bool = False) -> dict[str, np.ndarray]:
        """Memory-map an entry's arrays. ``fast`` maps them straight from the manifest's dtype,
        shape and byte size instead of parsing each ``.npy`` header (three times fewer Python-level
        steps on a warm start); the headers were checked when written and are re-checked by
        :meth:`validate_full`."""
        out = {}
        for part in ARRAYS:
            meta = entry["files"][part]
            path = self.root / meta["name"]
            dtype, shape = np.dtype(meta["dtype"]), tuple(int(n) for n in meta["shape"])
            if dtype.hasobject:
                raise ValueError(f"{meta['name']}: object dtype is never accepted")
            nbytes = dtype.itemsize * int(np.prod(shape))
            if fast and nbytes and int(meta["bytes"]) > nbytes:
                out[part] = np.memmap(path, dtype=dtype, mode="r", offset=int(meta["bytes"]) - nbytes,
                                      shape=shape)
                continue
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
            if arr.shape != shape or arr.dtype != dtype:
                raise ValueError(f"{meta['name']} is {arr.dtype}{list(arr.shape)}, manifest says "
                                 f"{meta['dtype']}{meta['shape']}")
            out[part] = arr
        return out

    def known_identity(self, source: Source) -> str | None:
        """The input's identity when it costs no hashing: a synthetic spec, or a file whose stat
        signature (size, mtime_ns, ctime_ns, inode) matches the one remembered with its sha256.
        Any write to a file changes its ctime, so a changed file is never taken as known."""
        if source.path is None:
            return source.identity()
        path, sig = self._stat_signature(source.path)
        with self._lock:
            memo = self.inputs.get(path)
        if memo is not None and all(memo.get(k) == v for k, v in sig.items()):
            return memo["sha256"]
        return None

    def input_identity(self, source: Source) -> str:
        """``source.identity()`` (sha256 of the raw bytes), remembered for :meth:`known_identity`."""
        known = self.known_identity(source)
        if known is not None:
            return known
        assert source.path is not None
        path, sig = self._stat_signature(source.path)  # before hashing: a write during it is seen
        digest = source.identity()
        with self._lock:
            self.inputs[path] = dict(sig, sha256=digest)
            self._pending_inputs.add(path)
        return digest

    @staticmethod
    def _stat_signature(path: Path) -> tuple[str, dict[str, int]]:
        full = os.path.abspath(path)
        st = os.stat(full)
        return full, {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns,
                      "ino": st.st_ino}

    # --------------------------------------------------------------------- writing
    def put(self, key: str, symbol: str, fs: FeatureSet) -> dict[str, np.ndarray]:
        """Write an entry's data files atomically; it is committed by the next :meth:`commit`."""
        stem = f"{_safe_symbol(symbol)}-{key}"
        files = {}
        arrays = {"features": fs.features, "label": fs.label, "time": fs.time}
        for part in ARRAYS:
            data = _npy_bytes(arrays[part])
            name = f"{stem}.{part}.npy"
            # No folder fsync per file: the manifest's commit fsyncs the folder after these renames,
            # and an entry counts only once that manifest is durable.
            atomic_write_bytes(self.root / name, data, sync_dir=False)
            files[part] = {"name": name, "shape": list(arrays[part].shape),
                           "dtype": str(arrays[part].dtype), "bytes": len(data),
                           "sha256": hashlib.sha256(data).hexdigest()}
        entry = {"symbol": symbol, "rows": int(fs.features.shape[0]), "created": now_iso(),
                 "files": files}
        with self._lock:
            self.entries[key] = entry
            self._pending.add(key)
        return self._load(entry)

    def commit(self) -> int:
        """Write the manifest: entries on disk (from other processes too) merged with ours.

        Returns the number of entries committed by this call. Safe to call repeatedly. With nothing
        pending and a manifest already on disk it writes nothing (a warm start costs no fsync).
        """
        with self._lock:
            nothing_to_add = not self._pending and not self._pending_inputs
        if nothing_to_add and (self.root / MANIFEST).exists():
            return 0
        self.root.mkdir(parents=True, exist_ok=True)
        with self._flock:
            on_disk, inputs, _ = self._read_manifest_doc()
            with self._lock:
                inputs.update({p: self.inputs[p] for p in self._pending_inputs})
                self._pending_inputs.clear()
                merged = {k: v for k, v in on_disk.items() if not self._quick_check(v)}
                ours = {k: self.entries[k] for k in self._pending if k in self.entries}
                for k, v in ours.items():
                    if not self._quick_check(v):  # a concurrent clean-up may have removed files
                        merged[k] = v
                committed = len(self._pending)
                self._pending.clear()
                self.entries.update(merged)
            atomic_write_json(self.root / MANIFEST, {"format_version": CACHE_FORMAT_VERSION,
                                                     "updated": now_iso(), "entries": merged,
                                                     "inputs": inputs})
        return committed

    @property
    def pending(self) -> int:
        """Entries written but not yet committed."""
        return len(self._pending)

    # --------------------------------------------------------------------- maintenance
    def validate_full(self, *, fix: bool = True) -> ValidationReport:
        """Hash every file; remove corrupt, partial and orphaned files; rewrite the manifest.

        Orphaned = a ``.npy`` data file that no manifest entry lists. Files of other kinds are left
        alone: they are not the cache's to delete.
        """
        report = ValidationReport()
        if not self.root.is_dir():
            return report
        if not (self.root / MANIFEST).exists():
            self._refuse_foreign_folder("repair")  # without a manifest, be sure the folder is ours
        with self._flock:
            report.temp_removed = remove_stale_temp_files(self.root)
            entries, inputs, problem = self._read_manifest_doc()
            report.manifest_problem = problem
            keep: dict[str, dict[str, Any]] = {}
            listed: set[str] = set()
            for key, entry in entries.items():
                names = [m.get("name") for m in entry["files"].values() if isinstance(m, dict)]
                names = [n for n in names if is_data_name(n)]  # never touch any other path
                listed.update(names)
                status = self._full_check(entry)
                size = sum(self._size(n) for n in names)
                if status == "valid":
                    keep[key] = entry
                    report.valid.append(key)
                else:
                    getattr(report, status).append(key)
                    if fix:
                        for n in names:
                            with contextlib.suppress(FileNotFoundError):
                                (self.root / n).unlink()
                report.bytes[status] += size
            for p in sorted(self.root.iterdir()):
                # Only data files the cache writes (.npy) can be orphans: anything else in the
                # folder is not ours to delete.
                if p.name in (MANIFEST, LOCK) or is_temp_file(p) or p.name in listed \
                        or not self._is_cache_file(p):
                    continue
                report.orphaned.append(p)
                report.bytes["orphaned"] += p.stat().st_size
                if fix:
                    p.unlink()
            if fix and (report.corrupt or report.missing or problem or not (self.root / MANIFEST).exists()
                        or report.orphaned):
                atomic_write_json(self.root / MANIFEST, {"format_version": CACHE_FORMAT_VERSION,
                                                         "updated": now_iso(), "entries": keep,
                                                         "inputs": inputs})
        self.entries = keep
        return report

    def _size(self, name: str) -> int:
        try:
            return (self.root / name).stat().st_size
        except OSError:
            return 0

    def _full_check(self, entry: dict[str, Any]) -> str:
        quick = self._quick_check(entry)
        if quick:
            return "missing" if "missing" in quick else "corrupt"
        for part in ARRAYS:
            meta = entry["files"][part]
            if sha256_file(self.root / meta["name"]) != meta.get("sha256"):
                return "corrupt"
        try:
            self._load(entry)
        except (OSError, ValueError):
            return "corrupt"
        return "valid"

    @staticmethod
    def _is_cache_file(p: Path) -> bool:
        """A name this module writes: the manifest, the lock, a data file or a temporary file."""
        return p.is_file() and (p.name in (MANIFEST, LOCK) or is_data_name(p.name) or is_temp_file(p))

    def _refuse_foreign_folder(self, action: str) -> None:
        foreign = [p for p in sorted(self.root.iterdir()) if not self._is_cache_file(p)]
        if foreign:
            raise UserError(f"{self.root}: does not look like a feature cache ({foreign[0].name} is "
                            f"not a cache file); refusing to {action} it")

    def clear_all(self) -> tuple[int, int]:
        """Remove the whole cache folder. Returns (files, bytes) removed.

        Refuses (:class:`UserError`) a path that is not a folder, or a folder holding anything the
        cache never writes (a subfolder, a file of another kind): a mistyped ``--cache-dir`` must
        not delete unrelated data.
        """
        if not self.root.exists():
            return 0, 0
        if not self.root.is_dir():
            raise UserError(f"{self.root}: is not a folder (expected the feature cache directory)")
        self._refuse_foreign_folder("delete")
        files = [p for p in self.root.rglob("*") if p.is_file()]
        total = sum(p.stat().st_size for p in files)
        shutil.rmtree(self.root)
        return len(files), total

