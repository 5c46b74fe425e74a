"""A universe's size is not bounded by open file descriptors, and a worker that cannot start is
one error line, never a hang.

Issue 18: every cached symbol's memory map held a descriptor, so 1,100 symbols under `ulimit -n
1024` died with "Too many open files" (cold cache) or printed a traceback from starting the
preparation worker and hung for good (warm cache).
"""

from __future__ import annotations

import gc
import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO_ROOT, child_env

from indicator_transformer.data.mapping import map_readonly

TRAIN = str(REPO_ROOT / "train_indicator_transformer.py")


def _limited(n: int):
    def preexec() -> None:
        import signal

        signal.signal(signal.SIGINT, signal.SIG_DFL)
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))  # soft and hard, as `ulimit -n` sets them
    return preexec


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts descriptors in /proc")
def test_a_map_holds_no_descriptor_and_is_released_with_its_last_view(tmp_path: Path) -> None:
    path = tmp_path / "x.bin"
    np.arange(512, dtype=np.int64).tofile(path)
    before = _open_fds()
    maps = [map_readonly(path) for _ in range(300)]
    assert _open_fds() == before
    view = maps[0][8:24].view(np.int64)
    assert isinstance(view, np.memmap) and view.tolist() == [1, 2] and not view.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        view[0] = 5
    del maps
    gc.collect()
    assert view.tolist() == [1, 2]  # the map lives as long as a view of it
    mapped = [ln for ln in Path("/proc/self/maps").read_text().splitlines() if str(path) in ln]
    assert len(mapped) == 1
    del view
    gc.collect()
    assert not [ln for ln in Path("/proc/self/maps").read_text().splitlines() if str(path) in ln]


def test_1100_symbols_prepare_cold_and_warm_under_ulimit_n_256(tmp_path: Path) -> None:
    args = [sys.executable, TRAIN, "--symbols", "1100", "--bars", "300", "--window", "16", "--prepare-only",
            "--no-progress"]
    for hits in (0, 1100):
        r = subprocess.run(args, cwd=tmp_path, env=child_env(), capture_output=True, text=True, timeout=300,
                           preexec_fn=_limited(256))
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
        assert "Prepared 1100/1100 symbols" in r.stderr
        assert f"(cache hits {hits}, misses {1100 - hits})" in r.stderr


def test_a_preparation_worker_that_cannot_start_is_one_error_line_not_a_hang(tmp_path: Path) -> None:
    # So few descriptors that the interpreter starts but the process pool's pipes do not fit.
    args = [sys.executable, TRAIN, "--symbols", "100", "--bars", "300", "--window", "16", "--prepare-only",
            "--no-progress"]
    r = subprocess.run(args, cwd=tmp_path, env=child_env(), capture_output=True, text=True, timeout=120,
                       preexec_fn=_limited(12))
    if "Preparing 100 symbol(s)" not in r.stderr:
        pytest.skip(f"this interpreter needs more than 12 descriptors to start: {r.stderr[-300:]}")
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    (line,) = [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]
    assert "could not start a preparation worker process (Too many open files)" in line
    assert "ulimit -n" in line


def _summary(folder: Path) -> dict:
    import json

    (run,) = [p for p in (folder / "runs").iterdir() if p.is_dir()]
    return json.loads((run / "summary.json").read_text())


def test_dataloader_workers_the_limit_would_starve_are_refused_in_one_line_not_a_hang(tmp_path: Path) -> None:
    """Before: under `ulimit -n 16` a worker's batch could not be handed over (its tensors pass as
    descriptors), multiprocessing dropped it without a word, and the training waited for ever -
    even SIGTERM did not end it. Under `ulimit -n 9`, starting the worker was a traceback."""
    small = ["--symbols", "3", "--bars", "600", "--epochs", "1", "--window", "8", "--d-model", "8",
             "--heads", "2", "--layers", "1", "--no-progress", "--no-plots", "--num-workers", "1"]
    for n in (9, 16):
        work = tmp_path / str(n)
        work.mkdir()
        r = subprocess.run([sys.executable, TRAIN, *small], cwd=work, env=child_env(), capture_output=True,
                           text=True, timeout=240, preexec_fn=_limited(n))
        assert r.returncode == 1 and "Traceback" not in r.stderr and "Exception ignored" not in r.stderr, \
            r.stderr[-3000:]
        (line,) = [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]
        assert "DataLoader worker" in line and "--num-workers 0" in line and "ulimit -n" in line, line
        doc = _summary(work)
        assert doc["status"] == "failed" and "too many open files" in doc["failed"]["reason"]
        # the run continues once the limit allows it: nothing prepared was lost
        again = subprocess.run([sys.executable, TRAIN, *small, "--resume", "auto"], cwd=work, env=child_env(),
                               capture_output=True, text=True, timeout=240)
        assert again.returncode == 0, again.stderr[-2000:]
        assert "(cache hits 3, misses 0)" in again.stderr


def test_descriptors_running_out_in_a_write_or_a_read_are_one_error_line_and_the_cache_stays_consistent(
        tmp_path: Path) -> None:
    """Before: `ulimit -n 5` gave an EMFILE traceback from the manifest's write (or from reading
    an entry back), and left entry files that no manifest named."""
    from indicator_transformer.data.cache import FeatureCache

    args = [sys.executable, TRAIN, "--symbols", "3", "--bars", "600", "--window", "8", "--prepare-only",
            "--no-progress"]
    r = subprocess.run(args, cwd=tmp_path, env=child_env(), capture_output=True, text=True, timeout=120,
                       preexec_fn=_limited(5))
    if "Preparing 3 symbol(s)" not in r.stderr:
        pytest.skip(f"this interpreter needs more than 5 descriptors to start: {r.stderr[-300:]}")
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    if r.returncode != 0:
        assert r.returncode == 1, r.stderr
        (line,) = [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]
        assert "too many open files" in line and "ulimit -n" in line, line
    report = FeatureCache(tmp_path / "cache").validate_full(fix=False)
    assert report.consistent, report.problems
