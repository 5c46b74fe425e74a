"""SignalHandler: turn SIGINT / SIGTERM / SIGHUP / SIGUSR1 into a request that the main loop acts on.

Exit codes after a graceful stop (128 + the signal number): SIGINT 130, SIGTERM 143, SIGHUP 129,
SIGUSR1 138. SIGUSR1 is SLURM's warning signal (``sbatch --signal=B:USR1@120`` sends it 120 s
before the time limit or a pre-emption): it saves and stops exactly like SIGTERM, so a requeued job
continues with ``--resume auto``.

Under torchrun each rank has its own handler. The launcher forwards SIGINT/SIGTERM/SIGHUP (and
SIGUSR1 with ``--signals-to-handle``) to every rank; a Ctrl-C in a terminal reaches each rank twice,
once from the terminal and once forwarded, so there a repeat of the same signal within
``DUPLICATE_WINDOW_S`` of the first is the same request, not the escalation a second Ctrl-C is
elsewhere. The ranks then agree on the stop (:meth:`SignalHandler.agree`, called by the trainer
after an all-reduce, never from the handler itself).

The handler itself only records which signal came (invariant 1): a Python signal handler runs in
the main thread between two bytecodes, possibly while that thread holds a lock of the executor or
of an I/O buffer, so doing real work there can deadlock. Cancelling futures and shutting the
executor down happens the first time anyone reads :attr:`SignalHandler.should_stop` after the
request, from ordinary code.

A second signal escalates: pending work is abandoned and the process exits at once with the same
exit code - unless it is inside a :func:`critical_section` (the rename that commits a file), in
which case it exits the moment that section ends. Files under final names are therefore always
complete; at worst a temporary file is left, which readers ignore and cleanup removes.

Windows: Ctrl-C arrives as SIGINT and works as on POSIX. ``signal.SIGTERM`` exists there but the
OS never delivers it (a TerminateProcess cannot be caught), and SIGHUP does not exist: only the
signals present in the ``signal`` module are installed, the rest are skipped without error.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future
from types import FrameType
from typing import Any

EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143, "SIGHUP": 129, "SIGUSR1": 138}
STOP_SIGNALS = ("SIGTERM", "SIGHUP", "SIGUSR1")  # besides SIGINT, where the platform has them
DUPLICATE_WINDOW_S = 2.0  # under torchrun: a repeat of the first signal this soon is a duplicate

# Module-level because a second signal must be able to see whether *any* file commit is under
# way, wherever it happens (atomic.py calls critical_section without knowing about a handler).
_critical_depth = 0                   # commits under way, in every thread (changed under the lock)
_exit_pending: int | None = None      # set by a second signal: the exit code, once commits end
_signals_seen = 0
_in_section = threading.local()       # this thread's own depth (a nested section is not a new commit)

# Test-only pause points, to put the other side of the race exactly between two steps:
# "leave" runs in a committing thread between its decrement and its read of _exit_pending;
# "handler" runs in the signal handler between its write of _exit_pending and its read of the depth.
_race_hooks: dict[str, Callable[[], None]] = {}


def signal_seen_count() -> int:
    """How many signals any installed SignalHandler has received in this process."""
    return _signals_seen


def default_signals() -> list[int]:
    """The signals we handle on this platform."""
    sigs = [signal.SIGINT]
    for name in STOP_SIGNALS:
        if hasattr(signal, name):
            sigs.append(getattr(signal, name))
    return sigs


def exit_code_for(signum: int | None) -> int:
    """128 + signal number convention: 130 for SIGINT, 143 for SIGTERM, 129 for SIGHUP, 138 for
    SIGUSR1 (on Linux; the number is the platform's)."""
    if signum is None:
        return 130
    try:
        return EXIT_CODES.get(signal.Signals(signum).name, 128 + int(signum))
    except ValueError:
        return 128 + int(signum)


_console_messages: list[str] = []  # what the handler wrote, for the run's train.log (runlog.py)


def _write_stderr(msg: str) -> None:
    # os.write, not print: print inside a handler can hit "reentrant call" on sys.stderr's buffer.
    with contextlib.suppress(OSError):
        os.write(2, msg.encode("utf-8", "replace"))
    # Not logged here: logging from a signal handler could re-enter a log write in progress.
    # list.append is atomic; the console log takes the messages at its next line.
    _console_messages.append(msg)


def take_console_messages() -> list[str]:
    """The messages written by signal handlers since the last call, oldest first."""
    out = _console_messages[:]
    del _console_messages[:len(out)]
    return out


_critical_lock = threading.Lock()


def _exit_after_commits(code: int) -> None:
    _write_stderr("File commit finished; exiting now.\n")
    os._exit(code)


@contextlib.contextmanager
def critical_section() -> Iterator[None]:
    """Hold a second-signal exit until the enclosed (short) commit step has finished.

    Preparation threads commit files concurrently, hence the lock around the counter. The signal
    handler runs in the main thread, which may itself be inside this function holding the lock:
    it therefore never takes the lock; it publishes ``_exit_pending`` first and reads the depth
    second, while a section publishes its decrement first (under the lock) and reads
    ``_exit_pending`` second. Under the GIL every read sees every earlier write, so for any
    interleaving of a second signal with the end of the last commit, at least one side sees the
    other's write:

    * the handler reads the depth before the decrement: it saw 1 and returned, but it had already
      set ``_exit_pending``, which the section reads after its decrement -> the section exits;
    * the handler reads it after the decrement: it sees 0 -> the handler exits at once.

    (Both may exit; ``os._exit`` with the same code from either is fine.) Before, the handler read
    the depth first and set the code afterwards, so a commit ending between the two found no exit
    request, and the exit waited for some later commit.

    A thread that starts a new commit after the request does not start it: the commits under
    way are waited for, never prolonged by new ones.
    """
    global _critical_depth
    nested = getattr(_in_section, "depth", 0) > 0
    with _critical_lock:
        _critical_depth += 1
    _in_section.depth = getattr(_in_section, "depth", 0) + 1
    if _exit_pending is not None and not nested:
        _leave()  # exits if no other commit is under way
        # Another commit is under way and the thread ending it exits the process (it reads
        # _exit_pending after its decrement): this one must not start a write meanwhile.
        threading.Event().wait()
    try:
        yield
    finally:
        _leave()


def _leave() -> None:
    """End a section: decrement, then (never before) read whether an exit is pending."""
    global _critical_depth
    _in_section.depth -= 1
    with _critical_lock:
        _critical_depth -= 1
        depth = _critical_depth
    hook = _race_hooks.get("leave")
    if hook is not None:
        hook()
    code = _exit_pending
    if depth == 0 and code is not None:
        _exit_after_commits(code)


class SignalHandler:
    """Records shutdown requests and tracks the work that must be cancelled on one.

    Use as a context manager from the main thread::

        with SignalHandler() as handler:
            prepare(..., signal_handler=handler)
            train(..., signal_handler=handler)
            if handler.should_stop:
                ...  # save, then exit with handler.exit_code

    Attributes:
        shutdown_requested: a stop was requested (by a signal or :meth:`request_shutdown`).
        signal_received: the number of the first signal, or None.
        executor: the registered executor (thread or process pool), shut down on request.
        active_futures: registered futures not yet done; pending ones are cancelled on request.
    """

    def __init__(self, signals: list[int] | None = None, *, hard_exit_on_second: bool = True,
                 duplicate_window_s: float | None = None) -> None:
        self.signals = list(signals) if signals is not None else default_signals()
        self.hard_exit_on_second = hard_exit_on_second
        # How soon a repeat of the first signal counts as the same request (see the module doc).
        self.duplicate_window_s = (DUPLICATE_WINDOW_S if launched_by_torchrun() or run_of_experiment()
                                   else 0.0) \
            if duplicate_window_s is None else duplicate_window_s
        self._first_at = 0.0
        self.shutdown_requested = False
        self.signal_received: int | None = None
        self.signal_count = 0
        self.executor: Executor | None = None
        self.active_futures: list[Future[Any]] = []
        self._lock = threading.RLock()
        self._previous: dict[int, Any] = {}
        self._installed = False
        self._actions_done = False

    # ----------------------------------------------------------------- install / restore
    def install(self) -> SignalHandler:
        """Install the handler for every signal; remembers the previous handlers."""
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("SignalHandler.install() must be called from the main thread "
                               "(Python delivers signals only to the main thread)")
        if self._installed:
            return self
        for sig in self.signals:
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._handle_signal)
        self._installed = True
        return self

    def restore(self) -> None:
        """Put back the handlers that were there before :meth:`install`."""
        if not self._installed:
            return
        for sig, prev in self._previous.items():
            with contextlib.suppress(ValueError, TypeError, OSError):
                signal.signal(sig, prev if prev is not None else signal.SIG_DFL)
        self._previous.clear()
        self._installed = False

    def ignore_from_now_on(self) -> None:
        """Replace this handler by SIG_IGN for every signal it handles (a process that has
        finished its graceful stop and is only exiting)."""
        for sig in self.signals:
            with contextlib.suppress(ValueError, OSError):
                signal.signal(sig, signal.SIG_IGN)
        self._previous.clear()
        self._installed = False

    def __enter__(self) -> SignalHandler:
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.restore()

    # ----------------------------------------------------------------- the handler
    def _handle_signal(self, signum: int, frame: FrameType | None) -> None:
        """Record the request. First signal: graceful. Second: abandon pending work and exit."""
        global _exit_pending, _signals_seen
        _signals_seen += 1
        self.signal_count += 1
        name = signal.Signals(signum).name
        now = time.monotonic()
        if self.signal_count > 1 and signum == self.signal_received \
                and now - self._first_at < self.duplicate_window_s:
            self.signal_count -= 1  # the launcher's copy of a signal this rank already has
            return
        if self.signal_count == 1:
            self.signal_received = signum
            self.shutdown_requested = True
            self._first_at = now
            _write_stderr(f"\nReceived {name}: stopping at the next safe point and saving "
                          f"(send it again to exit immediately)...\n")
            return
        code = exit_code_for(self.signal_received)
        if not self.hard_exit_on_second:
            return
        # First publish the request, then look at the depth - never the other way round, and
        # never under _critical_lock (this thread may hold it): see critical_section().
        _exit_pending = code
        hook = _race_hooks.get("handler")
        if hook is not None:
            hook()
        if _critical_depth > 0:
            _write_stderr(f"\nReceived {name} again: abandoning pending work; "
                          f"exiting as soon as the file being committed is complete.\n")
            return
        _write_stderr(f"\nReceived {name} again: abandoning pending work and exiting now. "
                      f"Files under final names are intact; unsaved progress since the last "
                      f"checkpoint is lost.\n")
        os._exit(code)

    @property
    def pending_signal(self) -> int:
        """The signal number of the stop request (SIGINT for one made by code), 0 for none: what
        a rank contributes to the agreement of :meth:`agree`."""
        return int(self.signal_received or signal.SIGINT) if self.shutdown_requested else 0

    def agree(self, signum: int) -> bool:
        """Adopt the stop the ranks agreed on (the MAX of their :attr:`pending_signal`; 0 = go
        on) and return whether to stop. A rank that saw no signal stops too, and every rank exits
        with the agreed signal's code. A signal that arrived *during* the agreement (after this
        rank contributed 0) does not stop this rank alone: the others go on, so it goes on too, and
        the request is contributed at the next agreement, where every rank stops together."""
        if not signum:
            return False
        self.signal_received = signum
        self.shutdown_requested = True
        return self.should_stop

    def request_shutdown(self, signum: int | None = None) -> None:
        """Ask for a graceful stop from code (tests, or a stop agreed between ranks)."""
        if not self.shutdown_requested:
            self.signal_received = signum if signum is not None else signal.SIGINT
            self.shutdown_requested = True

    # ----------------------------------------------------------------- registry
    def register_executor(self, executor: Executor | None) -> None:
        """Track the executor to shut down on request (None unregisters)."""
        with self._lock:
            self.executor = executor
        if executor is not None and self.shutdown_requested:
            self._perform_shutdown_actions(force=True)

    def register_future(self, future: Future[Any]) -> Future[Any]:
        """Track a future so a stop request can cancel it if it has not started."""
        with self._lock:
            self.active_futures.append(future)
        future.add_done_callback(self._forget_future)
        if self.shutdown_requested:
            future.cancel()
        return future

    def _forget_future(self, future: Future[Any]) -> None:
        with self._lock, contextlib.suppress(ValueError):
            self.active_futures.remove(future)

    # ----------------------------------------------------------------- status
    @property
    def should_stop(self) -> bool:
        """True once a stop was requested. The first read *from the main thread* after it cancels
        the pending work; worker threads only read the flag, so the executor is never shut down
        between the main thread's own check and its next ``submit``."""
        if self.shutdown_requested and not self._actions_done \
                and threading.current_thread() is threading.main_thread():
            self._perform_shutdown_actions()
        return self.shutdown_requested

    @property
    def exit_code(self) -> int:
        """130 for SIGINT, 143 for SIGTERM, 129 for SIGHUP, 138 for SIGUSR1, 0 when no stop was
        requested."""
        return exit_code_for(self.signal_received) if self.shutdown_requested else 0

    @property
    def signal_name(self) -> str:
        if self.signal_received is None:
            return "none"
        return signal.Signals(self.signal_received).name

    def _perform_shutdown_actions(self, force: bool = False) -> None:
        """Cancel not-started futures and shut the executor down without waiting for running tasks."""
        with self._lock:
            if self._actions_done and not force:
                return
            self._actions_done = True
            futures = list(self.active_futures)
            executor = self.executor
        for f in futures:
            f.cancel()
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)


EXPERIMENT_CHILD_ENV = "INDICATOR_TRANSFORMER_RUN_OF"  # set by walk-forward and sweep for their runs


def run_of_experiment() -> bool:
    """Whether this process is a run started by walk-forward or sweep. Its SIGTERM on the
    experiment's death (PR_SET_PDEATHSIG) comes once per thread of the dying parent - the kernel
    sends it each time the child is handed to the next thread -, so its repeats within
    ``DUPLICATE_WINDOW_S`` are one request, not the second signal that abandons the checkpoint."""
    return bool(os.environ.get(EXPERIMENT_CHILD_ENV))


def launched_by_torchrun() -> bool:
    """Whether torchrun started this process (its environment names a rank and a master)."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR"))


def print_cleanup_complete(stream: Any = None) -> None:
    """The last line of every graceful shutdown."""
    print("Cleanup complete", file=stream or sys.stderr, flush=True)
