"""SignalHandler: real signals, real executors, real child processes."""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from indicator_transformer.shutdown import SignalHandler, default_signals, exit_code_for


def _wait_until(cond, timeout: float = 10.0) -> bool:
    """Poll ``cond`` until true (outcome-based: the timeout is only a safety net)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.005)
    return cond()


def _read_stderr_until(proc, needle: str) -> str:
    """Read the child's stderr line by line until ``needle`` appears (or the pipe closes)."""
    seen = []
    while True:
        line = proc.stderr.readline()
        if not line:
            raise AssertionError(f"child ended before printing {needle!r}; stderr: {''.join(seen)}")
        seen.append(line)
        if needle in line:
            return "".join(seen)


def test_install_from_a_non_main_thread_raises_a_clear_runtime_error():
    caught: list[BaseException] = []

    def target():
        try:
            SignalHandler().install()
        except BaseException as e:  # noqa: BLE001 - we want to see exactly what came out
            caught.append(e)

    before = signal.getsignal(signal.SIGINT)
    t = threading.Thread(target=target)
    t.start()
    t.join()

    assert len(caught) == 1
    assert isinstance(caught[0], RuntimeError)
    assert "main thread" in str(caught[0])
    assert signal.getsignal(signal.SIGINT) is before


def test_previous_handlers_are_restored_when_the_context_manager_exits():
    def previous(signum, frame):  # pragma: no cover - never called
        pass

    sigs = default_signals()
    originals = {s: signal.getsignal(s) for s in sigs}
    try:
        for s in sigs:
            signal.signal(s, previous)
        with SignalHandler() as handler:
            for s in sigs:
                assert signal.getsignal(s) == handler._handle_signal
        for s in sigs:
            assert signal.getsignal(s) is previous
    finally:
        for s, h in originals.items():
            signal.signal(s, h)


def test_handlers_are_restored_even_when_the_body_raises():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(ValueError), SignalHandler():
        raise ValueError("boom")
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143),
                                              (signal.SIGHUP, 129), (signal.SIGUSR1, 138)],
                         ids=["SIGINT", "SIGTERM", "SIGHUP", "SIGUSR1"])
def test_a_real_signal_sets_shutdown_requested_and_the_matching_exit_code(signum, code, capfd):
    with SignalHandler() as handler:
        assert not handler.should_stop and handler.exit_code == 0
        os.kill(os.getpid(), signum)
        assert _wait_until(lambda: handler.shutdown_requested)
        assert handler.should_stop
        assert handler.signal_received == signum
        assert handler.exit_code == code
        assert handler.signal_name == signal.Signals(signum).name
    err = capfd.readouterr().err
    assert f"Received {signal.Signals(signum).name}" in err


def test_request_shutdown_from_code_stops_without_a_signal():
    handler = SignalHandler()  # not even installed: a programmatic stop needs no handler
    assert not handler.should_stop
    handler.request_shutdown()
    assert handler.should_stop
    assert handler.exit_code == 130

    term = SignalHandler()
    term.request_shutdown(signal.SIGTERM)
    term.request_shutdown(signal.SIGINT)  # the first request decides the exit code
    assert term.should_stop and term.exit_code == 143


def test_exit_codes_follow_the_128_plus_signal_convention():
    assert exit_code_for(signal.SIGINT) == 130
    assert exit_code_for(signal.SIGTERM) == 143
    assert exit_code_for(None) == 130
    assert exit_code_for(signal.SIGUSR1) == 128 + signal.SIGUSR1


def test_reading_should_stop_cancels_queued_futures_and_shuts_the_executor_down():
    release = threading.Event()
    started = threading.Event()

    def blocking():
        started.set()
        release.wait(30)
        return "finished"

    handler = SignalHandler()
    executor = ThreadPoolExecutor(max_workers=1)
    try:
        handler.register_executor(executor)
        running = handler.register_future(executor.submit(blocking))
        assert started.wait(10)
        queued = [handler.register_future(executor.submit(lambda k=k: k)) for k in range(5)]

        handler.request_shutdown()
        # The request only records (it may come from a signal handler): nothing cancelled yet.
        assert not any(f.cancelled() for f in queued)

        assert handler.should_stop
        assert all(f.cancelled() for f in queued)
        assert not running.cancelled()
        with pytest.raises(RuntimeError):
            executor.submit(lambda: None)  # shut down: nothing new can start
        release.set()
        assert running.result(timeout=10) == "finished"  # a running task is allowed to finish
    finally:
        release.set()
        executor.shutdown(wait=True)


def test_a_real_sigint_cancels_queued_futures_on_the_next_should_stop_read(capfd):
    release = threading.Event()
    executor = ThreadPoolExecutor(max_workers=1)
    try:
        with SignalHandler() as handler:
            handler.register_executor(executor)
            handler.register_future(executor.submit(release.wait, 30))
            queued = [handler.register_future(executor.submit(lambda: 1)) for _ in range(3)]
            os.kill(os.getpid(), signal.SIGINT)
            assert _wait_until(lambda: handler.shutdown_requested)
            assert handler.should_stop
            assert all(f.cancelled() for f in queued)
    finally:
        release.set()
        executor.shutdown(wait=True)


def test_a_future_registered_after_the_stop_is_cancelled_at_once():
    handler = SignalHandler()
    handler.request_shutdown()
    assert handler.should_stop
    gate = threading.Event()
    executor = ThreadPoolExecutor(max_workers=1)
    try:
        executor.submit(gate.wait, 30)
        late = handler.register_future(executor.submit(lambda: 1))
        assert late.cancelled()
    finally:
        gate.set()
        executor.shutdown(wait=True)


def test_an_executor_registered_after_the_stop_is_shut_down_at_once():
    handler = SignalHandler()
    handler.request_shutdown()
    assert handler.should_stop
    executor = ThreadPoolExecutor(max_workers=1)
    handler.register_executor(executor)
    with pytest.raises(RuntimeError):
        executor.submit(lambda: None)


_STUCK_CHILD = r"""
import sys, time
from indicator_transformer.shutdown import SignalHandler

with SignalHandler() as handler:
    print("ready", flush=True)
    # A main loop stuck in a long step: it never reaches a safe point, so only escalation ends it.
    while True:
        time.sleep(0.05)
"""


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)],
                         ids=["SIGINT", "SIGTERM"])
def test_a_second_signal_exits_at_once_with_the_same_code_and_a_message(spawn, signum, code):
    proc = spawn(["-c", _STUCK_CHILD])
    assert proc.stdout.readline().strip() == "ready"

    proc.send_signal(signum)
    first = _read_stderr_until(proc, "Received")
    assert "send it again to exit immediately" in first
    assert proc.poll() is None  # the first signal alone does not kill it

    proc.send_signal(signum)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == code
    assert f"Received {signal.Signals(signum).name} again" in err
    assert "exiting now" in err


_CRITICAL_CHILD = r"""
import sys, time
from pathlib import Path
from indicator_transformer.shutdown import SignalHandler, critical_section

gate, committed = Path(sys.argv[1]), Path(sys.argv[2])
with SignalHandler() as handler:
    with critical_section():
        print("in critical section", flush=True)
        while not gate.exists():
            time.sleep(0.01)
        committed.write_text("done")
    print("after critical section", flush=True)
"""


def test_a_second_signal_inside_a_file_commit_waits_for_the_commit_to_finish(spawn, tmp_path):
    gate, committed = tmp_path / "gate", tmp_path / "committed"
    proc = spawn(["-c", _CRITICAL_CHILD, str(gate), str(committed)])
    assert proc.stdout.readline().strip() == "in critical section"

    proc.send_signal(signal.SIGINT)
    _read_stderr_until(proc, "Received SIGINT")
    proc.send_signal(signal.SIGINT)
    _read_stderr_until(proc, "as soon as the file being committed is complete")
    assert proc.poll() is None and not committed.exists()  # held, not killed mid-commit

    gate.touch()
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 130
    assert committed.read_text() == "done"  # the commit finished
    assert "after critical section" not in out  # and then it exited at once
    assert "File commit finished; exiting now." in err


def test_without_hard_exit_a_second_signal_is_only_counted(capfd):
    with SignalHandler(hard_exit_on_second=False) as handler:
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)
        assert _wait_until(lambda: handler.signal_count == 2)
        assert handler.exit_code == 130  # the first signal decides


# ----------------------------------------------------------------------------- the second-signal race
# A commit thread and the signal handler (main thread) each write one variable and read the other:
# the handler sets the pending exit, then reads the commit depth; the committing thread lowers the
# depth, then reads the pending exit. The pause hooks put one side exactly between the other's two
# steps; whichever way the race goes, the process must exit within moments of the commit under way.

_HANDLER_BETWEEN_CHILD = r"""
import threading, time
from indicator_transformer import shutdown
from indicator_transformer.shutdown import SignalHandler, critical_section

handler_mid = threading.Event()

def handler_paused_between_its_two_steps():
    handler_mid.set()
    time.sleep(20)  # meanwhile the commit ends; with no exit there, nothing would for 20 s
    print("handler resumed", flush=True)

shutdown._race_hooks["handler"] = handler_paused_between_its_two_steps

def commit():
    with critical_section():
        print("in critical section", flush=True)
        handler_mid.wait(30)
    print("commit thread went on", flush=True)

with SignalHandler():
    t = threading.Thread(target=commit)
    t.start()
    while t.is_alive():
        time.sleep(0.01)
print("main went on", flush=True)
"""


def test_a_commit_ending_while_the_handler_is_between_its_steps_exits_at_the_end_of_that_commit(spawn):
    proc = spawn(["-c", _HANDLER_BETWEEN_CHILD])
    assert proc.stdout.readline().strip() == "in critical section"
    proc.send_signal(signal.SIGINT)
    _read_stderr_until(proc, "Received SIGINT")
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, (out, err)
    assert time.monotonic() - t0 < 10  # not the 20 s the handler stays paused
    assert "File commit finished; exiting now." in err
    assert "went on" not in out and "handler resumed" not in out


_LEAVE_BETWEEN_CHILD = r"""
import threading, time
from indicator_transformer import shutdown
from indicator_transformer.shutdown import SignalHandler, critical_section

def commit_paused_between_decrement_and_check():
    print("decremented", flush=True)
    time.sleep(20)  # the second signal arrives now
    print("commit resumed", flush=True)

def commit():
    with critical_section():
        pass
    print("commit thread went on", flush=True)

with SignalHandler() as handler:
    print("ready", flush=True)
    while not handler.shutdown_requested:
        time.sleep(0.01)
    shutdown._race_hooks["leave"] = commit_paused_between_decrement_and_check
    t = threading.Thread(target=commit)
    t.start()
    while t.is_alive():
        time.sleep(0.01)
print("main went on", flush=True)
"""


def test_a_second_signal_between_the_commits_decrement_and_its_check_exits_at_once(spawn):
    proc = spawn(["-c", _LEAVE_BETWEEN_CHILD])
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGINT)
    assert proc.stdout.readline().strip() == "decremented"
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, (out, err)
    assert time.monotonic() - t0 < 10
    assert "exiting now" in err
    assert "resumed" not in out and "went on" not in out


_NO_NEW_COMMIT_CHILD = r"""
import sys, threading, time
from pathlib import Path
from indicator_transformer import shutdown
from indicator_transformer.shutdown import SignalHandler, critical_section

gate = Path(sys.argv[1])
second_backed_off = threading.Event()

def leave_hook():
    if threading.current_thread().name == "second":
        second_backed_off.set()

shutdown._race_hooks["leave"] = leave_hook

def first():
    with critical_section():
        print("first in critical section", flush=True)
        while not gate.exists():
            time.sleep(0.01)

def second():
    with critical_section():
        print("second started a commit", flush=True)

with SignalHandler() as handler:
    a = threading.Thread(target=first, name="first")
    a.start()
    while handler.signal_count < 2:
        time.sleep(0.01)
    threading.Thread(target=second, name="second", daemon=True).start()
    second_backed_off.wait(30)
    print("second is waiting", flush=True)
    while a.is_alive():
        time.sleep(0.01)
print("main went on", flush=True)
"""


def test_after_a_second_signal_no_new_commit_starts_and_the_one_under_way_ends_the_process(spawn, tmp_path):
    gate = tmp_path / "gate"
    proc = spawn(["-c", _NO_NEW_COMMIT_CHILD, str(gate)])
    assert proc.stdout.readline().strip() == "first in critical section"
    proc.send_signal(signal.SIGINT)
    _read_stderr_until(proc, "Received SIGINT")
    proc.send_signal(signal.SIGINT)
    _read_stderr_until(proc, "as soon as the file being committed is complete")
    assert proc.stdout.readline().strip() == "second is waiting"
    gate.touch()
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, (out, err)
    assert "second started a commit" not in out and "main went on" not in out
    assert "File commit finished; exiting now." in err


_BUSY_WRITERS_CHILD = r"""
import sys, threading, time
from pathlib import Path
from indicator_transformer.atomic import atomic_write_json
from indicator_transformer.shutdown import SignalHandler

folder = Path(sys.argv[1])

def writer(k):
    i = 0
    while True:
        i += 1
        atomic_write_json(folder / f"w{k}.json", {"i": i, "pad": "x" * 2000})

with SignalHandler() as handler:
    for k in range(4):
        threading.Thread(target=writer, args=(k,), daemon=True).start()
    print("writing", flush=True)
    while True:
        time.sleep(0.01)
"""


def test_a_second_signal_ends_the_process_promptly_while_four_threads_commit_files_nonstop(spawn, tmp_path):
    import json

    proc = spawn(["-c", _BUSY_WRITERS_CHILD, str(tmp_path)])
    assert proc.stdout.readline().strip() == "writing"
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    _read_stderr_until(proc, "Received SIGINT")
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert time.monotonic() - t0 < 10  # overlapping commits never keep the exit waiting
    for p in tmp_path.glob("w*.json"):
        assert json.loads(p.read_text())["pad"] == "x" * 2000  # every final file complete


def test_sigusr1_from_slurm_is_a_stop_request_like_sigterm():
    assert signal.SIGUSR1 in default_signals()
    assert exit_code_for(signal.SIGUSR1) == 138


def test_under_torchrun_the_launchers_copy_of_a_ctrl_c_is_not_an_escalation(capfd):
    # A terminal's Ctrl-C reaches a rank twice (the terminal's and torchrun's forwarded copy);
    # without the window the second one would exit the process at once, without saving.
    with SignalHandler(duplicate_window_s=5.0) as handler:
        os.kill(os.getpid(), signal.SIGINT)
        assert _wait_until(lambda: handler.shutdown_requested)
        os.kill(os.getpid(), signal.SIGINT)  # still alive afterwards: this process runs the test
        time.sleep(0.05)
        assert handler.signal_count == 1 and handler.exit_code == 130
    assert "Received SIGINT again" not in capfd.readouterr().err


def test_ranks_agree_on_the_largest_signal_and_a_rank_without_one_adopts_it():
    quiet, termed = SignalHandler(), SignalHandler()
    termed.request_shutdown(signal.SIGTERM)
    agreed = max(quiet.pending_signal, termed.pending_signal)  # what the all-reduce MAX computes
    assert quiet.pending_signal == 0 and agreed == signal.SIGTERM
    assert quiet.agree(agreed) and termed.agree(agreed)
    assert quiet.exit_code == termed.exit_code == 143
    assert not SignalHandler().agree(0)


def test_a_signal_that_arrives_during_the_ranks_agreement_does_not_stop_this_rank_alone() -> None:
    from indicator_transformer.shutdown import SignalHandler

    handler = SignalHandler()
    handler.request_shutdown(signal.SIGTERM)  # arrived after this rank contributed 0
    assert handler.agree(0) is False  # the others go on: so does this rank
    assert handler.pending_signal == signal.SIGTERM  # contributed at the next agreement
    assert handler.agree(signal.SIGTERM) is True
    quiet = SignalHandler()
    assert quiet.agree(signal.SIGINT) is True and quiet.exit_code == 130  # a peer's stop stops it too
