"""Campaign 7: a full disk under the checkpoint, cache or report writes.

The folder under test (``models/``, ``cache/`` or the run folders) lives on a tiny tmpfs mounted
for the trial, of a random size, so the space runs out at a random write. Where ``mount`` is not
allowed, ``RLIMIT_FSIZE`` (set in the child only) makes every write past a random size fail with
EFBIG instead. Then: a clear error (exit 1 or 2, the OS's reason, no traceback), every checkpoint
and cache file under a final name intact, no partial file under a final name; after the space is
freed, a rerun continues and ends with the uninterrupted run's model.
"""

from __future__ import annotations

import contextlib
import resource
import signal
import subprocess
from pathlib import Path

from reliability.harness import RESUME, TRAIN, Trial, TrialFailure, tail
from reliability.interrupts import draw_config

KIB = 1024
_mount_ok: bool | None = None


def can_mount(probe: Path) -> bool:
    """Whether this process may mount a tmpfs (root in most containers here); checked once."""
    global _mount_ok
    if _mount_ok is None:
        probe.mkdir(parents=True, exist_ok=True)
        ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe)],
                            capture_output=True).returncode == 0
        if ok:
            subprocess.run(["umount", str(probe)], capture_output=True)
        _mount_ok = ok
    return _mount_ok


def mount(folder: Path, size_kib: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(folder)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise TrialFailure(f"harness: mount tmpfs at {folder} failed: {r.stderr}")


def resize(folder: Path, size_kib: int) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size_kib}k", str(folder)], check=True, capture_output=True)


def umount(folder: Path) -> None:
    with contextlib.suppress(Exception):
        subprocess.run(["umount", "-l", str(folder)], capture_output=True, timeout=30)


# Sizes (KiB) at which the first failing write lands somewhere different, per target: the tiny
# configuration's checkpoints are ~20 KiB (two live at once while one is replaced), its cache
# ~70 KiB, its run folder ~30 KiB.
SIZES = {"models": (8, 24, 40, 56, 72, 96, 128), "cache": (8, 24, 40, 56, 72, 100),
         "runs": (4, 8, 12, 20, 28, 40)}


def disk_full_trial(trial: Trial) -> None:
    """One folder on a tiny filesystem; the run must fail clearly and leave everything intact."""
    rng = trial.rng
    target = rng.choice(["models", "cache", "runs"])
    cfg = draw_config(rng)
    size = rng.choice(SIZES[target])
    fs = trial.root / "fs"
    use_mount = can_mount(trial.campaign.workdir / ".mount-probe")
    folders = {"models": "models", "cache": "cache", "runs": "runs"}
    folders[target] = f"fs/{target}"
    where = ["--models-dir", folders["models"], "--cache-dir", folders["cache"],
             "--runs-dir", folders["runs"]]
    trial.inject(f"{target}/ on a {size} KiB {'tmpfs' if use_mount else 'RLIMIT_FSIZE'}"
                 f"{' [checkpoint-every 5]' if '--checkpoint-every' in cfg else ''}")
    models, cache = trial.root / folders["models"], trial.root / folders["cache"]
    try:
        if use_mount:
            mount(fs, size)
            first = trial.run([*cfg, *where], script=TRAIN, timeout=300)
        else:
            first = _run_limited(trial, [*cfg, *where], size * KIB)
        code = first.child.proc.returncode
        if code == 0:
            trial.note("everything fitted")
        else:
            trial.check(code in (1, 2),
                        f"exit code {code} on a full disk, expected 1 or 2:\n{tail(first.stderr)}")
            reason = "No space left on device" if use_mount else "File too large"
            trial.check(reason in first.stderr, f"the error does not say {reason!r}:\n{tail(first.stderr)}")
            trial.check_no_traceback(first, "full disk")
        trial.check_no_process_left(first)
        trial.check_files(models=models, cache=cache, temp_allowed=False)
        if cache.exists():
            trial.check_cache_consistent(cache)
        if use_mount:
            resize(fs, 64 * KIB)  # space freed
        if code != 0:
            has_checkpoint = models.is_dir() and any(models.glob("*.pth"))
            if has_checkpoint and rng.random() < 0.6:
                again = trial.run(["--models-dir", folders["models"], "--cache-dir", folders["cache"],
                                   "--runs-dir", folders["runs"], "--no-progress", "--no-plots"],
                                  script=RESUME, timeout=300)
            else:
                again = trial.run([*cfg, *where, "--resume", "auto"], script=TRAIN, timeout=300)
            trial.check(again.child.proc.returncode == 0,
                        f"the rerun after freeing space exited {again.child.proc.returncode}:\n"
                        f"{tail(again.stderr)}")
            trial.check_no_traceback(again, "rerun after freeing space")
            trial.check_no_process_left(again)
        trial.check_files(models=models, cache=cache)
        trial.check_equals_reference(cfg, models=models)
    finally:
        trial.kill_everything()
        if use_mount:
            umount(fs)


def _run_limited(trial: Trial, args: list[str], limit: int):
    """The training command with RLIMIT_FSIZE = ``limit`` bytes (SIGXFSZ ignored: EFBIG instead)."""
    import sys

    from reliability.harness import REPO_ROOT, Child, Proc, child_env

    def preexec() -> None:
        import os

        os.setpgid(0, 0)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    cmd = [sys.executable, str(REPO_ROOT / TRAIN), *args]
    trial.out.commands.append(f"(cd {trial.root} && ulimit -f {limit // 512} && {' '.join(cmd)})")
    out_path = trial.root / ".stdout.limited.log"
    with open(out_path, "wb") as out:
        popen = subprocess.Popen(cmd, cwd=trial.root, env=child_env(), stdout=out, stderr=subprocess.PIPE,
                                 text=True, errors="replace", preexec_fn=preexec)
    proc = Proc(Child(popen), cmd, out_path)
    trial.procs.append(proc)
    proc.finish(300)
    return proc
