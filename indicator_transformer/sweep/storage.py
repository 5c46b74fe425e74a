"""The study's database: Optuna's RDB storage (SQLite in the sweep folder by default, any
SQLAlchemy URL such as PostgreSQL for workers on several machines), opened with one clear error
for a database that is locked, unreachable or damaged.

Every call into the storage goes through :func:`db_errors`, which turns the SQLAlchemy and Optuna
exceptions into a :class:`StorageError` naming the database (its password hidden).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import StorageError, UserError

STORAGE_ENV = "INDICATOR_TRANSFORMER_SWEEP_STORAGE"  # the URL, for the trials' processes
HEARTBEAT_S = 30   # each running trial's heartbeat in the storage (seen by --status and dashboards)
GRACE_S = 120
TIMEOUT_ENV = "INDICATOR_TRANSFORMER_SWEEP_DB_TIMEOUT"  # seconds SQLite waits for a lock (default 60)


def default_url(out: Path) -> str:
    """``sqlite:///DIR/sweep.db`` (absolute: the trials' processes and another shell agree)."""
    return f"sqlite:///{(out / 'sweep.db').absolute()}"


def shown(url: str) -> str:
    """The URL with its password hidden, for messages."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - a URL SQLAlchemy cannot parse is shown as given
        return url


@contextlib.contextmanager
def db_errors(url: str, doing: str) -> Iterator[None]:
    """Turn a storage failure inside the block into one StorageError naming the database."""
    import optuna
    import sqlalchemy.exc

    try:
        yield
    except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as e:
        cause = e
        while cause.__cause__ is not None and not isinstance(cause, sqlalchemy.exc.DBAPIError):
            cause = cause.__cause__
        text = str(getattr(cause, "orig", None) or cause).strip().splitlines()
        first = text[0] if text else type(cause).__name__
        hint = ""
        if "locked" in first:
            hint = " (another process holds a write lock on it: wait, or stop that process)"
        elif "not a database" in first or "malformed" in first:
            hint = " (the file is damaged: restore it from a copy, or start a new sweep with another --out)"
        raise StorageError(f"sweep storage {shown(url)}: {doing} failed: {first}{hint}; no trial's "
                           f"files were touched") from None


def open_storage(url: str) -> Any:
    """The RDBStorage at ``url`` (made for SQLite, whose folder must exist)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no line per study and trial
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///"):])
        if path.is_dir():
            raise UserError(f"--storage {url}: {path} is a folder, expected a database file")
        if path.exists() and path.stat().st_size and not _looks_sqlite(path):
            raise StorageError(f"sweep storage {url}: {path} is not an SQLite database (damaged, or "
                               f"another file); restore it from a copy or use another --out")
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        # Several workers: wait for another's write rather than fail at once.
        kwargs = {"connect_args": {"timeout": float(os.environ.get(TIMEOUT_ENV, "60"))}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # heartbeat is "experimental": no warning per trial process
        try:
            with db_errors(url, "opening the database"):
                return optuna.storages.RDBStorage(url, engine_kwargs=kwargs, heartbeat_interval=HEARTBEAT_S,
                                                  grace_period=GRACE_S)
        except (ModuleNotFoundError, ImportError) as e:  # a driver not installed (psycopg2)
            raise UserError(f"--storage {shown(url)}: its database driver is not installed ({e}); "
                            f"PostgreSQL: pip install psycopg2-binary; MySQL: pip install pymysql") from None
        except ValueError as e:
            raise UserError(f"--storage {shown(url)}: not a database URL SQLAlchemy understands "
                            f"({e})") from None


def _looks_sqlite(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(16) == b"SQLite format 3\x00"
    except OSError:
        return True  # unreadable: SQLite says why


def from_environment() -> str:
    """The storage URL a trial's process was given by its sweep."""
    url = os.environ.get(STORAGE_ENV)
    if not url:
        raise UserError(f"--sweep-trial: {STORAGE_ENV} is not set (a trial is started by the sweep command)")
    return url
