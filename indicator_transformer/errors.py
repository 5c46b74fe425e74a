"""Exceptions that map to the documented exit codes.

Exit codes: 0 done; 130 stopped by SIGINT after saving; 143 stopped by SIGTERM after saving;
2 bad input or usage; 1 anything else.
"""

from __future__ import annotations

import re
from pathlib import Path

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


class UserError(Exception):
    """A mistake in the user's input or flags: reported in one message, exit code 2, no traceback."""

    exit_code = EXIT_USAGE


class ConfigError(UserError):
    """A bad configuration value or structure. ``key`` names the setting (None: the structure),
    ``detail`` says what is wrong, ``source`` where it came from (file, flag, checkpoint)."""

    def __init__(self, detail: str, key: str | None = None, source: str | None = None) -> None:
        self.detail, self.key, self.source = detail, key, source
        super().__init__(f"{source}: {detail}" if source else detail)

    def at(self, source: str) -> ConfigError:
        """The same error attributed to ``source``."""
        return ConfigError(self.detail, self.key, source)


class DataError(UserError):
    """Bad OHLCV input. The message names the file, the row or column, and what was expected."""

    def __init__(self, path: object, problem: str, *, row: int | None = None, column: str | None = None):
        self.path = str(path)
        self.row = row
        self.column = column
        self.problem = problem = _shorten_quoted(problem)
        where = self.path
        if row is not None:
            where += f", row {row}"
        if column is not None:
            where += f", column '{column}'"
        super().__init__(f"{where}: {problem}")


def _shorten_quoted(text: str, keep: int = 60) -> str:
    """Quoted values longer than ``keep`` characters are cut (a garbage line can be megabytes
    long, and the message only has to show which value it was)."""
    return re.sub(r"'([^']{" + str(keep) + r"})([^']{20,})'",
                  lambda m: f"'{m.group(1)}...' ({len(m.group(1)) + len(m.group(2)):,} characters)", text)


class DataErrors(UserError):
    """Several bad input files, reported together."""

    def __init__(self, errors: list[DataError]):
        self.errors = errors
        lines = [f"{len(errors)} input file(s) are invalid:"] + [f"  - {e}" for e in errors]
        lines.append("Fix them, or pass --skip-bad-files to use the valid files only.")
        super().__init__("\n".join(lines))


class CheckpointError(UserError):
    """A checkpoint that cannot be used: corrupt, truncated, unsafe or incompatible."""


class TrainingDiverged(UserError):
    """The loss became NaN or infinite: reported without a traceback, exit code 1."""

    exit_code = EXIT_FAILURE


class StorageError(UserError):
    """A write the storage refused (read-only, permission, I/O error, a folder gone, no space): one
    clear message naming the file, the cause and what to do, exit code 1. The file's previous
    version is intact (every write is atomic)."""

    exit_code = EXIT_FAILURE


class FolderMoved(StorageError):
    """A folder a run holds was moved or removed under it (exit code 1): said once, with where it
    went and what was saved there (``saved``: the checkpoint written where the folder went, if
    any)."""

    def __init__(self, message: str, saved: Path | None = None) -> None:
        super().__init__(message)
        self.saved = saved


class OutOfMemory(UserError):
    """Memory ran out in a training step: one message saying what to change, exit code 1."""

    exit_code = EXIT_FAILURE


class StorageFull(StorageError):
    """A write failed for lack of space (or a file-size limit): the space it took is freed."""


class TooManyOpenFiles(StorageError):
    """The process reached its limit of open files (``ulimit -n``) while writing a file or starting
    a worker: said as a storage refusal is (one line, what failed, how to raise the limit), since
    nothing saved is lost and the same command continues once the limit is raised."""


def too_many_open_files(what: str) -> TooManyOpenFiles:
    """The error for ``what`` (a file that could not be written, a worker that could not start)
    failing with EMFILE or ENFILE, with this process's limit and how to raise it."""
    try:
        import resource

        soft = f"at most {resource.getrlimit(resource.RLIMIT_NOFILE)[0]:,}"
    except (ImportError, OSError, ValueError):
        soft = "no more"
    return TooManyOpenFiles(f"{what}: too many open files (this process may open {soft} files): raise "
                            f"the limit (ulimit -n 4096) and run the command again (a stopped training "
                            f"continues with resume_training.py)")


class WorkerStalled(UserError):
    """A DataLoader worker sent no batch for minutes (a batch it could not hand over, for lack of
    descriptors or of shared memory, is dropped by multiprocessing without a word): one message,
    exit code 1, instead of a wait for ever that not even SIGTERM ends."""

    exit_code = EXIT_FAILURE


class PreparationFailed(UserError):
    """Preparation could not go on for a reason outside the data (a worker process died): one
    message, exit code 1; what finished is committed."""

    exit_code = EXIT_FAILURE
