"""The run folder: ``runs/<UTC time>/`` with train.log, metrics.csv, summary.json and plots.

One folder per line of training, named when the run starts and recorded in every checkpoint
(``run`` field), so a resume writes into the same folder and its history reads as one run:

    train.log       every console line (stdout and stderr, the shutdown messages too), through
                    Python ``logging`` with a UTC time stamp; appended across resumes
    metrics.csv     one row per completed epoch, rewritten from the checkpoint's history at each
                    epoch end, so it always matches the newest checkpoint (a resume from an older
                    one rewrites it to that line's history)
    summary.json    configuration, data, splits, final metrics, checkpoints, interruptions,
                    durations (written at the end of every segment, also an interrupted one)
    *.png           plots (plots.py)

The folder lives beside the models folder (``--runs-dir``, default ``runs`` next to
``--models-dir``); a checkpoint only records the folder's *name*, checked to be a plain time stamp,
so a copied or edited checkpoint can never direct writes anywhere else.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import json
import logging
import os
import re
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from .atomic import atomic_write_json, atomic_write_text, remove_stale_temp_files, storage_error
from .errors import StorageError, UserError
from .folder_lock import hold_descriptor, lock_holders, release_descriptor
from .integrity import json_safe, seal_json

LOG_NAME = "train.log"
METRICS_NAME = "metrics.csv"
SUMMARY_NAME = "summary.json"
RUN_NAME = re.compile(r"\d{8}T\d{6}Z(-\d{1,4})?")  # used with fullmatch: no trailing newline
METRICS_COLUMNS = ("epoch", "segment", "train_loss", "val_loss", "val_ic", "lr", "samples_per_s", "seconds",
                   "finished", "train_baseline", "val_baseline")

_logger = logging.getLogger("indicator_transformer.console")
_logger.propagate = False  # the console already shows these lines: only the file handler gets them
_logger.setLevel(logging.INFO)


def runs_dir_for(runs_dir: str | None, models_dir: str | Path) -> Path:
    """``--runs-dir``, or ``runs`` beside the models folder."""
    return Path(runs_dir) if runs_dir else Path(models_dir).absolute().parent / "runs"


def new_run_name(runs_dir: Path, now: datetime | None = None) -> str:
    """``YYYYmmddTHHMMSSZ`` of now (UTC), with ``-2``, ``-3``... when that folder exists."""
    base = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    name, k = base, 1
    while (runs_dir / name).exists():
        k += 1
        name = f"{base}-{k}"
    return name


def unfinished_run(runs_dir: Path, models_dir: str | Path | None = None) -> str | None:
    """The newest run folder in ``runs_dir`` (of those opened for ``models_dir``, when given) that
    has a train.log but no summary.json: one whose only segment was killed before it could end
    (what a torchrun restart without a checkpoint continues), and that no live run holds. None
    when there is none. A runs folder shared by several models folders holds their runs side by
    side: another one's, live or not, is never adopted."""
    try:
        names = sorted((p.name for p in runs_dir.iterdir() if RUN_NAME.fullmatch(p.name) and p.is_dir()
                        and not p.is_symlink()
                        and (models_dir is None or _owner(p) == _abs(models_dir))), key=_run_order)
    except OSError:
        return None
    if not names:  # only the newest one may be adopted: an older unfinished run is another job's
        return None
    newest = runs_dir / names[-1]
    if lock_holders(newest):  # its run is alive (another process that started it)
        return None
    return names[-1] if (newest / LOG_NAME).is_file() and not (newest / SUMMARY_NAME).exists() else None


OWNER_NAME = ".owner"  # {"models_dir": absolute path} of the run that opened the folder


def _abs(path: str | Path) -> str:
    return os.path.normpath(os.path.abspath(path))


def _owner(folder: Path) -> str | None:
    try:
        doc = json.loads((folder / OWNER_NAME).read_text(encoding="utf-8"))
        return str(doc["models_dir"]) if isinstance(doc, dict) else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _run_order(name: str) -> tuple[str, int]:
    stamp, _, n = name.partition("-")
    return stamp, int(n or 0)


def check_run_record(run: Any) -> str | None:
    """What is wrong with a checkpoint's ``run`` record, or None (used by checkpoint validation)."""
    if not isinstance(run, dict):
        return "a dict {name, segments}"
    if not isinstance(run.get("name"), str) or not RUN_NAME.fullmatch(run["name"]):
        return "a run folder name like 20261129T142925Z"
    segs = run.get("segments")
    if not isinstance(segs, list) or not segs or not all(
            isinstance(s, list) and len(s) == 2 and isinstance(s[0], int) and not isinstance(s[0], bool)
            and s[0] >= 0 and isinstance(s[1], str) for s in segs):
        return "segments: a list of [global step, start time] pairs"
    steps = [s[0] for s in segs]
    if steps != sorted(steps):
        return "segments in order of their global step"
    return None


class RunFolder:
    """One run folder, and the record of it that goes into checkpoints."""

    def __init__(self, root: Path, name: str, segments: list[list[Any]]) -> None:
        self.root = root / name
        self.name = name
        self.segments = segments  # [[global step where the segment began, UTC start time], ...]
        self.existed = False      # the folder was there before this segment (a resume found it)
        self._identity: tuple[str, int, int] | None = None  # (absolute path, device, inode) at start
        self._fd = -1               # the descriptor holding the folder's flock
        self.displaced: str | None = None  # a recorded folder another live run holds

    @classmethod
    def start(cls, runs_dir: Path, record: dict[str, Any] | None, global_step: int,
              models_dir: str | Path | None = None) -> RunFolder:
        """A new folder (``record`` None: a fresh run, or a checkpoint from before run folders), or
        the recorded one with a new segment beginning at ``global_step``. The folder is held (a
        flock on it) until :meth:`close`: a recorded folder that another live process holds (two
        models folders whose checkpoints name one run folder) is not written into; this segment
        gets a new folder instead (:attr:`displaced` names the other)."""
        now = datetime.now(UTC)
        stamp = now.isoformat(timespec="seconds")
        displaced = None
        if record is not None and lock_holders(runs_dir / record["name"]):
            displaced, record = record["name"], None
        if record is None:
            _make_folder(runs_dir, "--runs-dir")
            folder = cls(runs_dir, new_run_name(runs_dir, now), [[global_step, stamp]])
        else:
            # Segments after the resume point belong to a later history this resume replaces.
            kept = [list(s) for s in record["segments"] if s[0] <= global_step]
            folder = cls(runs_dir, record["name"], kept + [[global_step, stamp]])
        folder.displaced = displaced
        folder.existed = folder.root.is_dir()
        _make_folder(folder.root, "the run folder")
        folder._hold()
        if models_dir is not None and _owner(folder.root) is None:
            with contextlib.suppress(OSError, UserError):  # says who may adopt it; not the record
                atomic_write_json(folder.root / OWNER_NAME, {"models_dir": _abs(models_dir)})
        st = folder.root.stat()
        folder._identity = (str(folder.root.absolute()), st.st_dev, st.st_ino)
        remove_stale_temp_files(folder.root)  # left by a writer that was killed (kill -9)
        return folder

    def _hold(self) -> None:
        """Take the folder's flock (released by :meth:`close`, or when the process ends)."""
        try:
            fd = os.open(self.root, os.O_RDONLY | os.O_CLOEXEC | getattr(os, "O_DIRECTORY", 0))
        except OSError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held by a process that started meanwhile, or no locks here: not ours
            os.close(fd)
            return
        self._fd = fd
        hold_descriptor(fd)

    def close(self) -> None:
        """Let the folder go (its files stay)."""
        if self._fd >= 0:
            release_descriptor(self._fd)
            self._fd = -1

    def check(self) -> None:
        """StorageError when the run folder is no longer the one this segment opened (it, or the
        runs folder above it, was moved or removed): a write by its path would make a partial run
        folder at the old name, or put this run's files into another's."""
        if self._identity is None:
            return
        where, dev, ino = self._identity
        try:
            st = Path(where).stat()
            same = (st.st_dev, st.st_ino) == (dev, ino)
        except OSError:
            same = False
        if not same:
            raise StorageError(f"{where}: the run folder was moved or removed while the run ran (it, or "
                               f"the runs folder above it); nothing more is written there. Its train.log "
                               f"went with it; the checkpoints are intact: resume_training.py continues")

    @property
    def segment(self) -> int:
        """0 for the first run, 1 for the first resume, ..."""
        return len(self.segments) - 1

    def record(self) -> dict[str, Any]:
        """What a checkpoint stores."""
        return {"name": self.name, "segments": [list(s) for s in self.segments]}

    def resume_steps(self) -> list[int]:
        """Global steps at which a resumed segment began (for the loss plot's markers)."""
        return [s[0] for s in self.segments[1:]]

    def write_metrics(self, history: list[dict[str, Any]]) -> Path:
        """metrics.csv from the whole epoch history (atomic: never a half-written table)."""
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(METRICS_COLUMNS)
        for e in history:
            w.writerow(["" if e.get(c) is None else _cell(e.get(c)) for c in METRICS_COLUMNS])
        self.check()
        return atomic_write_text(self.root / METRICS_NAME, buf.getvalue())

    def write_summary(self, summary: dict[str, Any]) -> Path:
        """summary.json (sealed like every JSON this tool writes; undefined numbers are null)."""
        self.check()
        return atomic_write_json(self.root / SUMMARY_NAME, seal_json(json_safe(summary)))


def _make_folder(path: Path, what: str) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UserError(f"{what} {path}: a file is in the way of this folder (move it, or choose "
                        f"another --runs-dir)") from None
    except OSError as e:  # a read-only or full disk, permissions: said as for any refused write
        refused = storage_error(path, e, f"{what}: cannot create it")
        raise refused or UserError(f"{what} {path}: cannot create it ({e.strerror or e})") from None


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


# ----------------------------------------------------------------------------- the console log
class _Tee(io.TextIOBase):
    """A text stream that writes through to the console and hands each complete line to logging.

    Progress bars redraw a line with carriage returns; only the last state of such a line is
    logged. Everything else (isatty, fileno, encoding) is the console stream's."""

    def __init__(self, console: TextIO, log: ConsoleLog) -> None:
        self._console = console
        self._log = log
        self._partial = ""

    def write(self, text: str) -> int:
        n = self._console.write(text)
        self._log.feed(self, text)
        return n

    def flush(self) -> None:
        self._console.flush()

    def isatty(self) -> bool:
        return self._console.isatty()

    def fileno(self) -> int:
        return self._console.fileno()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._console, name)


class ConsoleLog:
    """Copies every console line into the run folder's train.log, from the command's start.

    Lines written before the run folder is known (preparation) are kept and written when it is
    attached. Messages the signal handler writes with ``os.write`` are queued by
    :mod:`shutdown` and logged at the next line, so train.log holds the shutdown messages in
    order. Used as a context manager around a whole command."""

    def __init__(self) -> None:
        self._early: list[logging.LogRecord] = []
        self._handler: logging.Handler | None = None
        self._saved: tuple[Any, Any] | None = None
        self._lock = threading.RLock()

    def __enter__(self) -> ConsoleLog:
        from .shutdown import take_console_messages

        take_console_messages()  # left over from an earlier command in this process
        self._saved = (sys.stdout, sys.stderr)
        sys.stdout = _Tee(sys.stdout, self)  # type: ignore[assignment]
        sys.stderr = _Tee(sys.stderr, self)  # type: ignore[assignment]
        return self

    def __exit__(self, *exc: Any) -> None:
        self._drain_signal_messages()
        for tee in (sys.stdout, sys.stderr):
            if isinstance(tee, _Tee) and tee._partial:
                self._emit(tee._partial)
                tee._partial = ""
        if self._saved is not None:
            sys.stdout, sys.stderr = self._saved
        if self._handler is not None:
            _logger.removeHandler(self._handler)
            self._handler.close()
            self._handler = None

    def attach(self, path: Path) -> None:
        """Start writing to ``path`` (appending), beginning with the lines kept so far."""
        with self._lock:
            if self._handler is not None:
                _logger.removeHandler(self._handler)
                self._handler.close()
            handler = _LogFile(path, mode="a", encoding="utf-8")
            fmt = logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%dT%H:%M:%SZ")
            fmt.converter = _utc_struct_time
            handler.setFormatter(fmt)
            for record in self._early:
                handler.handle(record)
            self._early.clear()
            self._handler = handler
            _logger.addHandler(handler)

    def feed(self, tee: _Tee, text: str) -> None:
        """Split what a stream wrote into lines and log the complete ones."""
        with self._lock:
            self._drain_signal_messages()
            data = tee._partial + text
            *lines, tee._partial = data.split("\n")
            for line in lines:
                self._emit(line)

    def _emit(self, line: str) -> None:
        line = line.rsplit("\r", 1)[-1].rstrip()  # a redrawn progress bar: its last state
        if not line:
            return
        if self._handler is None:
            self._early.append(_logger.makeRecord(_logger.name, logging.INFO, "", 0, line, None, None))
        else:
            _logger.info(line)

    def _drain_signal_messages(self) -> None:
        from .shutdown import take_console_messages

        for msg in take_console_messages():
            for line in msg.split("\n"):
                self._emit(line)


def _utc_struct_time(seconds: float | None):  # noqa: ANN202 - logging's converter signature
    import time

    return time.gmtime(seconds)


_current: ConsoleLog | None = None


@contextlib.contextmanager
def console_log() -> Iterator[ConsoleLog]:
    """Install a :class:`ConsoleLog` for the duration of a command (nested calls share it)."""
    global _current
    if _current is not None:
        yield _current
        return
    log = ConsoleLog()
    _current = log
    try:
        with log:
            yield log
    finally:
        _current = None


class _LogFile(logging.FileHandler):
    """train.log: a failed write (a full disk) is said once on the console, not as logging's
    traceback after every line; the console itself goes on."""

    _failed = False

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        if not self._failed:
            self._failed = True
            err = sys.exc_info()[1]
            sys.stderr.write(f"warning: {self.baseFilename}: could not append to the run log ({err}); "
                             f"the console output goes on\n")


def attach_console_log(path: Path) -> None:
    """Send the console lines of the current command to ``path`` (no-op outside a command)."""
    if _current is not None:
        _current.attach(path)
