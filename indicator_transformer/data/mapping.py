"""Read-only memory maps that hold no file descriptor.

Python's ``mmap.mmap`` (and so ``np.memmap``) keeps a duplicate of the file's descriptor open for
as long as the map lives. The cache maps one file per symbol, so a universe of 1,100 symbols held
1,100 descriptors and died under the common ``ulimit -n 1024`` (256 on macOS). A POSIX mapping
stays valid after its descriptor is closed, so here the file is mapped through libc's ``mmap`` and
its descriptor closed at once: descriptors in use no longer grow with the number of symbols.

The map is unmapped when the last array viewing it is garbage-collected (never at interpreter exit,
where another thread may still read it: the process's exit unmaps everything). Where libc cannot
be called (no POSIX ``mmap``), ``np.memmap`` is used as before.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
import weakref

import numpy as np


def _libc() -> ctypes.CDLL | None:
    try:
        lib = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        lib.mmap.restype = ctypes.c_void_p
        lib.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                             ctypes.c_int64]
        lib.munmap.restype = ctypes.c_int
        lib.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        return lib
    except (OSError, AttributeError):
        return None


_LIBC = _libc() if os.name == "posix" else None
_MAP_FAILED = ctypes.c_void_p(-1).value


def map_readonly(path: str | os.PathLike[str]) -> np.memmap:
    """The whole file at ``path`` as a read-only uint8 array backed by a shared memory map, with
    no descriptor left open. Slices and views of it stay maps (no copy). OSError when the file
    cannot be opened or mapped; ValueError for an empty file (nothing to map)."""
    if _LIBC is None:
        return np.memmap(path, dtype=np.uint8, mode="r")
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            raise ValueError(f"{os.fspath(path)}: cannot map an empty file")
        addr = _LIBC.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr is None or addr == _MAP_FAILED:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), os.fspath(path))
    finally:
        os.close(fd)  # the mapping stays valid without it
    buf = (ctypes.c_ubyte * size).from_address(addr)
    unmap = weakref.finalize(buf, _LIBC.munmap, addr, size)
    unmap.atexit = False
    whole = np.frombuffer(buf, dtype=np.uint8)  # keeps ``buf`` (and so the mapping) alive
    whole.flags.writeable = False  # PROT_READ: a write would be a segfault, make it an error
    # An np.memmap view: what the rest of the code and its tests know as "a map, not a copy".
    # np.memmap hands out slices as memmaps only while ``_mmap`` is set (it is what it keeps alive).
    out = whole.view(np.memmap)
    out._mmap, out.filename, out.offset, out.mode = buf, os.path.abspath(path), 0, "r"
    return out
