"""Ctrl-C while the heavy libraries load: defer it to a clean exit 130 instead of raising inside an import.

A KeyboardInterrupt raised in the middle of ``import numpy`` (or of torch, which imports numpy from C++ and
*swallows* a failure of it with a warning) can leave a half-initialised module behind: a later ``import
numpy`` then builds a new module while submodules already loaded still point at the half-made one, and the
run dies much later with ``module 'numpy' has no attribute 'matrix'``. So while the libraries load, SIGINT
only records that it came; once they are loaded the command exits 130 without having written anything.
A second Ctrl-C during the imports ends the process at once: nothing has been written yet, so nothing is
lost.

This module imports only the standard library, so it is cheap to import before everything else.

For tests, ``INDICATOR_TRANSFORMER_PAUSE_AT=import:numpy`` (comma-separated, like the pause points of
``faults.py``) pauses the first import of that top-level module, inside the guard: the process prints
``PAUSED import numpy`` to stderr and waits until a Ctrl-C has been held (or 60 s), then imports it. A
test thus signals the process exactly while it is loading that library, never after a guessed sleep.
"""

from __future__ import annotations

import importlib
import importlib.abc
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

MESSAGE = "Interrupted during start-up: nothing was written"
EXIT_CODE = 130  # 128 + SIGINT, as for a Ctrl-C at any other time
PAUSE_ENV = "INDICATOR_TRANSFORMER_PAUSE_AT"
PAUSE_TIMEOUT_S = 60.0
_held = [0]  # Ctrl-Cs held so far by every deferred_interrupt block (the import pauses wait on it)


class _ImportPause(importlib.abc.MetaPathFinder):
    """Test seam (see the module docstring): pause the first import of each named module."""

    def __init__(self, names: set[str]) -> None:
        self.names = names

    def find_spec(self, fullname: str, path: Sequence[str] | None, target: Any = None) -> None:
        if fullname in self.names:
            self.names.discard(fullname)
            seen = _held[0]
            os.write(2, f"PAUSED import {fullname}\n".encode())
            deadline = time.monotonic() + PAUSE_TIMEOUT_S
            while _held[0] == seen and time.monotonic() < deadline:
                time.sleep(0.01)
        return None  # the ordinary finders import it


def _install_import_pauses() -> None:
    """Once per process, when the environment asks for it."""
    names = {part.strip()[len("import:"):] for part in os.environ.get(PAUSE_ENV, "").split(",")
             if part.strip().startswith("import:")}
    if names and not any(isinstance(f, _ImportPause) for f in sys.meta_path):
        sys.meta_path.insert(0, _ImportPause(names))


@contextmanager
def deferred_interrupt() -> Iterator[None]:
    """Hold a Ctrl-C that arrives inside the block; exit 130 cleanly after the block if one came.

    Only the main thread can install signal handlers; elsewhere (and when SIGINT is ignored, as for a
    process started in the background by a non-interactive shell) the block runs unchanged.
    """
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or previous is signal.SIG_IGN:
        yield
        return
    came: list[int] = []

    def hold(signum: int, frame: object) -> None:
        _held[0] += 1
        if came:  # the second Ctrl-C: the user does not want to wait for the imports to finish
            os.write(2, (MESSAGE + "\n").encode())
            os._exit(EXIT_CODE)
        came.append(signum)

    signal.signal(signal.SIGINT, hold)
    _install_import_pauses()
    try:
        yield
    finally:
        # After a held Ctrl-C the process is on its way out: another one during the exit must not
        # turn exit code 130 into death by the signal.
        signal.signal(signal.SIGINT, signal.SIG_IGN if came else previous)
    if came:
        print(MESSAGE, file=sys.stderr)
        sys.exit(EXIT_CODE)


def launch(command: str) -> int:
    """Import ``indicator_transformer.cli.<command>`` with a Ctrl-C held, then run its ``main``.

    Every way in goes through here (the entry files, the installed console scripts, ``python -m``),
    so none of them can be interrupted in the middle of importing torch or NumPy. A command that
    imports torch later, before its SignalHandler is installed, holds a Ctrl-C there the same way
    (``cli/train.py``); once the handler is installed a Ctrl-C is a stop request.
    """
    with deferred_interrupt():
        module = importlib.import_module(f"{__package__}.cli.{command}")
        # Building any command's parser declares the features through TA-Lib (NumPy, pandas): load
        # them here too, not unguarded between this block and the command's SignalHandler.
        importlib.import_module(f"{__package__}.data.features")
    try:
        return module.main()
    except KeyboardInterrupt:
        # Only reachable before the command installs its SignalHandler (building the parser,
        # reading the flags): plain Python, nothing half-imported and nothing written yet.
        print(MESSAGE, file=sys.stderr)
        return EXIT_CODE


def train() -> int:
    """The ``train_indicator_transformer`` command."""
    return launch("train")


def resume() -> int:
    """The ``resume_training`` command."""
    return launch("resume")


def validate_cache() -> int:
    """The ``validate_cache`` command."""
    return launch("validate_cache")


def tool() -> int:
    """The ``indicator-transformer`` command (config, features, predict, evaluate, ...)."""
    return launch("main")
