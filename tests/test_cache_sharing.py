"""The feature cache shared by several processes: maintenance never pulls files from under a live
preparation, preparations share it, and maintenance at work refuses a preparation cleanly.

Issue 18: `validate_cache.py --clear-all` during a preparation killed the run with a
FileNotFoundError traceback; a plain `validate_cache.py` removed the preparer's fresh entries as
"orphaned", printed "Cache is consistent", and the run then died.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from conftest import REPO_ROOT, child_env, default_sigint
from trainproc import Child, pause_env

from indicator_transformer.data.cache import FeatureCache

TRAIN = str(REPO_ROOT / "train_indicator_transformer.py")
VALIDATE = str(REPO_ROOT / "validate_cache.py")
PREPARE = [TRAIN, "--symbols", "6", "--bars", "700", "--prepare-only", "--no-progress"]


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, env=child_env(), capture_output=True, text=True,
                          timeout=300, preexec_fn=default_sigint)


def test_repair_and_clear_all_during_a_preparation_are_refused_naming_it_and_remove_nothing(
        tmp_path: Path) -> None:
    env = pause_env("prepare_symbol:2")
    env["INDICATOR_TRANSFORMER_PAUSE_TIMEOUT"] = "300"
    child = Child(subprocess.Popen([sys.executable, *PREPARE], cwd=tmp_path, env=env, text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=default_sigint))
    try:
        child.wait_for("PAUSED prepare_symbol 2")  # entries written, not yet committed
        cache = tmp_path / "cache"
        before = sorted(p.name for p in cache.iterdir() if not p.name.endswith(".tmp"))  # final names
        assert any(n.endswith(".entry.npy") for n in before)
        for args in ([VALIDATE], [VALIDATE, "--clear-all"]):
            r = _run(args, tmp_path)
            assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
            assert f"cache/ is in use by PID {child.proc.pid} (a run preparing features in it)" in r.stderr
        # Nothing removed (its workers may still be writing more).
        assert set(before) <= {p.name for p in cache.iterdir()}
        dry = _run([VALIDATE, "--dry-run"], tmp_path)  # a check may run: it says what it cannot know
        assert dry.returncode in (0, 1) and f"note: cache/ is in use by PID {child.proc.pid}" in dry.stdout
        child.proc.send_signal(signal.SIGINT)
        assert child.finish() == 130, child.stderr
    finally:
        if child.proc.poll() is None:
            child.proc.kill()
    # What the stopped preparation committed is whole, and maintenance may run now.
    after = _run([VALIDATE], tmp_path)
    assert after.returncode == 0 and "Cache is consistent" in after.stdout
    assert "orphaned: " not in after.stdout
    again = _run(PREPARE, tmp_path)
    assert again.returncode == 0, again.stderr


def test_a_preparation_while_maintenance_holds_the_cache_is_refused_in_one_line(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path / "cache").open()
    with cache._maintenance(""):
        r = _run(PREPARE, tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert f"cache/ is being repaired or cleared by PID {os.getpid()} (validate_cache.py)" in r.stderr


def test_two_preparations_of_the_same_data_at_once_share_the_cache(tmp_path: Path) -> None:
    procs = [subprocess.Popen([sys.executable, *PREPARE], cwd=tmp_path, env=child_env(), text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=default_sigint)
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1] for o in outs]
    check = _run([VALIDATE, "--dry-run"], tmp_path)
    assert check.returncode == 0 and "Cache is consistent" in check.stdout, check.stdout
    warm = _run(PREPARE, tmp_path)
    assert warm.returncode == 0 and "(cache hits 6, misses 0)" in warm.stderr, warm.stderr
