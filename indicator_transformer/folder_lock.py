"""Locks between processes sharing a folder: one live writer per models folder, and the feature
cache shared by preparers while maintenance waits its turn.

    with hold_folder(models_dir, "train"):       # FolderInUse (exit 2) when another process has it
        ...                                      # archive, train, checkpoints, retention, report

The lock is ``fcntl.flock`` on the folder itself; ``<folder>/.lock`` names its holder (PID, command,
start time, host) so that a refusal can say who to stop. The kernel releases a flock when the
holder's last descriptor closes, however the process ends (``kill -9`` included), so a lock left by
a dead process is simply free for the next one: there is no stale-lock file to detect or remove.
On a network filesystem the same call is forwarded to the server's lock manager (NFSv4 and Linux
NFSv3 with lockd); a filesystem that supports no locks gets a warning and no protection.

Only writers take it: ``predict``, ``evaluate`` and ``resume --list`` read files that are
written atomically, so they never block and never see half a file.

The feature cache is shared differently: every preparation holds ``cache/.in-use`` *shared*
(:func:`hold_cache`), so any number of runs prepare side by side (each entry is committed
atomically, under the manifest's own lock), while ``validate_cache.py``'s repair and
``--clear-all`` need it *exclusively* and refuse, naming the PIDs,
while a preparation is active; a preparation that finds maintenance at work refuses the same way.

Worker processes forked while a lock is held would inherit the descriptor and keep the lock
after their parent died; each child closes its copy at fork (the parent's copy keeps the lock).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import stat
import sys
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from .atomic import storage_error
from .errors import FolderMoved, StorageError, UserError

LOCK_NAME = ".lock"
_held: set[int] = set()  # descriptors this process holds a folder lock on


def _close_in_child() -> None:
    for fd in list(_held):
        with contextlib.suppress(OSError):
            os.close(fd)
    _held.clear()


os.register_at_fork(after_in_child=_close_in_child)


def hold_descriptor(fd: int) -> None:
    """Count ``fd`` (holding a flock) among this process's locks: a forked child closes its copy."""
    _held.add(fd)


def release_descriptor(fd: int) -> None:
    """Close a descriptor given to :func:`hold_descriptor` (its flock is released)."""
    _held.discard(fd)
    with contextlib.suppress(OSError):
        os.close(fd)


class FolderInUse(UserError):
    """Another live process holds the folder (exit code 2)."""


def holder_text(raw: bytes) -> str:
    """'PID N (train, started <time> on <host>)' from a lock file's content, or a plain phrase
    when it is empty or unreadable (its holder has just taken it and not yet written its name)."""
    try:
        doc = json.loads(raw.decode("utf-8"))
        where = f" on {doc['host']}" if doc.get("host") and doc["host"] != socket.gethostname() else ""
        return f"PID {int(doc['pid'])} ({doc['command']}, started {doc['started']}{where})"
    except (ValueError, KeyError, TypeError, AttributeError):
        return "another process (it is starting up)"


def _open_failed(path: Path, e: OSError) -> UserError:
    """A lock file that cannot be opened: a storage refusal (read-only, permissions) is said as
    for any write, anything else with the OS's words."""
    return (storage_error(path, e, "the folder's lock file could not be opened")
            or UserError(f"{path}: cannot open the folder's lock file ({e.strerror or e})"))


_NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL, errno.EBADF)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # a FIFO swapped in at the name must not block the open


@contextlib.contextmanager
def hold_folder(folder: str | Path, command: str, flag: str = "--models-dir", *,
                create: bool = True) -> Iterator[Path]:
    """Hold ``folder`` for the ``with`` block; FolderInUse naming the holder and ``flag`` when
    another live process holds it. Yields the path of the file naming the holder.

    ``create``: make the folder when it is missing; a folder made here that holds nothing but the
    holder file at the end (the command failed or was stopped before it wrote anything) is removed
    again, so bad input leaves nothing behind. Without ``create`` a missing folder is refused
    (FolderInUse: it was there when the command chose what to do in it).

    The flock is on the folder itself (a read-only descriptor of the directory), so removing or
    replacing ``.lock`` by hand cannot let a second run in, and no descriptor open for writing
    keeps the filesystem from being remounted read-only. Where a directory cannot be locked (NFS
    emulates flock with POSIX locks, which need a file open for writing) the ``.lock`` file is."""
    d = Path(folder)
    path = d / LOCK_NAME
    fd, made, on_folder = _lock_folder(d, path, flag, create)
    _held.add(fd)
    st = os.fstat(fd) if on_folder else os.stat(d)
    _held_folders[str(d)] = (os.path.abspath(d), st.st_dev, st.st_ino, fd, on_folder)
    try:
        me = {"pid": os.getpid(), "command": command, "host": socket.gethostname(),
              "started": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"), "argv": sys.argv[:8]}
        try:  # for messages; the flock is the lock. Its first write also proves the folder writable.
            _write_holder(path, json.dumps(me).encode("utf-8"))
        except OSError as e:
            raise _open_failed(path, e) from None
        yield path
    finally:
        _held.discard(fd)
        with contextlib.suppress(OSError, StorageError):  # read-only, moved or removed meanwhile
            check_still_held(d)  # a folder made anew at that name is another run's: not touched
            _write_holder(path, b"")  # a later reader of a free lock finds no stale name
            if made and on_folder and os.listdir(d) == [LOCK_NAME]:
                # Still held, so no other process can be inside: one that opened the folder
                # meanwhile finds it gone once it gets the lock, and makes its own.
                os.unlink(path)
                os.rmdir(d)
                for parent in made[1:]:  # the folders above it that were made for it, if empty
                    os.rmdir(parent)
        _held_folders.pop(str(d), None)
        os.close(fd)  # releases the flock


def _lock_folder(d: Path, path: Path, flag: str, create: bool) -> tuple[int, list[Path], bool]:
    """(descriptor holding the lock, the folders made here - the folder first, then the ones above
    it that were missing too -, whether the lock is on the folder itself rather than on the holder
    file). A lock got on a folder that has meanwhile been removed or replaced (its last holder
    removed it as empty) is let go and taken again."""
    for _ in range(50):
        made: list[Path] = []
        try:
            if create:
                made = _make_folders(d)
            _refuse_odd_file(path)
            fd = os.open(d, os.O_RDONLY | os.O_CLOEXEC | getattr(os, "O_DIRECTORY", 0))
        except FileNotFoundError:
            if create:
                continue  # removed between the mkdir and the open: make it again
            raise FolderInUse(f"{d}/ was moved or removed after this command chose what to continue "
                              f"there; run the command again") from None
        except OSError as e:
            raise _open_failed(path, e) from None
        on_folder = True
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno not in _NO_LOCKS:
                    raise
                os.close(fd)
                fd = -1
                fd = _lock_the_file(path)
                on_folder = False
        except BlockingIOError:
            if fd >= 0:
                os.close(fd)
            raise FolderInUse(f"{d}/ is in use by {holder_text(_read_holder(path))}; use another {flag} "
                              f"or stop it") from None
        except BaseException:
            if fd >= 0:
                os.close(fd)
            raise
        try:
            here = os.stat(d if on_folder else path, follow_symlinks=on_folder)
            same = (here.st_dev, here.st_ino) == (lambda s: (s.st_dev, s.st_ino))(os.fstat(fd))
        except OSError:
            same = False
        if same:
            return fd, made, on_folder
        os.close(fd)
    raise FolderInUse(f"{d}/ keeps being removed or replaced by another process; stop it and run the "
                      f"command again")


def _make_folders(d: Path) -> list[Path]:
    """Make ``d`` and any missing folder above it; the ones made, ``d`` first ([] if it existed)."""
    missing = []
    p = d.absolute()
    while not p.exists() and p.parent != p:
        missing.append(p)
        p = p.parent
    try:
        d.mkdir(parents=True)
    except FileExistsError:  # another process made it meanwhile: it is not ours to remove
        return []
    return missing


def folder_holder(folder: str | Path) -> str | None:
    """'PID N (train, ...)' when a live process holds ``folder`` (see :func:`hold_folder`), else
    None (also when it cannot be told: no folder, no /proc/locks, a holder file lock on NFS). It
    only reads /proc/locks: asking never takes the lock, so it never refuses a starting run."""
    if not lock_holders(Path(folder)):
        return None
    text = holder_text(_read_holder(Path(folder) / LOCK_NAME))
    return text if text.startswith("PID") else f"{_pids_text(Path(folder))} (starting up)"


# The folder as named -> (its absolute path, device, inode, the descriptor holding the lock, whether
# that is the folder's own) when it was locked: the absolute path is taken then, as the working
# folder may be gone by the time of a check.
_held_folders: dict[str, tuple[str, int, int, int, bool]] = {}


def moved_to(folder: str | Path) -> Path | None:
    """Where the folder this process holds is now, when it was moved (renamed) and still exists:
    the lock is on the folder itself, so the kernel knows its new name (Linux: /proc/self/fd).
    None when it is where it was, was removed, or this cannot be told."""
    held = _held_folders.get(str(Path(folder)))
    if held is None:
        return None
    where, dev, ino, fd, on_folder = held
    try:  # still there under its name (also through a symbolic link): not moved
        st = os.stat(where)
        if (st.st_dev, st.st_ino) == (dev, ino):
            return None
    except OSError:
        pass
    try:
        link = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None
    if link.endswith(" (deleted)") or not link.startswith("/"):
        return None
    now = Path(link) if on_folder else Path(link).parent
    return None if str(now) == where else now


def check_still_held(folder: str | Path) -> None:
    """StorageError when ``folder``, held by this process, is no longer the folder it locked
    (moved, or removed and made again by another run): writing by its path would put this run's
    files among another's. A folder this process does not hold passes."""
    held = _held_folders.get(str(Path(folder)))
    if held is None:
        return
    where, dev, ino = held[:3]
    try:
        st = os.stat(where)
        now: tuple[int, int] | None = (st.st_dev, st.st_ino)
    except OSError:
        now = None
    if now == (dev, ino):
        return
    other = "" if now is None else ", where another folder is now"
    went = moved_to(folder)
    if went is not None:
        raise FolderMoved(f"{folder}: the folder this run holds was moved to {went} while it ran; nothing "
                           f"more is written at the old name{other}. Its files are in {went}: continue "
                           f"with resume_training.py --models-dir {went}")
    raise FolderMoved(f"{folder}: the folder this run holds was removed while it ran{other}; nothing more "
                       f"is written there")


def explain_move(e: Exception, folder: str | Path) -> Exception:
    """``e``, or the FolderMoved saying that ``folder`` (held by this process) was moved or
    removed, when it was: a write that failed because of that (ENOENT halfway through) then names
    the cause, not the symptom. A FolderMoved already says so (and what was saved where it went)."""
    if isinstance(e, FolderMoved):
        return e
    try:
        check_still_held(folder)
    except FolderMoved as moved:
        return moved
    return e


def _refuse_odd_file(path: Path) -> None:
    """A directory, FIFO, device or link at the holder file's name is refused, not opened (a FIFO
    would block the open for ever)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISREG(st.st_mode):
        kind = ("a folder" if stat.S_ISDIR(st.st_mode) else "a symbolic link" if stat.S_ISLNK(st.st_mode)
                else "a named pipe" if stat.S_ISFIFO(st.st_mode) else "not a regular file")
        raise UserError(f"{path}: cannot open the folder's lock file (it is {kind}); remove it and run the "
                        f"command again")


def _lock_the_file(path: Path) -> int:
    """The fallback lock: a flock on the holder file, opened for writing; a warning and no
    protection where the filesystem supports no locks at all."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | _NOFOLLOW | _NONBLOCK, 0o644)
    except OSError as e:
        raise _open_failed(path, e) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise
    except OSError as e:
        if e.errno not in _NO_LOCKS:
            os.close(fd)
            raise
        warnings.warn(f"{path.parent}: this filesystem does not support file locks ({e.strerror}): a "
                      f"second run in this folder would not be refused", stacklevel=3)
    return fd


def _read_holder(path: Path) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | _NOFOLLOW | _NONBLOCK)
    except OSError:
        return b""
    try:
        return os.read(fd, 4096) if stat.S_ISREG(os.fstat(fd).st_mode) else b""
    finally:
        os.close(fd)


def _write_holder(path: Path, data: bytes) -> None:
    """Replace the holder file's content in place (created if missing, never through a link)."""
    w = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | _NOFOLLOW | _NONBLOCK, 0o644)
    try:
        if not stat.S_ISREG(os.fstat(w).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        os.write(w, data)
    finally:
        os.close(w)


class CacheInUse(UserError):
    """The cache is being prepared (or maintained) by another process (exit code 2)."""


def lock_holders(path: Path) -> list[int]:
    """PIDs holding a flock on ``path``, from /proc/locks (Linux); [] where unknown."""
    try:
        st = os.stat(path)
        text = Path("/proc/locks").read_text()
    except OSError:
        return []
    dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    pids = []
    for line in text.splitlines():
        parts = line.split()
        if "->" in parts or len(parts) < 6 or parts[1] != "FLOCK":
            continue  # a waiter's line, or another kind of lock
        if parts[5] == dev and parts[4].isdigit() and int(parts[4]) != os.getpid():
            pids.append(int(parts[4]))
    return sorted(set(pids))


def _pids_text(path: Path) -> str:
    pids = lock_holders(path)
    return (f"PID{'s' if len(pids) > 1 else ''} {', '.join(map(str, pids))}" if pids
            else "another process")


@contextlib.contextmanager
def hold_cache(folder: str | Path, name: str, *, exclusive: bool, busy: str) -> Iterator[None]:
    """Hold ``folder/name`` for the block: shared (a preparation) or ``exclusive`` (maintenance);
    CacheInUse with ``busy`` (its ``{pids}`` filled with the holders) when another process's hold
    conflicts. ``folder`` must exist. A filesystem without locks shares without protection."""
    path = Path(folder) / name
    for _ in range(50):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC | _NOFOLLOW | _NONBLOCK, 0o644)
        except FileNotFoundError:  # the folder itself was removed: a --clear-all has just run
            raise CacheInUse(busy.format(pids="a process that has just removed it")) from None
        except OSError as e:
            raise _open_failed(path, e) from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # a FIFO or device swapped in at the name
            os.close(fd)
            _refuse_odd_file(path)
            raise UserError(f"{path}: cannot open the folder's lock file (not a regular file)")
        try:
            fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise CacheInUse(busy.format(pids=_pids_text(path))) from None
        except OSError as e:
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                os.close(fd)
                raise
        # Locked, but maybe a file a --clear-all had already unlinked: lock the one under the name.
        try:
            same = os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
        except OSError:
            same = False
        if same:
            break
        os.close(fd)
    else:
        raise CacheInUse(busy.format(pids="another process (its lock file keeps being replaced)"))
    _held.add(fd)
    try:
        yield
    finally:
        _held.discard(fd)
        os.close(fd)
