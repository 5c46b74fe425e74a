"""The only place that knows how to put a file under its final name safely.

Every writer goes through :func:`atomic_write`: data goes to a temporary file in the same folder
(named ``.<final>.<pid>.<random>.tmp`` so readers can ignore it and cleanup can tell whose it is),
is flushed and fsynced, then ``os.replace`` puts it under the final name and the folder is fsynced
so the rename itself survives a power cut. A crash or ``kill -9`` at any instant therefore leaves
either the old complete file or the new complete file under the final name, never a mix.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from . import faults, shutdown
from .errors import StorageError, StorageFull, UserError, too_many_open_files

TMP_SUFFIX = ".tmp"
_BY_FOLDER = os.unlink in os.supports_dir_fd  # unlinkat: remove a file relative to a folder descriptor


def is_temp_file(path: str | Path) -> bool:
    """True for a temporary file written by :func:`atomic_write` (complete or not)."""
    name = Path(path).name
    return name.startswith(".") and name.endswith(TMP_SUFFIX)


def _temp_owner_pid(path: Path) -> int | None:
    parts = path.name[: -len(TMP_SUFFIX)].rsplit(".", 2)
    try:
        return int(parts[-2])
    except (IndexError, ValueError):
        return None


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists but not ours, or we cannot tell: be conservative
    return True


def fsync_dir(folder: str | Path) -> None:
    """Make a rename inside ``folder`` durable. A no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# A full disk, a full quota, a file-size limit: the user can act on these, no traceback.
NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
# Every other refusal of the storage a user can act on, with what to do ({folder} filled in).
STORAGE_HINTS = {
    errno.ENOSPC: "free some space in {folder}",
    errno.EDQUOT: "free some space in {folder} (the disk quota is full)",
    errno.EFBIG: "the file is larger than this filesystem or `ulimit -f` allows; write to another folder",
    errno.EROFS: "the filesystem holding {folder} is read-only (remounted after an error?); make it "
                 "writable or choose another folder",
    errno.EACCES: "this process may not write in {folder}: check its permissions",
    errno.EPERM: "this process may not write in {folder}: check its permissions and attributes "
                 "(lsattr; chattr -i)",
    errno.EIO: "the storage reported an I/O error: check the disk (dmesg) before trusting it again",
    errno.ENOENT: "{folder} (or a folder above it) was moved or removed while the command ran: put "
                  "it back or choose another folder",
}


def storage_error(path: str | Path, e: OSError, what: str = "could not be written") -> StorageError | None:
    """The one-line error for a write that the storage refused (``path``: what was written or
    opened for writing), or None when ``e`` is not such a refusal (a bug, not the user's)."""
    if e.errno in (errno.EMFILE, errno.ENFILE):
        return too_many_open_files(f"{path}: {what}")
    if e.errno not in STORAGE_HINTS:
        return None
    path = Path(path)
    kind = StorageFull if e.errno in NO_SPACE else StorageError
    hint = STORAGE_HINTS[e.errno].format(folder=path.parent)
    intact = "" if e.errno == errno.ENOENT else "Its previous version (if any) is intact. "
    return kind(f"{path}: {what}: {os.strerror(e.errno)}. {intact}{hint[0].upper()}{hint[1:]}, and "
                f"run the command again (a stopped training continues with resume_training.py)")


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any], *, sync_dir: bool = True) -> Path:
    """Write a file through ``write(fileobj)`` so that ``path`` is always complete or absent/old.

    ``sync_dir=False`` skips the folder fsync, for a batch of files that a later write in the same
    folder commits (its folder fsync makes every earlier rename there durable too): the feature
    cache's data files, committed by the manifest.

    A second signal that arrives while the rename is committed is held until the folder is fsynced
    (see :func:`shutdown.critical_section`); before that point the temporary file may be abandoned,
    and the previous file under ``path`` stays intact.
    """
    path = Path(path)
    folder = path.parent
    tmp_name = f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{TMP_SUFFIX}"
    tmp = folder / tmp_name
    # The writes go by path (a folder remounted read-only meanwhile refuses them); a descriptor of
    # the folder only removes the temporary file of a failed write where the folder went, should
    # it have been moved (renamed) meanwhile, instead of leaving it there.
    dfd = -1
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            dfd = os.open(folder, os.O_RDONLY | os.O_CLOEXEC | getattr(os, "O_DIRECTORY", 0))
        with open(tmp, "xb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        faults.point("before_commit", path.name)
        with shutdown.critical_section():
            os.replace(tmp, path)
            if sync_dir:
                fsync_dir(folder)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if dfd >= 0 and _BY_FOLDER:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name, dir_fd=dfd)
        if isinstance(e, IsADirectoryError):
            raise UserError(f"{path}: is a folder, where this file is to be written; move it away and run "
                            f"the command again") from None
        if isinstance(e, OSError) and (refused := storage_error(path, e)) is not None:
            raise refused from None
        raise
    finally:
        if dfd >= 0:
            os.close(dfd)
    return path


def atomic_write_bytes(path: str | Path, data: bytes, *, sync_dir: bool = True) -> Path:
    """Atomically write ``data`` to ``path``."""
    return atomic_write(path, lambda fh: fh.write(data), sync_dir=sync_dir)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Atomically write UTF-8 ``text`` to ``path``."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """Atomically write ``obj`` as indented, key-sorted JSON."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def iter_temp_files(folder: str | Path) -> Iterator[Path]:
    """Temporary files left in ``folder`` (not recursive)."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for p in folder.iterdir():
        if p.is_file() and is_temp_file(p):
            yield p


def remove_stale_temp_files(folder: str | Path, *, include_live: bool = False,
                            dry_run: bool = False) -> list[Path]:
    """Remove temporary files whose writer process is gone (or all of them with ``include_live``);
    with ``dry_run`` only list them.

    Files of a live writer are kept so that two processes sharing a folder never delete each
    other's in-flight writes.
    """
    removed = []
    for p in iter_temp_files(folder):
        pid = _temp_owner_pid(p)
        if not include_live and pid is not None and _pid_alive(pid):
            continue
        if dry_run:
            removed.append(p)
            continue
        with contextlib.suppress(OSError):
            p.unlink()
            removed.append(p)
    return removed
