"""What every command shares: error-to-exit-code mapping and warning format."""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import sys
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from .. import faults, startup
from ..config import Config, flag_name
from ..errors import EXIT_FAILURE, UserError, too_many_open_files
from ..runlog import console_log
from ..shutdown import SignalHandler, print_cleanup_complete
from ..training import distributed


def _format_warning(message, category, filename, lineno, line=None) -> str:  # noqa: ANN001
    return f"warning: {message}\n"


def raise_open_file_limit() -> None:
    """Raise this process's soft limit on open files to its hard limit (what a user could do with
    ``ulimit -n``): files, sockets of a torchrun job and worker pipes are then not bounded by a
    low default (256 on macOS). The cache's maps hold no descriptor at all (data/mapping.py)."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 16)
        if soft != resource.RLIM_INFINITY and soft < want:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    except (ImportError, ValueError, OSError):  # no such limit here, or it may not be raised
        pass


def run_command(parser: argparse.ArgumentParser, run: Callable[[argparse.Namespace], int],
                argv: list[str] | None = None) -> int:
    """Parse ``argv``, call ``run`` and turn exceptions into the documented exit codes.

    A :class:`UserError` prints one ``error:`` line (no traceback) and returns 2; anything
    unexpected prints its traceback and returns 1.
    """
    global _as_program
    _as_program = argv is None  # console scripts and the entry files pass no argv
    warnings.formatwarning = _format_warning
    if _as_program:
        raise_open_file_limit()
    try:
        args = parser.parse_args(argv)  # exits 2 with a usage message on bad flags
    except SystemExit as e:
        if _as_program and distributed.under_torchrun():
            _exit_now(e.code if isinstance(e.code, int) else 2)
        raise
    # Every console line of the command (errors and Cleanup complete included) also goes to the
    # run's train.log once the pipeline names its run folder; nothing is written before that.
    with console_log():
        try:
            code = run(args)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
            code = e.exit_code
        except OSError as e:
            if e.errno not in (errno.EMFILE, errno.ENFILE):
                traceback.print_exc()
                code = EXIT_FAILURE
            else:  # the limit of open files, met anywhere: one line saying how to raise it
                what = f"{e.filename}: could not be opened" if e.filename else "a file or pipe: not made"
                print(f"error: {too_many_open_files(what)}", file=sys.stderr, flush=True)
                code = EXIT_FAILURE
        except KeyboardInterrupt:  # only reachable before a SignalHandler is installed: nothing written
            print(startup.MESSAGE, file=sys.stderr, flush=True)
            code = 130
        except Exception:
            traceback.print_exc()
            code = EXIT_FAILURE
    faults.point("exiting", code)  # a test's signal lands here: during the interpreter's exit
    if _as_program and (distributed.used() or distributed.under_torchrun()):
        _exit_now(code)
    return code


def is_program() -> bool:
    """Whether this process is the command itself (not a Python caller of ``main``)."""
    return _as_program


def _exit_now(code: int) -> NoReturn:
    """End a torchrun rank after everything is written, flushed and closed, without the
    interpreter's teardown: destroying the process group's threads there rarely aborted a
    finished rank (SIGABRT), which torchrun reports as a failure and may even restart; and a rank
    that is still tearing down when another one's exit makes torchrun SIGTERM the rest is reported
    as killed (-15) instead of with its own exit code."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


_as_program = False  # set by run_command: this process is the command, not a Python caller


def run_with_handler(body: Callable[[SignalHandler], int]) -> int:
    """Install the SignalHandler, run ``body(handler)``, and on a stop print ``Cleanup complete``
    last, after everything was saved and the previous signal handlers were restored.

    One exception: when this process *is* the command, stop signals are ignored from then on
    (its work is saved, finished or stopped, and it is only exiting) instead of going back to
    Python's defaults, which during the interpreter's exit would print a KeyboardInterrupt
    traceback (after ``Cleanup complete``, or after the report of a finished run) or end the
    process by the signal instead of its exit code. Called from Python, the previous
    handlers are always restored."""
    handler = SignalHandler()
    handler.install()
    with console_log():  # shared with run_command's: Cleanup complete is logged too
        try:
            code = body(handler)
        except UserError as e:
            if not handler.shutdown_requested:
                raise
            # A storage fault (or any user-facing error) met on the way out of a stop: said in
            # one line before "Cleanup complete", and the exit code stays the signal's.
            print(f"error: {e}", file=sys.stderr, flush=True)
            code = handler.exit_code
        finally:
            if _as_program:
                handler.ignore_from_now_on()
            else:
                handler.restore()
            if handler.shutdown_requested:
                print_cleanup_complete()
    return handler.exit_code if handler.shutdown_requested else code


def check_folders(cfg: Config, *, models: bool = True) -> None:
    """Refuse, before anything is read, prepared or trained, an output folder that cannot be one:
    a path that is a file (or has a file among its parents), or a folder that cannot be written.
    Otherwise the mistake surfaces as an OSError traceback - for ``--models-dir`` only at the
    first checkpoint, after the whole preparation and an epoch of training."""
    from ..runlog import runs_dir_for

    folders = [("cache_dir", cfg.data.cache_dir)] + ([("models_dir", cfg.train.models_dir),
                                                      ("runs_dir", str(runs_dir_for(cfg.train.runs_dir,
                                                                                    cfg.train.models_dir)))]
                                                     if models else [])
    for key, folder in folders:
        flag = f"{key} (--{key.replace('_', '-')})"
        try:
            check_writable_folder(Path(folder))
        except UserError as e:
            raise UserError(f"{flag} {folder}: {e}") from None
        except OSError as e:  # a name too long, a loop of links...
            raise UserError(f"{flag} {folder}: unusable as a folder ({e.strerror or e})") from None


def check_writable_folder(path: Path) -> None:
    """Raise a UserError saying why ``path`` cannot be (made into) a writable folder: it is a
    file, an existing ancestor is not a folder, or the nearest existing ancestor is not writable."""
    if path.exists() and not path.is_dir():
        raise UserError("is not a folder")
    existing = path
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{existing} is not a folder, so it cannot hold one")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{existing} is not writable")


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def print_table(headers: list[str], rows: list[list[str]], stream=None) -> None:  # noqa: ANN001
    """A plain aligned text table."""
    stream = stream or sys.stdout
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=False)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip(), file=stream)
    print("  ".join("-" * w for w in widths), file=stream)
    for r in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip(), file=stream)


def locate_data(state: dict[str, Any], saved: Config, overrides: dict[str, Any], path: Path) -> None:
    """Where a checkpoint's data is when no flag says it (resume, predict): the path as given at
    training time, or its recorded absolute form when this command runs from another folder. A
    path that exists in neither form is an error that says it came from the checkpoint and how to
    override it."""
    if "data_dir" in overrides or "data_file" in overrides:
        return
    recorded = state.get("data_location", {})
    for key in ("data_dir", "data_file"):
        given = getattr(saved.data, key)
        if given is None or Path(given).exists():
            continue
        absolute = recorded.get(key)
        if isinstance(absolute, str) and Path(absolute).exists():
            print(f"note: using {key} {absolute} recorded in {path} ({given} is relative to the "
                  f"folder training ran in)", file=sys.stderr)
            overrides[key] = absolute
            continue
        raise UserError(f"{path}: the {key.replace('_', ' ')} recorded in this checkpoint, {given}"
                        + (f" ({absolute})" if isinstance(absolute, str) and absolute != given else "")
                        + f", does not exist; pass {flag_name(key)} to say where the data is now")


# --save-predictions of train and resume (a switch: which files one invocation writes).
SAVE_PREDICTIONS_HELP = ("also write the test split's predictions to the run folder's predictions.csv: "
                         "symbol, time, the model's predicted return and rank, split, the realised "
                         "forward return, and every baseline's prediction (the columns of `predict --all "
                         "--baselines`), for a backtest of your own. A switch, not a saved setting")
