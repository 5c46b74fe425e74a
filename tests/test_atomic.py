"""atomic.py: a file under its final name is always complete - after exceptions and after kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from indicator_transformer.atomic import (
    atomic_write,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    is_temp_file,
    iter_temp_files,
    remove_stale_temp_files,
)


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_an_exception_inside_the_writer_leaves_the_old_content_and_no_temp_file(tmp_path):
    target = tmp_path / "state.json"
    atomic_write_text(target, "old complete content")

    def failing_writer(fh):
        fh.write(b"new but only half")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        atomic_write(target, failing_writer)

    assert target.read_text() == "old complete content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_a_keyboard_interrupt_inside_the_writer_also_cleans_up_its_temp_file(tmp_path):
    target = tmp_path / "model.bin"

    def interrupted_writer(fh):
        fh.write(b"x" * 1000)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, interrupted_writer)

    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_a_successful_write_replaces_the_content_and_leaves_only_the_final_file(tmp_path):
    target = tmp_path / "sub" / "data.bin"
    atomic_write_bytes(target, b"first")
    atomic_write_bytes(target, b"second, longer")
    atomic_write_json(tmp_path / "sub" / "doc.json", {"b": 1, "a": [1, 2]})

    assert target.read_bytes() == b"second, longer"
    assert json.loads((tmp_path / "sub" / "doc.json").read_text()) == {"a": [1, 2], "b": 1}
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["data.bin", "doc.json"]


def test_the_temporary_file_lives_beside_the_target_and_is_recognised_by_is_temp_file(tmp_path):
    target = tmp_path / "checkpoint_epoch_3.pth"
    seen = {}

    def writer(fh):
        seen["tmp"] = Path(fh.name)
        seen["listed"] = list(iter_temp_files(tmp_path))
        fh.write(b"payload")

    atomic_write(target, writer)

    tmp = seen["tmp"]
    assert tmp.parent == tmp_path  # same folder: os.replace is a rename, never a copy
    assert is_temp_file(tmp)
    assert seen["listed"] == [tmp]
    assert not is_temp_file(target)
    assert not is_temp_file(tmp_path / "manifest.json")
    assert not is_temp_file(tmp_path / ".lock")
    assert not tmp.exists()


def test_remove_stale_temp_files_removes_dead_writers_files_and_keeps_live_ones(tmp_path, spawn):
    live = spawn(["-c", "import time; time.sleep(60)"])
    dead = _dead_pid()
    dead_tmp = tmp_path / f".cache.npy.{dead}.0badc0de.tmp"
    live_tmp = tmp_path / f".cache.npy.{live.pid}.0123abcd.tmp"
    own_tmp = tmp_path / f".other.json.{os.getpid()}.feedbeef.tmp"
    no_pid_tmp = tmp_path / ".leftover.tmp"
    regular = tmp_path / "cache.npy"
    for p in (dead_tmp, live_tmp, own_tmp, no_pid_tmp, regular):
        p.write_bytes(b"partial")

    removed = remove_stale_temp_files(tmp_path)

    assert sorted(removed) == sorted([dead_tmp, no_pid_tmp])
    assert live_tmp.exists() and own_tmp.exists() and regular.exists()
    assert not dead_tmp.exists() and not no_pid_tmp.exists()

    live.kill()
    live.wait()
    assert remove_stale_temp_files(tmp_path) == [live_tmp]
    assert sorted(remove_stale_temp_files(tmp_path, include_live=True)) == [own_tmp]
    assert [p.name for p in tmp_path.iterdir()] == ["cache.npy"]


_REWRITER = r"""
import sys
from indicator_transformer.atomic import atomic_write_json

path = sys.argv[1]
i = 0
while True:
    i += 1
    # Growing documents (up to ~2 MB) so that a kill often lands inside a write.
    atomic_write_json(path, {"i": i, "payload": "x" * ((i * 37_000) % 2_000_000)})
    print(i, flush=True)
"""


@pytest.mark.parametrize("writes_before_kill", [1, 3, 8, 20, 45])
def test_kill_9_while_rewriting_in_a_loop_never_leaves_an_incomplete_file(tmp_path, spawn,
                                                                          writes_before_kill):
    target = tmp_path / "state.json"
    proc = spawn(["-c", _REWRITER, str(target)], stderr=subprocess.DEVNULL)
    for _ in range(writes_before_kill):
        line = proc.stdout.readline()
        assert line, "the writer died on its own"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    doc = json.loads(target.read_text())  # complete JSON, whatever the moment of the kill
    assert doc["i"] >= writes_before_kill
    assert doc["payload"] == "x" * ((doc["i"] * 37_000) % 2_000_000)
    # Whatever the kill left is a temp file, which cleanup now removes (its writer is dead).
    leftovers = [p for p in tmp_path.iterdir() if p != target]
    assert all(is_temp_file(p) for p in leftovers)
    remove_stale_temp_files(tmp_path)
    assert list(tmp_path.iterdir()) == [target]


@pytest.mark.slow
def test_hundreds_of_kill_9_during_writes_never_leave_an_incomplete_file(tmp_path, spawn):
    import random

    rnd = random.Random(1234)
    target = tmp_path / "state.json"
    for _round in range(200):
        proc = spawn(["-c", _REWRITER, str(target)], stderr=subprocess.DEVNULL)
        for _ in range(rnd.randint(1, 30)):
            assert proc.stdout.readline()
        proc.kill()
        proc.wait(timeout=30)
        doc = json.loads(target.read_text())
        assert doc["payload"] == "x" * ((doc["i"] * 37_000) % 2_000_000)
        remove_stale_temp_files(tmp_path)


def test_a_write_pause_meant_for_another_rank_does_not_pause_this_one(tmp_path: Path) -> None:
    # INDICATOR_TRANSFORMER_PAUSE_RANKS=1: only rank 1 pauses; a single process is rank 0, so its
    # write must go straight through (it used to wait here for a signal that never came).
    target = tmp_path / "x.json"
    env = dict(os.environ, INDICATOR_TRANSFORMER_PAUSE_AT="before_commit:x.json",
               INDICATOR_TRANSFORMER_PAUSE_RANKS="1", PYTHONPATH=str(Path(__file__).parents[1]))
    code = ("from indicator_transformer.atomic import atomic_write_json; "
            f"atomic_write_json({str(target)!r}, 1)")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "PAUSED" not in r.stderr, r.stderr
    assert json.loads(target.read_text()) == 1
    # And with the rank named, the same write does pause (the test's own control).
    env["INDICATOR_TRANSFORMER_PAUSE_RANKS"] = "0"
    p = subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE, text=True)
    assert p.stderr.readline().startswith("PAUSED before_commit x.json")
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=30)


def _file_size_limit(limit: int):
    def preexec() -> None:
        import resource

        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return preexec


def test_a_write_that_runs_out_of_space_is_one_clear_error_and_the_old_file_stays(tmp_path: Path) -> None:
    target = tmp_path / "state.bin"
    target.write_bytes(b"old")
    code = ("from indicator_transformer.atomic import atomic_write_bytes\n"
            "from indicator_transformer.errors import StorageFull\n"
            f"try:\n    atomic_write_bytes({str(target)!r}, b'x' * 100_000)\n"
            "except StorageFull as e:\n    print(e)\n")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1]))
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60,
                       preexec_fn=_file_size_limit(10_000))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"{target}: could not be written: File too large") and "intact" in r.stdout
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["state.bin"]


def test_training_on_a_full_disk_stops_with_one_error_line_and_keeps_what_was_written(tmp_path: Path) -> None:
    from conftest import REPO_ROOT, child_env
    from trainproc import SMALL

    base = [sys.executable, "train_indicator_transformer.py", *SMALL, "--cache-dir", str(tmp_path / "cache"),
            "--models-dir", str(tmp_path / "models")]
    prep = subprocess.run([*base, "--prepare-only"], cwd=REPO_ROOT, env=child_env(), capture_output=True,
                          text=True, timeout=300, preexec_fn=_file_size_limit(1 << 30))
    assert prep.returncode == 0, prep.stderr
    r = subprocess.run([*base, "--checkpoint-every", "5"], cwd=REPO_ROOT, env=child_env(),
                       capture_output=True, text=True, timeout=300, preexec_fn=_file_size_limit(20_000))
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    error = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "checkpoint_epoch_1_step_5.pth: could not be written" in error[0], r.stderr
    # No checkpoint and no temporary file: the folder made for the lock held nothing else, so
    # it was removed when the run ended.
    assert not (tmp_path / "models").exists()


def test_a_folder_where_a_file_is_to_be_written_is_one_clear_error(tmp_path: Path) -> None:
    from indicator_transformer.errors import UserError

    (tmp_path / "entry.npy").mkdir()
    with pytest.raises(UserError, match="entry.npy: is a folder"):
        atomic_write_bytes(tmp_path / "entry.npy", b"data")
    assert [p.name for p in tmp_path.iterdir()] == ["entry.npy"]  # no temporary file left
