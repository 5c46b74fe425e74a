"""The feature cache: the only module that knows its layout.

Layout of ``cache/``::

    manifest.json                         the commit record (written atomically, under .lock)
    <SYMBOL>-<key>.entry.npy              one entry: three .npy arrays back to back, no pickle,
                                          memory-mapped in one piece:
                                            time      (T,)  int64 ns
                                            features  (T, F) float32
                                            label     (T,)  float32 forward return
    .lock                                 inter-process lock around manifest updates
    .in-use                               held shared by each preparation, exclusively by
                                          maintenance (repair, --clear-all): see folder_lock.py
    .<name>.<pid>.<rand>.tmp              in-flight writes (ignored by readers)

An entry exists only once a manifest listing it has been written: its data file is written first
(atomically), the manifest after it. One file per entry, not one per array: a cold preparation
pays one fsync and one hash per symbol instead of three, a warm start one ``lstat`` and one memory
map. The arrays are in the order time, features, label, so each one's data starts aligned to its
item size (every .npy header is padded to a multiple of 64 bytes); ``np.load`` on an open file
reads them one after the other. The key hashes the input (a file's raw bytes, a panel
symbol's parsed rows, or the synthetic spec),
the symbol, every setting that changes what is computed (see ``prepare.feature_settings``),
FEATURE_CODE_VERSION, and the versions of the libraries that parse and compute (TA-Lib, NumPy,
pandas, pyarrow), so any change recomputes instead of silently reusing stale features.

Nothing read back is trusted without a check:

- ``manifest.json`` carries a sha256 of its own content and must be byte for byte the canonical
  JSON this module writes, so any change to it (even one that keeps valid JSON) is detected; every
  field of every record is type- and range-checked before use. A bad manifest is a warning and a
  recompute, never a traceback.
- Each data file's stat signature (size, mtime_ns, ctime_ns, inode) is recorded when it is
  written. A file whose signature still matches is mapped without reading it (a warm start costs
  one ``lstat`` per symbol); any other file is sha256-verified first. Every write to a
  file changes its ctime, which users cannot set, so a modification made through the file system
  is always hashed (to within the file system's timestamp granularity, a few milliseconds on
  Linux, right after the cache wrote the file). ``validate_full`` hashes everything.
- The cache never creates a symbolic link, so it never follows one inside its folder: a link
  under a data-file name is refused (and only the link is ever removed), a linked manifest is not
  read, a linked lock file is removed before locking.

Two processes may prepare the same cache at once: data files with the same key have the same
content and are put in place by atomic renames, and each manifest update re-reads the manifest
from disk under the lock and merges into it, so neither process loses the other's entries.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import io
import json
import math
import os
import re
import shutil
import stat
import threading
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import talib
from filelock import FileLock

from ..atomic import atomic_write_bytes, is_temp_file, remove_stale_temp_files, storage_error
from ..clock import now_iso
from ..errors import PreparationFailed, StorageError, UserError
from ..folder_lock import CacheInUse, hold_cache
from ..integrity import json_digest
from .features import FEATURE_CODE_VERSION, FeatureSet
from .mapping import map_readonly
from .ohlcv import RawInput, stat_signature
from .sources import Source

MANIFEST = "manifest.json"
LOCK = ".lock"
IN_USE = ".in-use"
# 2: keys include the symbol and the settings; manifest digest; per-file stat signatures.
# 3: one data file per entry (time, features, label back to back); compact manifest JSON.
CACHE_FORMAT_VERSION = 3
ARRAYS = ("time", "features", "label")  # the order of the arrays inside an entry's file
_DTYPES = {"features": "float32", "label": "float32", "time": "int64"}
_NDIM = {"features": 2, "label": 1, "time": 1}
_SIG_FIELDS = ("size", "mtime_ns", "ctime_ns", "ino")
_MAX_NPY_HEADER = 1 << 17  # an .npy header is < 64 KiB; the rest of a file is its array
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_ALIGN = 64  # numpy pads every .npy header to a multiple of this
# Every data file name this module writes (see write_entry), and those of format 2 (one file per
# array), which are recognised only to be removed. Names read from a manifest must match it, so a
# damaged or hostile manifest can never point a reader - or validate_cache's deletions - outside
# the cache folder or at a file the cache did not write.
_DATA_NAME = re.compile(r"^[A-Za-z0-9._=+^-]+-[0-9a-f]{64}\.(entry|features|label|time)\.npy$")


def is_data_name(name: object) -> bool:
    """True for a file name the cache writes for an entry's array."""
    return isinstance(name, str) and _DATA_NAME.fullmatch(name) is not None


class CacheWarning(UserWarning):
    """A cache entry was dropped (and will be recomputed)."""


@functools.cache
def _library_versions() -> dict[str, str]:
    """Versions of everything between the input bytes and the arrays: a new version may parse
    or compute differently (pandas' date parsing, TA-Lib's formulas)."""
    versions = {"talib": talib.__version__, "numpy": np.__version__}
    for name in ("pandas", "pyarrow"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def cache_key(identity: str, symbol: str, settings: Mapping[str, Any]) -> str:
    """The entry key: any change to the input, the symbol, a setting that changes what is computed
    (``settings``, see ``prepare.feature_settings``), the feature code or a library version
    changes it. The symbol is part of it so that two files with the same bytes are two entries."""
    spec = {
        "input": identity,
        "symbol": symbol,
        "settings": dict(settings),
        "feature_code_version": FEATURE_CODE_VERSION,
        **_library_versions(),
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def _safe_symbol(symbol: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=+^-]", "_", symbol)[:80] or "_"


def data_file_name(symbol: str, key: str, part: str = "entry") -> str:
    """The file name of an entry's data file (which holds all its arrays): the only name a manifest
    record may give it. ``part`` is accepted for the callers of format 2 and ignored."""
    return f"{_safe_symbol(symbol)}-{key}.entry.npy"


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def write_entry(root: str | Path, key: str, symbol: str, fs: FeatureSet, *, input_rows: int | None = None
                ) -> dict[str, Any]:
    """Write one entry's data file atomically and return its manifest record (not yet committed).

    A plain function of the folder, so that a preparation worker process can write the file and
    hand only the small record back (see :meth:`FeatureCache.adopt`)."""
    arrays = {"features": fs.features, "label": fs.label, "time": fs.time}
    name = data_file_name(symbol, key)
    chunks, files, size = [], {}, 0
    for part in ARRAYS:
        arr = np.ascontiguousarray(arrays[part])
        chunk = _npy_bytes(arr)
        chunks.append(chunk)
        size += len(chunk)
        files[part] = {"name": name, "shape": list(arr.shape), "dtype": str(arr.dtype),
                       "offset": size - arr.nbytes}  # where its data starts, after its header
    data = b"".join(chunks)
    path = os.path.join(root, name)
    # No folder fsync: the manifest's commit fsyncs the folder after this rename, and an entry
    # counts only once that manifest is durable.
    atomic_write_bytes(path, data, sync_dir=False)
    rows = int(fs.features.shape[0])
    return {"symbol": symbol, "rows": rows, "created": now_iso(), "files": files,
            "input_rows": rows if input_rows is None else int(input_rows),
            # after the rename: the signature of the file under its final name
            "data": {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                     "sig": stat_signature(os.lstat(path))}}


# --------------------------------------------------------------------------- the manifest document
def manifest_digest(doc: Mapping[str, Any]) -> str:
    """sha256 over the canonical JSON of every field of ``doc`` but ``digest`` itself."""
    return json_digest(doc, key="digest")


def manifest_bytes(doc: Mapping[str, Any]) -> bytes:
    """The exact bytes of a manifest: ``doc`` with its digest, as compact, key-sorted ASCII JSON.
    Compact because indented JSON goes through the json module's pure-Python encoder, and a warm
    start re-encodes the whole manifest to check it is canonical: that was most of its time."""
    sealed = dict(doc, digest=manifest_digest(doc))
    return (json.dumps(sealed, sort_keys=True, separators=(",", ":"), ensure_ascii=True) + "\n"
            ).encode("ascii")


@dataclass
class _Manifest:
    """What was read from ``manifest.json``."""

    entries: dict[str, Any] = field(default_factory=dict)
    inputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    problem: str | None = None
    old_names: list[str] = field(default_factory=list)  # data files listed by an older format


def _parse_manifest(raw: bytes) -> _Manifest:
    """Check a manifest's bytes: readable, current format, digest and canonical form."""
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        return _Manifest(problem=f"unreadable manifest ({e})")
    if not isinstance(doc, dict) or not isinstance(doc.get("entries"), dict):
        return _Manifest(problem="manifest has no 'entries' object")
    version = doc.get("format_version")
    if version != CACHE_FORMAT_VERSION:
        old = _is_count(version) and 0 < version < CACHE_FORMAT_VERSION
        names = sorted({m.get("name") for e in doc["entries"].values() if isinstance(e, dict)
                        and isinstance(e.get("files"), dict) for m in e["files"].values()
                        if isinstance(m, dict) and is_data_name(m.get("name"))}) if old else []
        return _Manifest(problem=f"manifest format_version {version!r} is not {CACHE_FORMAT_VERSION}"
                                 + (" (written by an older version)" if old else ""), old_names=names)
    if doc.get("digest") != manifest_digest(doc) or raw != manifest_bytes(doc):
        return _Manifest(problem="manifest content does not match its digest (the file was changed "
                                 "after the cache wrote it)")
    inputs = doc.get("inputs")
    if not isinstance(inputs, dict):
        return _Manifest(problem="manifest has no 'inputs' object")
    return _Manifest(entries=doc["entries"], inputs={k: v for k, v in inputs.items() if _valid_memo(v)})


def _is_count(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _valid_signature(sig: object) -> bool:
    return (isinstance(sig, dict) and set(sig) == set(_SIG_FIELDS)
            and all(_is_count(sig[k]) for k in _SIG_FIELDS))


def _valid_memo(memo: object) -> bool:
    return (isinstance(memo, dict) and isinstance(memo.get("sha256"), str)
            and _HEX64.fullmatch(memo["sha256"]) is not None
            and _valid_signature({k: v for k, v in memo.items() if k != "sha256"}))


def record_problem(key: object, entry: object) -> str | None:
    """What is wrong with a manifest record (every field is checked), or None.

    A record is trusted only if its file's name is the one :func:`write_entry` gives it, each
    array's dtype and rank are the ones the cache writes, its shape agrees with the row count, its
    data lies after the previous array's, aligned, with room for a header, and the last one ends
    exactly at the file's size (so no memory map can reach outside the file), and the file's
    sha256 and stat signature are well formed.
    """
    if not isinstance(key, str) or not _HEX64.fullmatch(key):
        return f"key {key!r} is not a sha256 hex digest"
    if not isinstance(entry, dict):
        return f"record is a {type(entry).__name__}, not an object"
    symbol, rows, files = entry.get("symbol"), entry.get("rows"), entry.get("files")
    if not isinstance(symbol, str) or not symbol:
        return f"symbol {symbol!r} is not a name"
    if not _is_count(rows):
        return f"rows {rows!r} is not a count"
    if not _is_count(entry.get("input_rows")) or entry["input_rows"] < rows:
        return f"input_rows {entry.get('input_rows')!r} is not a count >= rows"
    if not isinstance(files, dict) or set(files) != set(ARRAYS):
        return f"files must list exactly {', '.join(ARRAYS)}"
    data = entry.get("data")
    if not isinstance(data, dict):
        return "data is not an object"
    end = 0  # where the previous array's data ended
    for part in ARRAYS:
        problem, end = _array_record_problem(key, symbol, rows, part, files[part], end)
        if problem:
            return f"its '{part}' array: {problem}"
    size = data.get("bytes")
    if not _is_count(size) or size != end:
        return f"bytes {size!r} is not where the last array ends ({end})"
    if not isinstance(data.get("sha256"), str) or not _HEX64.fullmatch(data["sha256"]):
        return f"sha256 {data.get('sha256')!r} is not a hex digest"
    if not _valid_signature(data.get("sig")) or data["sig"]["size"] != size:
        return f"stat signature {data.get('sig')!r} is malformed"
    return None


def _array_record_problem(key: str, symbol: str, rows: int, part: str, meta: object, start: int
                          ) -> tuple[str | None, int]:
    """(problem, where this array's data ends) for one array of a record; ``start``: where the
    previous one's ended (its own header must fit between the two)."""
    if not isinstance(meta, dict):
        return "record is not an object", 0
    expected = data_file_name(symbol, key)
    if meta.get("name") != expected:
        return f"name {meta.get('name')!r} is not {expected!r}", 0
    if meta.get("dtype") != _DTYPES[part]:
        return f"dtype {meta.get('dtype')!r} is not {_DTYPES[part]!r}", 0
    shape = meta.get("shape")
    if not (isinstance(shape, list) and len(shape) == _NDIM[part] and all(_is_count(n) for n in shape)
            and shape[0] == rows):
        return f"shape {shape!r} is not {_NDIM[part]} counts starting with rows={rows}", 0
    offset = meta.get("offset")
    header = offset - start if _is_count(offset) else -1
    if not 10 <= header <= _MAX_NPY_HEADER or offset % np.dtype(_DTYPES[part]).itemsize:
        return f"offset {offset!r} does not leave an aligned header after byte {start}", 0
    return None, offset + np.dtype(_DTYPES[part]).itemsize * math.prod(shape)


def _sha256_nofollow(path: Path) -> str:
    """sha256 of a file's bytes, refusing (OSError) to follow a symbolic link."""
    h = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class ValidationReport:
    """What a cache validation found and did."""

    valid: list[str] = field(default_factory=list)          # keys
    corrupt: list[str] = field(default_factory=list)        # keys (malformed record, hash/size mismatch)
    missing: list[str] = field(default_factory=list)        # keys with a missing file
    orphaned: list[Path] = field(default_factory=list)      # files no entry lists
    temp_removed: list[Path] = field(default_factory=list)
    bytes: dict[str, int] = field(default_factory=lambda: {"valid": 0, "corrupt": 0, "missing": 0,
                                                            "orphaned": 0})
    manifest_problem: str | None = None
    problems: list[str] = field(default_factory=list)       # one line per finding, naming the file
    in_use: str | None = None  # a dry run beside a live preparation: why "orphaned" may be fresh files

    @property
    def consistent(self) -> bool:
        return not (self.corrupt or self.missing or self.orphaned or self.manifest_problem)


class FeatureCache:
    """A folder of per-symbol feature arrays committed by ``manifest.json``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._lock = threading.Lock()            # guards the in-memory state between threads
        self._flock = FileLock(str(self.root / LOCK))
        self.entries: dict[str, dict[str, Any]] = {}
        self._pending: set[str] = set()           # keys written by us, not yet in a manifest
        self._verified: set[str] = set()          # keys whose files were checked against their record
        self._refresh: set[str] = set()           # keys hashed and found intact: new signatures to commit
        self._dropped: dict[str, dict[str, Any]] = {}  # damaged records: removed by the next commit
        self._rewrite = False                     # the manifest on disk is unusable: commit rewrites it
        # Input file -> its stat signature and sha256, so an unchanged file is not re-hashed on
        # every start (the key still comes from the content hash; only its computation is saved).
        self.inputs: dict[str, dict[str, Any]] = {}
        self._pending_inputs: set[str] = set()

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST

    # --------------------------------------------------------------------- sharing
    def in_use(self) -> contextlib.AbstractContextManager[None]:
        """Held by a preparation for its whole length (any number at once); CacheInUse while a
        repair or --clear-all of this folder runs."""
        return hold_cache(self.root, IN_USE, exclusive=False, busy=(
            f"{self.root}/ is being repaired or cleared by {{pids}} (validate_cache.py); run this "
            f"command again when it has finished"))

    def _maintenance(self, action: str) -> contextlib.AbstractContextManager[None]:
        """Held by a repair or --clear-all; CacheInUse naming the PIDs of live preparations."""
        return hold_cache(self.root, IN_USE, exclusive=True, busy=(
            f"{self.root}/ is in use by {{pids}} (a run preparing features in it); run validate_cache.py"
            f"{action} when it has finished (--dry-run only checks, and may run now)"))

    # --------------------------------------------------------------------- opening
    def open(self) -> FeatureCache:
        """Create the folder, drop leftovers and cheaply check entries (records, files, signatures)."""
        if self.root.exists() and not self.root.is_dir():
            raise UserError(f"{self.root}: is not a folder (expected the feature cache directory)")
        self.root.mkdir(parents=True, exist_ok=True)
        remove_stale_temp_files(self.root)
        doc = self._read_manifest()
        if doc.problem:
            warnings.warn(f"{self.manifest_path}: {doc.problem}; starting with an empty cache (features "
                          f"are recomputed)", CacheWarning, stacklevel=2)
            self._rewrite = True
            if doc.old_names:
                self._remove_old_format_files()
        self.inputs = doc.inputs
        for key, entry in doc.entries.items():
            problem = record_problem(key, entry)
            if problem:
                self._warn_dropped(key, entry, f"malformed manifest record: {problem}")
                continue
            problem, intact = self._stat_files(entry)
            if problem:
                self._warn_dropped(key, entry, problem)
                self._dropped[key] = entry  # its remaining files are removed by the next commit
                continue
            self.entries[key] = entry
            if intact:
                self._verified.add(key)  # else get() hashes its files before use
        return self

    def _read_manifest(self) -> _Manifest:
        """The manifest on disk, checked; never follows a symbolic link."""
        try:
            # O_NONBLOCK: a named pipe at that name must not block the open for ever
            fd = os.open(self.manifest_path,
                         os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
        except FileNotFoundError:
            return _Manifest()
        except OSError as e:
            what = "a symbolic link (the cache never writes one)" if os.path.islink(self.manifest_path) \
                else f"unreadable ({e.strerror or e})"
            return _Manifest(problem=f"manifest is {what}; not trusted")
        try:
            with os.fdopen(fd, "rb") as fh:
                if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                    return _Manifest(problem="manifest is not a regular file; not trusted")
                raw = fh.read()
        except OSError as e:
            return _Manifest(problem=f"unreadable manifest ({e.strerror or e})")
        return _parse_manifest(raw)

    def _remove_old_format_files(self) -> None:
        """Remove the data files an older-format manifest lists: no key of this version can reach
        them, so they would otherwise stay behind as orphans."""
        with self._locked():
            doc = self._read_manifest()  # under the lock: a newer writer may have replaced it
            for name in doc.old_names:
                self._unlink_data_file(name)

    def _warn_dropped(self, key: str, entry: object, problem: str) -> None:
        symbol = entry.get("symbol", "?") if isinstance(entry, dict) else "?"
        warnings.warn(f"{self.manifest_path}: cache entry {symbol} ({str(key)[:12]}): {problem}; it will "
                      f"be recomputed", CacheWarning, stacklevel=3)

    def _stat_files(self, entry: dict[str, Any]) -> tuple[str | None, bool]:
        """(problem, the data file's stat signature equals its record) from ``lstat`` alone."""
        name, data = _file_name(entry), entry["data"]
        sig, problem = self._lstat_data_file(name)
        if problem:
            return problem, False
        assert sig is not None
        if sig["size"] != data["bytes"]:
            return (f"file {self.root / name} has {sig['size']} bytes, the manifest says "
                    f"{data['bytes']}"), False
        return None, sig == data["sig"]

    def _lstat_data_file(self, name: str) -> tuple[dict[str, int] | None, str | None]:
        path = os.path.join(self.root, name)  # a string join: cheaper than a Path per warm hit
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return None, f"file {path} is missing"
        except OSError as e:
            return None, f"file {path} cannot be read ({e.strerror or e})"
        if stat.S_ISLNK(st.st_mode):
            return None, f"file {path} is a symbolic link (the cache never writes one); not followed"
        if not stat.S_ISREG(st.st_mode):
            return None, f"file {path} is not a regular file"
        return stat_signature(st), None

    def _verify_files(self, entry: dict[str, Any], *, always_hash: bool = False
                      ) -> tuple[str | None, dict[str, Any]]:
        """Check the data file: by its stat signature when it matches the record, else (or always,
        with ``always_hash``) by its sha256.

        Returns (problem, the record with the signature seen now)."""
        name, data = _file_name(entry), entry["data"]
        path = self.root / name
        sig, problem = self._lstat_data_file(name)
        if problem:
            return problem, entry
        assert sig is not None
        if sig["size"] != data["bytes"]:
            return f"file {path} has {sig['size']} bytes, the manifest says {data['bytes']}", entry
        if always_hash or sig != data["sig"]:
            # Taken before hashing: a write during the hash leaves a signature that differs.
            try:
                digest = _sha256_nofollow(path)
            except OSError as e:
                return f"file {path} cannot be read ({e.strerror or e})", entry
            if digest != data["sha256"]:
                return f"file {path} is damaged (its sha256 differs from the manifest's)", entry
        return None, dict(entry, data=dict(data, sig=sig))

    # --------------------------------------------------------------------- reading
    def get(self, key: str) -> dict[str, np.ndarray] | None:
        """Memory-mapped arrays of a committed entry, or None when absent, damaged or unreadable.

        A file changed since it was recorded (its stat signature differs) is sha256-verified
        first; a damaged entry is dropped with a :class:`CacheWarning` naming the file."""
        with self._lock:
            entry = self.entries.get(key)
            verified = key in self._verified
        if entry is None:
            return None
        if not verified:
            problem = record_problem(key, entry)
            if problem:
                problem = f"malformed manifest record: {problem}"
            else:
                problem, checked = self._verify_files(entry)
            if problem:
                self._drop(key, entry, problem)
                return None
            with self._lock:
                if checked != entry:
                    self._refresh.add(key)
                self.entries[key] = entry = checked
                self._verified.add(key)
        try:
            return self._load(entry, fast=True)
        except (OSError, ValueError, TypeError, OverflowError) as e:
            self._drop(key, entry, f"unreadable: {e}")
            return None

    def _drop(self, key: str, entry: dict[str, Any], problem: str) -> None:
        self._warn_dropped(key, entry, problem)
        with self._lock:
            if self.entries.get(key) is entry:
                del self.entries[key]
            self._verified.discard(key)
            if record_problem(key, entry) is None:  # a malformed record's names are not trusted
                self._dropped[key] = entry

    def input_rows(self, key: str) -> int | None:
        """How many rows the input of a committed entry had (for the minimum-length check)."""
        with self._lock:
            entry = self.entries.get(key)
        return None if entry is None else int(entry["input_rows"])

    def _load(self, entry: dict[str, Any], *, fast: bool = False) -> dict[str, np.ndarray]:
        """Memory-map an entry's file once and return its arrays as views of that map.

        ``fast`` takes each array's dtype, shape and offset from the record (checked by
        :func:`record_problem`; the bytes by their signature or hash); otherwise every ``.npy``
        header in the file is parsed (no pickle) and must agree with the record, as
        :meth:`validate_full` does."""
        name = _file_name(entry)
        path = os.path.join(self.root, name)
        if not fast:
            _check_headers(path, entry)
        whole = map_readonly(path)  # holds no descriptor: a universe is not bounded by ulimit -n
        out = {}
        header_at = 0
        for part in ARRAYS:
            meta = entry["files"][part]
            dtype, shape = np.dtype(meta["dtype"]), tuple(int(n) for n in meta["shape"])
            if dtype.hasobject:
                raise ValueError(f"{name}: object dtype is never accepted")
            start = int(meta["offset"])
            end = start + dtype.itemsize * math.prod(shape)
            if end > len(whole):
                raise ValueError(f"{name}: the {part} array ends at byte {end}, past the file's end")
            # Where the record puts the array must be where the file has it: its .npy header
            # starts where the previous array ended and ends (with a newline) where its data
            # starts. Three byte compares: a hand-edited record is not read at a shifted offset.
            if bytes(whole[header_at:header_at + len(NPY_MAGIC)]) != NPY_MAGIC or start <= header_at \
                    or whole[start - 1] != 0x0A:
                raise ValueError(f"{name}: the {part} array is not at byte {start} as the manifest says "
                                 f"(no .npy header ends there)")
            header_at = end
            # Slices and views of a memmap stay memmaps: one map per entry, not one per array.
            out[part] = whole[start:end].view(dtype).reshape(shape)
        return out

    def known_identity(self, source: Source) -> str | None:
        """The input's identity when it costs no hashing: a synthetic spec, or a file whose stat
        signature (size, mtime_ns, ctime_ns, inode) matches the one remembered with its sha256.
        Any write to a file changes its ctime, so a changed file is never taken as known."""
        if source.path is None:
            return source.identity()
        path = os.path.abspath(source.path)
        try:
            sig = stat_signature(os.stat(path))
        except OSError:
            return None  # reading it will report the problem
        with self._lock:
            memo = self.inputs.get(path)
        if memo is not None and all(memo.get(k) == v for k, v in sig.items()):
            return memo["sha256"]
        return None

    def remember_input(self, raw: RawInput) -> None:
        """Remember a successfully used input's signature and sha256 for :meth:`known_identity`."""
        if raw.path is None or raw.signature is None:
            return
        with self._lock:
            if self.inputs.get(raw.path) != dict(raw.signature, sha256=raw.sha256):
                self.inputs[raw.path] = dict(raw.signature, sha256=raw.sha256)
                self._pending_inputs.add(raw.path)

    # --------------------------------------------------------------------- writing
    def put(self, key: str, symbol: str, fs: FeatureSet, *, input_rows: int | None = None
            ) -> dict[str, np.ndarray]:
        """Write an entry's data file atomically; it is committed by the next :meth:`commit`.

        ``input_rows``: how many bars the input had (default: the feature rows)."""
        return self.adopt(key, write_entry(self.root, key, symbol, fs, input_rows=input_rows))

    def adopt(self, key: str, entry: dict[str, Any]) -> dict[str, np.ndarray]:
        """Take the record of a data file that :func:`write_entry` wrote (in this process or a
        preparation worker's) as pending for the next :meth:`commit`; returns its arrays."""
        problem = record_problem(key, entry)
        if problem:  # a worker's bug, never user input: fail loudly rather than commit it
            raise ValueError(f"write_entry produced a malformed record: {problem}")
        with self._lock:
            self.entries[key] = entry
            self._pending.add(key)
            self._verified.add(key)
            self._dropped.pop(key, None)
        try:
            return self._load(entry)
        except FileNotFoundError:  # removed by hand between its write and now: the lock cannot stop rm
            with self._lock:
                self.entries.pop(key, None)
                self._pending.discard(key)
            raise PreparationFailed(f"{self.root / _file_name(entry)}: the cache entry just written is "
                                    f"gone (another process removed files in {self.root}); what was "
                                    f"committed before is intact: run the command again") from None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """The inter-process lock. A lock file that is a symbolic link is removed first (only the
        link): the cache never makes one, and opening it could create or lock a file elsewhere."""
        lock = self.root / LOCK
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISLNK(os.lstat(lock).st_mode):
                lock.unlink()
        try:
            self._flock.acquire()
        except OSError as e:  # a read-only or vanished folder: one line, as for the manifest's write
            refused = storage_error(lock, e, "the cache's lock file could not be opened")
            if refused is None:
                raise
            raise refused from None
        try:
            yield
        finally:
            self._flock.release()

    def commit(self) -> int:
        """Write the manifest: entries on disk (from other processes too) merged with ours.

        Returns the number of entries committed by this call. Safe to call repeatedly. With nothing
        to add, refresh or drop and a manifest already on disk it writes nothing (a warm start
        costs no fsync).
        """
        with self._lock:
            nothing_to_do = not (self._pending or self._pending_inputs or self._refresh or self._dropped
                                 or self._rewrite)
        if nothing_to_do and os.path.lexists(self.manifest_path):
            return 0
        self.root.mkdir(parents=True, exist_ok=True)
        with self._locked():
            doc = self._read_manifest()
            with self._lock:
                inputs = dict(doc.inputs)
                inputs.update({p: self.inputs[p] for p in self._pending_inputs})
                self._pending_inputs.clear()
                merged = {k: v for k, v in doc.entries.items()
                          if not self._dropped_record(k, v) and not record_problem(k, v)
                          and not self._stat_files(v)[0]}
                ours = {k: self.entries[k] for k in self._pending | self._refresh if k in self.entries}
                for k, v in ours.items():
                    if k in self._refresh and k not in self._pending and not _same_content(merged.get(k), v):
                        continue  # another writer replaced that record meanwhile: keep theirs
                    if not self._stat_files(v)[0]:  # a concurrent clean-up may have removed files
                        merged[k] = v
                for k, v in self._dropped.items():
                    if k not in merged:  # else another writer recomputed it meanwhile
                        self._remove_files(v)
                committed = len(self._pending)
                new_keys = {k for k in self._pending if k not in doc.entries}
                self._pending.clear()
                self._refresh.clear()
                self._dropped.clear()
                self._rewrite = False
                self.entries.update(merged)
            try:
                atomic_write_bytes(self.manifest_path, manifest_bytes({
                    "format_version": CACHE_FORMAT_VERSION, "updated": now_iso(), "entries": merged,
                    "inputs": inputs}))
            except StorageError:
                # The disk is full (or read-only, or out of descriptors): remove the data files
                # only this commit would have listed. They free the space they took, and no file
                # is left that no manifest names (where the storage still allows the removal).
                with self._lock:
                    for k in new_keys:
                        entry = self.entries.pop(k, None)
                        if entry is not None:
                            with contextlib.suppress(OSError):  # a read-only folder keeps them
                                self._remove_files(entry)
                raise
        return committed

    def _dropped_record(self, key: str, entry: object) -> bool:
        """True for the on-disk record of an entry this process found damaged (and did not rewrite)."""
        return key in self._dropped and key not in self._pending and _same_content(self._dropped[key], entry)

    def _remove_files(self, entry: dict[str, Any]) -> None:
        """Remove a dropped (damaged) entry's files, so that they do not stay behind as orphans."""
        for name in {meta["name"] for meta in entry["files"].values()}:
            self._unlink_data_file(name)

    def _unlink_data_file(self, name: str) -> int:
        """Remove a data file (a symbolic link: only the link). Returns the bytes removed."""
        if not is_data_name(name):
            return 0
        path = self.root / name
        try:
            st = os.lstat(path)
        except OSError:
            return 0
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
            return 0
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # unlink never follows a link: whatever it points to is untouched
        return st.st_size

    @property
    def pending(self) -> int:
        """Entries written but not yet committed."""
        return len(self._pending)

    # --------------------------------------------------------------------- maintenance
    def validate_full(self, *, fix: bool = True) -> ValidationReport:
        """Hash every file; remove corrupt, partial and orphaned files; rewrite the manifest.

        Orphaned = a ``.npy`` data file that no manifest entry lists. Files of other kinds are left
        alone: they are not the cache's to delete. A symbolic link under a data-file name is never
        followed: it is reported (corrupt or orphaned) and only the link is removed.
        """
        report = ValidationReport()
        if not self.root.is_dir():
            return report
        if not os.path.lexists(self.manifest_path):
            self._refuse_foreign_folder("repair")  # without a manifest, be sure the folder is ours
        if not fix:  # a check changes nothing: it may run beside a preparation, and says so
            try:
                with self._maintenance(" --dry-run"):
                    pass
            except CacheInUse as e:
                report.in_use = str(e).split(" (a run")[0]
            return self._validate(report, fix)
        with self._maintenance(""):
            return self._validate(report, fix)

    def _validate(self, report: ValidationReport, fix: bool) -> ValidationReport:
        with self._locked():
            report.temp_removed = remove_stale_temp_files(self.root, dry_run=not fix)
            doc = self._read_manifest()
            report.manifest_problem = doc.problem
            if doc.problem:
                report.problems.append(f"{self.manifest_path}: {doc.problem}")
            keep, refreshed, bad_names, listed = self._classify(doc, report)
            keep_names = {m["name"] for e in keep.values() for m in e["files"].values()}
            for name in sorted(bad_names - keep_names):
                if fix:
                    self._unlink_data_file(name)
            self._find_orphans(listed, report, fix)
            if fix and (report.corrupt or report.missing or report.orphaned or doc.problem or refreshed
                        or not os.path.lexists(self.manifest_path)):
                atomic_write_bytes(self.manifest_path, manifest_bytes({
                    "format_version": CACHE_FORMAT_VERSION, "updated": now_iso(), "entries": keep,
                    "inputs": doc.inputs}))
        self.entries = keep
        self._verified = set(keep)
        return report

    def _classify(self, doc: _Manifest, report: ValidationReport
                  ) -> tuple[dict[str, Any], bool, set[str], set[str]]:
        """Check every entry fully. Returns (entries to keep, whether a signature was refreshed,
        names of bad entries' files, every listed data-file name)."""
        keep: dict[str, Any] = {}
        refreshed = False
        bad_names: set[str] = set()
        listed: set[str] = set()
        for key, entry in doc.entries.items():
            files = entry.get("files") if isinstance(entry, dict) else None
            names = {m.get("name") for m in files.values() if isinstance(m, dict)} \
                if isinstance(files, dict) else set()
            names = {n for n in names if is_data_name(n)}  # never touch any other path
            listed |= names
            status, problem, checked = self._full_check(key, entry)
            size = sum(self._lsize(n) for n in names)
            report.bytes[status] += size
            if status == "valid":
                keep[key] = checked
                refreshed = refreshed or checked != entry
                report.valid.append(key)
                continue
            getattr(report, status).append(key)
            symbol = entry.get("symbol", "?") if isinstance(entry, dict) else "?"
            report.problems.append(f"{status}: entry {symbol} ({str(key)[:12]}): {problem}")
            bad_names |= names
        return keep, refreshed, bad_names, listed

    def _find_orphans(self, listed: set[str], report: ValidationReport, fix: bool) -> None:
        """Data files (or links under data-file names) that no entry lists."""
        for p in sorted(self.root.iterdir()):
            if p.name in listed or not is_data_name(p.name) or not self._is_cache_file(p):
                continue
            report.orphaned.append(p)
            report.problems.append(f"orphaned: {p} (no manifest entry lists it)")
            report.bytes["orphaned"] += self._lsize(p.name)
            if fix:
                self._unlink_data_file(p.name)

    def _lsize(self, name: str) -> int:
        try:
            return os.lstat(self.root / name).st_size
        except OSError:
            return 0

    def _full_check(self, key: str, entry: object) -> tuple[str, str | None, dict[str, Any]]:
        """(status, problem, record with current signatures): hashes every file, parses headers."""
        problem = record_problem(key, entry)
        if problem:
            return "corrupt", f"{self.manifest_path}: malformed record: {problem}", {}
        assert isinstance(entry, dict)
        problem, checked = self._verify_files(entry, always_hash=True)
        if problem:
            return ("missing" if problem.endswith(" is missing") else "corrupt"), problem, {}
        try:
            self._load(checked)
        except (OSError, ValueError, TypeError, OverflowError) as e:
            return "corrupt", f"unreadable: {e}", {}
        return "valid", None, checked

    def _is_cache_file(self, p: Path) -> bool:
        """A name this module writes (the manifest, the lock, a data or temporary file), as a
        regular file or a symbolic link (which is removed, never followed)."""
        try:
            mode = os.lstat(p).st_mode
        except OSError:
            return False
        return (stat.S_ISREG(mode) or stat.S_ISLNK(mode)) and (
            p.name in (MANIFEST, LOCK, IN_USE) or is_data_name(p.name) or is_temp_file(p))

    def _refuse_foreign_folder(self, action: str) -> None:
        foreign = [p for p in sorted(self.root.iterdir()) if not self._is_cache_file(p)]
        if foreign:
            raise UserError(f"{self.root}: does not look like a feature cache ({foreign[0].name} is "
                            f"not a cache file); refusing to {action} it")

    def clear_all(self) -> tuple[int, int]:
        """Remove the whole cache folder. Returns (files, bytes) removed.

        Refuses (:class:`UserError`) a path that is a symbolic link (deleting through it would
        delete another folder's content), a path that is not a folder, or a folder holding
        anything the cache never writes (a subfolder, a file of another kind): a mistyped
        ``--cache-dir`` must not delete unrelated data.
        """
        if os.path.islink(self.root):
            target = os.path.realpath(self.root)
            raise UserError(f"{self.root}: is a symbolic link to {target}; refusing to delete through "
                            f"it. To clear the cache it points to, run validate_cache.py --clear-all "
                            f"--cache-dir {target}; to stop using it, remove only the link (rm {self.root})")
        if not self.root.exists():
            return 0, 0
        if not self.root.is_dir():
            raise UserError(f"{self.root}: is not a folder (expected the feature cache directory)")
        self._refuse_foreign_folder("delete")
        with self._maintenance(" --clear-all"):
            names = [p.name for p in self.root.iterdir()]
            total = sum(self._lsize(n) for n in names)
            try:
                shutil.rmtree(self.root)  # never follows links inside the folder: it removes the links
            except OSError as e:  # a process that does not take the lock wrote into it meanwhile
                raise UserError(f"{self.root}: could not be removed completely ({e.strerror or e}): "
                                f"another process is writing into it; run validate_cache.py --clear-all "
                                f"again") from None
        return len(names), total


def _same_content(a: object, b: object) -> bool:
    """Two records describe the same bytes (same file name, array offsets and sha256)."""
    def content(e: object) -> object:
        if not (isinstance(e, dict) and isinstance(e.get("files"), dict) and isinstance(e.get("data"), dict)):
            return None
        arrays = sorted((p, m.get("name"), m.get("offset")) for p, m in e["files"].items()
                        if isinstance(m, dict))
        return arrays, e["data"].get("sha256")
    return a is not None and content(a) is not None and content(a) == content(b)


def _file_name(entry: Mapping[str, Any]) -> str:
    """The data file of a checked record (every array names the same one)."""
    return entry["files"]["features"]["name"]


NPY_MAGIC = b"\x93NUMPY"


def _check_headers(path: str, entry: Mapping[str, Any]) -> None:
    """Parse every ``.npy`` header of an entry's file in turn (never unpickling anything) and
    check that each agrees with the record: dtype, shape, C order and where its data starts."""
    fmt = np.lib.format
    with open(path, "rb") as fh:
        for part in ARRAYS:
            meta = entry["files"][part]
            version = fmt.read_magic(fh)
            reader = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            shape, fortran, dtype = reader(fh, max_header_size=_MAX_NPY_HEADER)
            if dtype.hasobject:
                raise ValueError(f"{os.path.basename(path)}: object dtype is never accepted")
            if (list(shape), str(dtype), fortran, fh.tell()) != (meta["shape"], meta["dtype"], False,
                                                                 meta["offset"]):
                raise ValueError(f"{os.path.basename(path)}: its {part} array is {dtype}{list(shape)} at "
                                 f"byte {fh.tell()}, the manifest says {meta['dtype']}{meta['shape']} at "
                                 f"byte {meta['offset']}")
            fh.seek(meta["offset"] + dtype.itemsize * math.prod(shape))
