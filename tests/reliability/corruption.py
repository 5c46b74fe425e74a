"""Campaigns 4 and 5: damaged files (truncated, zeroed, flipped, appended to) and hostile ones (a
pickled payload, an object-dtype array, a manifest naming a file outside the cache, absurd
shapes, symbolic links pointing elsewhere). Every one must be detected and named, never used
silently, never execute anything, and the run must go on to the uninterrupted run's model.

Each trial starts from a real interrupted run: training with periodic checkpoints stopped by
SIGTERM at a random step, so ``models/`` holds several checkpoints and ``cache/`` a full cache.
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import signal
from pathlib import Path

from reliability.harness import (
    BASE,
    RESUME,
    STEPS_PER_EPOCH,
    TRAIN,
    Trial,
    TrialFailure,
    checkpoint_problem,
    tail,
)
from reliability.interrupts import CHECKPOINT_EVERY, TOTAL_STEPS, resume_to_end

CFG = (*BASE, "--checkpoint-every", str(CHECKPOINT_EVERY), "--keep", "3")  # as interrupts.draw_config


def stopped_run(trial: Trial) -> int:
    """A training run of CFG stopped by SIGTERM after a random step past the first checkpoints."""
    step = trial.rng.choice([s for s in range(2 * CHECKPOINT_EVERY + 1, TOTAL_STEPS) if s % STEPS_PER_EPOCH])
    proc = trial.start(list(CFG), env={"INDICATOR_TRANSFORMER_PAUSE_AT": f"train_step:{step}"}, script=TRAIN)
    trial.wait_paused(proc)
    trial.signal(proc, signal.SIGTERM)
    code = proc.finish(120)
    if code != 143:
        raise TrialFailure(f"the setup run stopped at step {step} exited {code}, expected 143:\n"
                           f"{tail(proc.stderr)}")
    return step


def damage(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """Truncate, zero a range, flip 1-3 bytes or append junk: (new bytes, what was done)."""
    mode = rng.choice(["truncate", "zero", "flip", "append"])
    buf = bytearray(data)
    if mode == "truncate":
        n = rng.choice([0, rng.randrange(len(buf)), len(buf) - rng.randint(1, 16)])
        return bytes(buf[:max(n, 0)]), f"truncated to {max(n, 0)} of {len(buf)} bytes"
    if mode == "zero":
        start = rng.randrange(len(buf))
        length = rng.choice([1, 8, 64, 4096])
        end = min(len(buf), start + length)
        if not any(buf[start:end]):
            buf[start] = 0xFF  # already zero there: make it a change
        else:
            buf[start:end] = bytes(end - start)
        return bytes(buf), f"zeroed bytes {start}..{end}"
    if mode == "flip":
        where = []
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(len(buf))
            buf[i] ^= 1 << rng.randrange(8)
            where.append(str(i))
        return bytes(buf), f"flipped a bit at byte(s) {', '.join(where)}"
    junk = bytes(rng.randrange(256) for _ in range(rng.choice([1, 7, 100])))
    return bytes(buf) + junk, f"appended {len(junk)} junk bytes"


def _cache_data_files(trial: Trial) -> list[Path]:
    return sorted(p for p in (trial.root / "cache").glob("*.npy") if not p.name.startswith("."))


def _checkpoints(trial: Trial) -> list[Path]:
    return sorted(p for p in (trial.root / "models").glob("*.pth"))


def _resume_choice(trial: Trial) -> Path | None:
    """The checkpoint a plain resume would continue (the tool's own choice, asked in-process: a
    --list subprocess costs seconds, and the trial runs --list after the damage anyway)."""
    from indicator_transformer.training import checkpoint as ckpt

    info, _ = ckpt.select_for_resume(trial.root / "models")
    return None if info is None else Path(info.path)


def corrupt_trial(trial: Trial) -> None:
    """Campaign 4: damage one cache file, the manifest or one checkpoint; it must be detected,
    named, repaired (cache) or skipped (checkpoint), and the run must end as if nothing happened."""
    rng = trial.rng
    step = stopped_run(trial)
    target = rng.choices(["cache", "manifest", "checkpoint"], [2, 1, 3])[0]
    if target == "checkpoint":
        victim = rng.choice(_checkpoints(trial))
    elif target == "cache":
        victim = rng.choice(_cache_data_files(trial))
    else:
        victim = trial.root / "cache" / "manifest.json"
    chosen_before = _resume_choice(trial) if target == "checkpoint" else None
    new, how = damage(victim.read_bytes(), rng)
    victim.write_bytes(new)
    trial.damaged.add(victim)
    trial.inject(f"{victim.name} {how} (run stopped at step {step})")

    if target == "checkpoint":
        _check_checkpoint_refused(trial, victim)
        resumed = _resume(trial)
        if chosen_before is not None and chosen_before.name == victim.name:
            trial.check(f"skipping corrupt checkpoint {victim}" in resumed.stderr
                        or victim.name in resumed.stderr,
                        f"the resume did not say it skipped {victim.name}:\n{tail(resumed.stderr)}")
    else:
        if rng.random() < 0.5:  # validate_cache.py first: it must name and remove the damage
            res = trial.validate_cache(fix=True)
            named = victim.name in res.stdout or (target == "manifest" and "manifest" in res.stdout)
            trial.check(res.child.proc.returncode == 0 and named,
                        f"validate_cache.py did not name {victim.name} (exit {res.child.proc.returncode}):\n"
                        f"{res.stdout[-800:]}")
            trial.check_no_traceback(res, "validate_cache.py")
            resume_to_end(trial, CFG)
        else:  # the next run itself must notice, name it and recompute
            resumed = resume_to_end(trial, CFG)
            symbol = victim.name.split("-", 1)[0]
            err = resumed.stderr
            named = ((victim.name in err or "manifest.json" in err) if target == "manifest"
                     else (victim.name in err or f"cache entry {symbol}" in err))
            trial.check(named, f"the resume did not report the damaged {victim.name}:\n{tail(err)}")
        trial.check_cache_consistent(command=True)
    trial.check_files()
    trial.check_equals_reference(CFG)


def _check_checkpoint_refused(trial: Trial, victim: Path) -> None:
    """--list marks the damaged checkpoint CORRUPT naming it; --checkpoint refuses it with exit 2."""
    listed = trial.list_checkpoints()
    trial.check(listed.child.proc.returncode == 0, f"--list exited {listed.child.proc.returncode}")
    row = [line for line in listed.stdout.splitlines() if victim.name in line and "CORRUPT" in line]
    trial.check(bool(row), f"--list does not mark {victim.name} CORRUPT:\n{listed.stdout}")
    trial.check_no_traceback(listed, "--list")
    direct = trial.run(["--checkpoint", str(victim), "--no-progress", "--no-plots"], script=RESUME,
                       timeout=120)
    trial.check(direct.child.proc.returncode == 2 and str(victim) in direct.stderr,
                f"--checkpoint {victim.name}: exit {direct.child.proc.returncode}, expected 2 naming it:\n"
                f"{tail(direct.stderr)}")
    trial.check_no_traceback(direct, f"--checkpoint {victim.name}")
    trial.check_no_process_left(direct)


def _resume(trial: Trial):
    how = "resume" if trial.rng.random() < 0.6 else "auto"
    if how == "resume":
        proc = trial.run(["--no-progress", "--no-plots"], script=RESUME, timeout=300)
    else:
        proc = trial.run([*CFG, "--resume", "auto"], script=TRAIN, timeout=300)
    code = proc.child.proc.returncode
    trial.check(code == 0, f"resume ({how}) with a damaged file exited {code}:\n{tail(proc.stderr, 20)}")
    trial.check_no_traceback(proc, f"resume ({how})")
    trial.check_no_process_left(proc)
    return proc


# ---------------------------------------------------------------------------------------- hostile
class Exploit:
    """Unpickling this runs a shell command that creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (os.system, (f"touch {self.marker}",))


def _seal(state: dict, path: Path) -> None:
    """Write ``state`` as a checkpoint with a valid digest (as this tool's writer would)."""
    import torch

    from indicator_transformer.integrity import seal_zip

    buf = io.BytesIO()
    torch.save(state, buf)
    path.write_bytes(seal_zip(buf.getvalue()))


def hostile_trial(trial: Trial) -> None:
    """Campaign 5: a hostile file appears in models/ or cache/; nothing executes, nothing outside
    the two folders is read, written or deleted, the error is clear, the run ends as uninterrupted."""
    rng = trial.rng
    variant = rng.choice(["pickle_checkpoint", "object_npy", "manifest_outside", "absurd_checkpoint",
                          "cache_symlink", "models_symlink", "best_symlink"])
    step = stopped_run(trial)
    marker = trial.root / "PWNED"
    outside = trial.root / "outside"
    outside.mkdir()
    models, cache = trial.root / "models", trial.root / "cache"
    import torch

    expect_refused: Path | None = None
    if variant == "pickle_checkpoint":
        newest = max(_checkpoints(trial), key=lambda p: p.stat().st_mtime_ns)
        state = torch.load(newest, weights_only=True)
        state[rng.choice(["config", "rng", "sampler", "extra"])] = {"payload": Exploit(marker)}
        evil = models / rng.choice([newest.name, "checkpoint_epoch_9.pth", "best.pth"])
        torch.save(state, evil)
        expect_refused = evil
        trial.inject(f"{evil.name} carries a pickled payload (run stopped at step {step})")
    elif variant == "absurd_checkpoint":
        newest = max(_checkpoints(trial), key=lambda p: p.stat().st_mtime_ns)
        state = torch.load(newest, weights_only=True)
        k = rng.choice(sorted(state["model"]))
        what = rng.choice(["shape", "global_step", "epoch"])
        if what == "shape":
            state["model"][k] = torch.zeros(rng.choice([(1,), (3, 10_000), (0,)]))
        else:
            state[what] = rng.choice([10**15, -5, "7"])
        evil = models / newest.name
        _seal(state, evil)
        expect_refused = evil
        trial.inject(f"{evil.name} resealed with an absurd {what} (run stopped at step {step})")
    elif variant == "object_npy":
        import numpy as np

        victim = rng.choice(_cache_data_files(trial))
        arr = np.empty(2, dtype=object)
        arr[0], arr[1] = Exploit(marker), "x"
        with open(victim, "wb") as fh:
            np.save(fh, arr, allow_pickle=True)
        trial.inject(f"cache file {victim.name} replaced by an object-dtype .npy with a payload "
                     f"(run stopped at step {step})")
    elif variant == "manifest_outside":
        victim_outside = outside / "victim.npy"
        victim_outside.write_bytes(b"precious: not a cache file")
        doc = json.loads((cache / "manifest.json").read_bytes())
        text = json.dumps(doc)
        some = rng.choice(_cache_data_files(trial)).name
        text = text.replace(some, "../outside/victim.npy")
        doc = json.loads(text)
        from indicator_transformer.data.cache import manifest_bytes

        try:
            raw = manifest_bytes({k: v for k, v in doc.items() if k != "sha256"})
        except Exception:  # noqa: BLE001 - the manifest format moved on: write it unsealed
            raw = json.dumps(doc).encode()
        (cache / "manifest.json").write_bytes(raw)
        trial.inject(f"manifest.json (resealed) names ../outside/victim.npy instead of {some} "
                     f"(run stopped at step {step})")
    elif variant == "cache_symlink":
        victim = rng.choice(_cache_data_files(trial))
        target = outside / victim.name
        shutil.copyfile(victim, target)  # identical bytes: only not following the link protects it
        victim.unlink()
        victim.symlink_to(target)
        trial.inject(f"cache file {victim.name} replaced by a symlink to an identical copy outside "
                     f"(run stopped at step {step})")
    elif variant == "models_symlink":
        ref = trial.campaign.reference(CFG)
        target = outside / "foreign.pth"
        shutil.copyfile(ref / "checkpoint_epoch_2.pth", target)
        (models / "checkpoint_epoch_9.pth").symlink_to(target)
        trial.inject(f"models/checkpoint_epoch_9.pth is a symlink to a finished run's checkpoint outside "
                     f"(run stopped at step {step})")
    else:  # best_symlink: a write must replace the link, never write through it
        target = outside / "precious.pth"
        target.write_bytes(b"precious: not a checkpoint")
        (models / "best.pth").unlink(missing_ok=True)
        (models / "best.pth").symlink_to(target)
        trial.inject(f"models/best.pth is a symlink to a file outside (run stopped at step {step})")
    if expect_refused is not None:
        trial.damaged.add(expect_refused)
    before = {p.name: p.read_bytes() for p in outside.iterdir()}

    if expect_refused is not None:
        _check_checkpoint_refused(trial, expect_refused)
    else:
        res = trial.validate_cache(fix=False)  # a dry run names what is wrong, touches nothing
        trial.check_no_traceback(res, "validate_cache.py --dry-run")
    resumed = _resume(trial)
    if variant in ("object_npy", "cache_symlink", "manifest_outside"):
        trial.check("warning" in resumed.stderr.lower(),
                    f"the hostile cache file was not reported:\n{tail(resumed.stderr)}")
    if variant == "models_symlink":
        starts = [line for line in resumed.child.lines if "Resuming" in line or "continuing from" in line]
        trial.check("checkpoint_epoch_9" not in " ".join(starts),
                    "the resume continued from a symlink pointing outside models/")
    trial.check(not marker.exists(), "the payload ran: the marker file exists")
    after = {p.name: p.read_bytes() for p in outside.iterdir()}
    trial.check(after == before, f"files outside the cache and models folders changed: {sorted(before)} -> "
                                 f"{sorted(after)}")
    trial.check_files()
    trial.check_cache_consistent(command=True)
    trial.check_equals_reference(CFG)
    if expect_refused is not None and expect_refused.exists() and expect_refused.name != "best.pth":
        trial.check(checkpoint_problem(expect_refused) is not None, "the hostile checkpoint verifies")
