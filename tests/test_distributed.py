"""Two CPU ranks (gloo) under PyTorch's own launcher, in real subprocesses: equal reruns, a
consistent stop (SIGINT to the launcher, SIGTERM to one rank), bit-exact resume, an elastic
restart that resumes by itself, and a resume with another world size.

Each rank's console goes to ``<log dir>/<run id>/attempt_<n>/<rank>/stderr.log`` (torchrun's
``--log-dir``) and, with ``--tee 3``, to the launcher's stderr prefixed by the rank.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from conftest import REPO_ROOT, child_env, default_sigint
from trainproc import SMALL, STEPS_PER_EPOCH, Child, assert_same_training_state, load, pids_alive

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            "--monitor-interval", "0.5"]


def _torchrun(root: Path, cache: Path, models: Path, *, launcher: tuple[str, ...] = (),
              extra: tuple[str, ...] = (), env: dict[str, str] | None = None,
              script: tuple[str, ...] = ("train_indicator_transformer.py", *SMALL)) -> Child:
    logs = root / "logs"
    cmd = [*TORCHRUN, *launcher, "--log-dir", str(logs), "--tee", "3", *script,
           "--cache-dir", str(cache), "--models-dir", str(models), *extra]
    child_environment = child_env()
    child_environment.update(env or {})
    return Child(subprocess.Popen(cmd, cwd=REPO_ROOT, env=child_environment, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint))


def _rank_logs(root: Path, attempt: int = 0) -> dict[int, list[str]]:
    """rank -> the lines of that rank's stderr in one attempt."""
    out = {}
    for f in (root / "logs").glob(f"*/attempt_{attempt}/*/stderr.log"):
        out[int(f.parent.name)] = f.read_text(encoding="utf-8").splitlines()
    return out


def _wait_until(cond, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _wait_paused(child: Child, count: int, timeout: float = 180) -> None:
    """Until ``count`` ranks printed PAUSED (the tee prefixes each line with its rank)."""
    def paused() -> bool:
        assert child.proc.poll() is None, child.stderr
        return sum("PAUSED" in line for line in list(child.lines)) >= count
    _wait_until(paused, timeout)


def _workers(launcher: subprocess.Popen) -> list[psutil.Process]:
    """The launcher's rank processes (its python children), ordered by rank."""
    procs = [p for p in psutil.Process(launcher.pid).children() if "train_indicator_transformer" in
             " ".join(p.cmdline())]
    return sorted(procs, key=lambda p: int(p.environ()["RANK"]))


def _family(launcher: subprocess.Popen) -> list[int]:
    return [launcher.pid] + [p.pid for p in psutil.Process(launcher.pid).children(recursive=True)]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("dist_cache")


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Path:
    """An uninterrupted 2-rank run: its models folder."""
    root = tmp_path_factory.mktemp("dist_reference")
    child = _torchrun(root, cache_dir, root / "models")
    assert child.finish(timeout=300) == 0, child.stderr
    return root / "models"


def test_a_two_rank_run_writes_once_and_equals_its_rerun_bit_for_bit(reference: Path, cache_dir: Path,
                                                                     tmp_path: Path) -> None:
    child = _torchrun(tmp_path, cache_dir, tmp_path / "models")
    assert child.finish(timeout=300) == 0, child.stderr
    a, b = load(reference / "checkpoint_epoch_2.pth"), load(tmp_path / "models" / "checkpoint_epoch_2.pth")
    assert_same_training_state(a, b)
    assert b["world_size"] == 2 and len(b["rng_ranks"]) == 2
    assert not torch.equal(b["rng_ranks"][0]["torch"], b["rng_ranks"][1]["torch"])  # own dropout
    assert len(list((tmp_path / "runs").iterdir())) == 1  # one run folder: only rank 0 writes
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == \
        [".lock", "baselines.json", "best.pth", "checkpoint_epoch_1.pth", "checkpoint_epoch_2.pth",
         "evaluation.json"]
    logs = _rank_logs(tmp_path)
    assert any("Training 3,201 parameters" in line for line in logs[0])
    assert not any("Training" in line for line in logs[1])  # rank 1 keeps the console quiet


def test_sigint_to_the_launcher_saves_one_checkpoint_and_resume_under_torchrun_is_bit_exact(
        reference: Path, cache_dir: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    child = _torchrun(tmp_path, cache_dir, models, env={"INDICATOR_TRANSFORMER_PAUSE_AT": "train_step:17"})
    _wait_paused(child, 2)
    family = _family(child.proc)
    child.proc.send_signal(signal.SIGINT)
    child.finish(timeout=60)
    _wait_until(lambda: not pids_alive(family), 30)  # the process table holds none of the job

    assert [p.name for p in models.glob("*interrupted*")] == ["checkpoint_epoch_1_interrupted.pth"]
    saved = load(models / "checkpoint_epoch_1_interrupted.pth")
    assert (saved["epoch"], saved["step_in_epoch"], saved["global_step"]) == (1, 17, 17)
    assert len(saved["rng_ranks"]) == 2
    logs = _rank_logs(tmp_path)
    for rank in (0, 1):
        assert logs[rank][-1] == "Cleanup complete", logs[rank]
        assert any("exit code 130" in line and "global step 17" in line for line in logs[rank]), logs[rank]
    assert "forcefully" not in child.stderr  # no rank needed torchrun's SIGKILL

    # The spec's resume command, under torchrun: rank 0 chooses the checkpoint, both ranks load it.
    again = _torchrun(tmp_path, cache_dir, models, script=("resume_training.py", "--no-progress"))
    assert again.finish(timeout=300) == 0, again.stderr
    assert "Resuming from" in again.stderr and "checkpoint_epoch_1_interrupted.pth" in again.stderr
    assert_same_training_state(load(reference / "checkpoint_epoch_2.pth"),
                               load(models / "checkpoint_epoch_2.pth"))


@pytest.mark.parametrize(("point", "during"), [("train_step:10", "train"), ("val_batch:1", "validation")])
def test_sigterm_to_one_rank_stops_every_rank_after_the_same_step(point: str, during: str, cache_dir: Path,
                                                                   tmp_path: Path) -> None:
    # Rank 1 pauses at the point; rank 0 runs ahead into the next collective and waits there.
    models = tmp_path / "models"
    child = _torchrun(tmp_path, cache_dir, models, env={"INDICATOR_TRANSFORMER_PAUSE_AT": point,
                                                        "INDICATOR_TRANSFORMER_PAUSE_RANKS": "1"})
    _wait_paused(child, 1)
    family = _family(child.proc)
    _workers(child.proc)[1].send_signal(signal.SIGTERM)
    code = child.finish(timeout=60)
    _wait_until(lambda: not pids_alive(family), 30)

    assert code != 0
    assert child.stderr.count("exitcode  : 143") == 2, child.stderr  # torchrun's report of both ranks
    saved = load(next(models.glob("*interrupted*")))
    assert len(list(models.glob("*interrupted*"))) == 1
    step = 10 if during == "train" else STEPS_PER_EPOCH
    assert saved["global_step"] == step
    logs = _rank_logs(tmp_path)
    assert any(f"Stopped during {during}" in line for line in logs[0])
    assert any(f"after global step {step}" in line and "exit code 143" in line for line in logs[1])
    assert logs[0][-1] == logs[1][-1] == "Cleanup complete"


def test_a_rank_killed_mid_epoch_is_restarted_and_the_run_ends_as_if_uninterrupted(
        reference: Path, cache_dir: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    child = _torchrun(tmp_path, cache_dir, models, launcher=("--max-restarts=1",),
                      extra=("--checkpoint-every", "8"),
                      env={"INDICATOR_TRANSFORMER_PAUSE_AT": "train_step:45",
                           "INDICATOR_TRANSFORMER_PAUSE_RANKS": "1@0"})  # rank 1, first attempt only
    _wait_paused(child, 1)
    _workers(child.proc)[1].send_signal(signal.SIGKILL)
    assert child.finish(timeout=300) == 0, child.stderr
    restarted = _rank_logs(tmp_path, attempt=1)
    assert any("--resume auto: continuing from" in line and "step_40" in line for line in restarted[0]), \
        restarted[0]
    assert_same_training_state(load(reference / "checkpoint_epoch_2.pth"),
                               load(models / "checkpoint_epoch_2.pth"))


def test_a_two_rank_checkpoint_resumes_in_one_process_on_the_same_global_batches(
        reference: Path, cache_dir: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(reference / "checkpoint_epoch_1.pth", models)
    r = subprocess.run([sys.executable, "resume_training.py", "--models-dir", str(models), "--cache-dir",
                        str(cache_dir), "--no-progress"], cwd=REPO_ROOT, env=child_env(), capture_output=True,
                       text=True, timeout=300, preexec_fn=default_sigint)
    assert r.returncode == 0, r.stderr
    assert "written by 2 process(es), continuing with 1" in r.stderr
    one, two = load(models / "checkpoint_epoch_2.pth"), load(reference / "checkpoint_epoch_2.pth")
    diff = max(float((one["model"][k] - two["model"][k]).abs().max()) for k in two["model"])
    print(f"\nlargest parameter difference, 1-process resume vs the 2-rank run: {diff:.3g}")
    # Same global batches and learning rates; dropout masks and reduction order differ.
    assert one["global_step"] == two["global_step"] and one["scheduler"] == two["scheduler"]
    assert diff < 0.05
    steps = torch.tensor(one["loss_history"]["steps"][STEPS_PER_EPOCH:])
    ref = torch.tensor(two["loss_history"]["steps"][STEPS_PER_EPOCH:])
    assert torch.corrcoef(torch.stack([steps, ref]))[0, 1] > 0.9  # the same batches, step by step
    assert os.path.exists(models / "evaluation.json")


def test_a_checkpoint_whose_rank_rng_states_do_not_fit_its_world_size_is_refused(reference: Path,
                                                                                  tmp_path: Path) -> None:
    from indicator_transformer.errors import CheckpointError
    from indicator_transformer.training import checkpoint as ckpt

    state = load(reference / "checkpoint_epoch_2.pth")
    ckpt.load_checkpoint(reference / "checkpoint_epoch_2.pth")  # the written one is valid
    for field, broken in (("rng_ranks", state["rng_ranks"][:1]), ("world_size", 3)):
        bad = dict(state, **{field: broken})
        path = ckpt.save_checkpoint(tmp_path / f"bad_{field}.pth", bad)
        with pytest.raises(CheckpointError, match="rng_ranks"):
            ckpt.load_checkpoint(path)


def test_ranks_whose_launcher_is_killed_stop_with_one_checkpoint_instead_of_training_on(
        cache_dir: Path, tmp_path: Path) -> None:
    """kill -9 of torchrun (or a signal it does not handle) must not leave its ranks training
    unsupervised beside the job a scheduler starts again: they stop as on SIGTERM."""
    models = tmp_path / "models"
    child = _torchrun(tmp_path, cache_dir, models, env={"INDICATOR_TRANSFORMER_PAUSE_AT": "train_step:12"})
    _wait_paused(child, 2)
    ranks = [p.pid for p in _workers(child.proc)]
    child.proc.kill()
    child.finish(timeout=60)
    _wait_until(lambda: not pids_alive(ranks), 60)
    saved = [p.name for p in models.glob("*interrupted*")]
    assert saved == ["checkpoint_epoch_1_interrupted.pth"], sorted(p.name for p in models.iterdir())
    assert load(models / saved[0])["global_step"] == 12
    assert not (models / "evaluation.json").exists()


def _signal_one_rank_while_rank_0_evaluates(tmp_path: Path, cache_dir: Path, rank: int, sig: int) -> float:
    """Pause rank 0 in the final test evaluation (rank 1 waits for it), send ``sig`` to ``rank``;
    the seconds until the launcher exited, once no process of the job is left."""
    child = _torchrun(tmp_path, cache_dir, tmp_path / "models",
                      env={"INDICATOR_TRANSFORMER_PAUSE_AT": "test_batch:1",
                           "INDICATOR_TRANSFORMER_PAUSE_RANKS": "0"})
    _wait_paused(child, 1)
    family = _family(child.proc)
    sent = time.monotonic()
    _workers(child.proc)[rank].send_signal(sig)
    child.finish(timeout=60)
    took = time.monotonic() - sent
    _wait_until(lambda: not pids_alive(family), 30)
    tmp_path.joinpath("launcher.err").write_text(child.stderr)
    return took


def test_sigterm_to_one_rank_during_rank_0s_final_evaluation_stops_both_at_once(cache_dir: Path,
                                                                                tmp_path: Path) -> None:
    """Rank 1 waits while rank 0 evaluates: a stop only rank 1 receives is passed on to rank 0
    (it used to wait 20 s and then give up, leaving rank 0 to be killed by torchrun)."""
    took = _signal_one_rank_while_rank_0_evaluates(tmp_path, cache_dir, 1, signal.SIGTERM)
    assert took < 12, f"{took:.1f}s"  # one relay poll and the teardown, not the 20 s give-up
    launcher = (tmp_path / "launcher.err").read_text()
    assert launcher.count("exitcode  : 143") == 2, launcher
    logs = _rank_logs(tmp_path)
    assert any("Another rank received SIGTERM" in line for line in logs[0]), logs[0]
    assert any("Evaluation stopped" in line for line in logs[0]), logs[0]
    assert logs[0][-1] == logs[1][-1] == "Cleanup complete"
    models = tmp_path / "models"
    assert not (models / "evaluation.json").exists() and (models / "checkpoint_epoch_2.pth").exists()


def test_rank_0_killed_during_the_final_evaluation_ends_the_waiting_rank_at_once(cache_dir: Path,
                                                                                 tmp_path: Path) -> None:
    took = _signal_one_rank_while_rank_0_evaluates(tmp_path, cache_dir, 0, signal.SIGKILL)
    assert took < 12, f"{took:.1f}s"
    assert any("rank 0 exited during evaluation" in line or "exit code 143" in line
               for line in _rank_logs(tmp_path)[1]), (tmp_path / "launcher.err").read_text()


def test_bad_data_ends_every_rank_with_exit_code_2(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "AAA.csv").write_text("date,open,high,low,close,volume\n2020-01-01,1,2,0.5,oops,10\n")
    child = _torchrun(tmp_path, tmp_path / "cache", tmp_path / "models",
                      extra=("--data-dir", str(data)))
    code = child.finish(timeout=120)
    assert code != 0
    logs = _rank_logs(tmp_path)
    assert any("error:" in line for line in logs[0]) and "AAA.csv" in "\n".join(logs[0]), logs[0]
    # No rank reports a crash (exit code 1). Rank 1 may be 2 (it saw rank 0's failure first) or 143
    # (torchrun's SIGTERM after rank 0's exit came first): "exitcode  : 1" alone matched 143.
    assert not re.search(r"exitcode\s*:\s*1\b", child.stderr), child.stderr
    assert re.search(r"exitcode\s*:\s*2\b", child.stderr), child.stderr
    assert not any("Traceback" in line for rank in logs.values() for line in rank)


@pytest.mark.parametrize(("paused", "signalled", "point"), [(0, 1, "val_batch:1"), (1, 0, "train_step:20")])
def test_a_signal_to_a_rank_blocked_in_the_stop_agreement_stops_every_rank_one_step_later(
        paused: int, signalled: int, point: str, cache_dir: Path, tmp_path: Path) -> None:
    """The signalled rank waits in the agreement for the paused one and has contributed 0: the
    agreement says go on, so it goes on with the others (it used to stop alone and enter another
    collective than its peer: a gloo 'collective mismatch' abort and no checkpoint)."""
    models = tmp_path / "models"
    child = _torchrun(tmp_path, cache_dir, models,
                      env={"INDICATOR_TRANSFORMER_PAUSE_AT": point,
                           # the pause ends by itself (the signal goes to the other rank)
                           "INDICATOR_TRANSFORMER_PAUSE_TIMEOUT": "10",
                           "INDICATOR_TRANSFORMER_PAUSE_RANKS": str(paused),
                           "INDICATOR_TRANSFORMER_TRACE": "agree"})
    _wait_paused(child, 1)
    family = _family(child.proc)
    # Evidence, not a sleep: the other rank says it enters the agreement of the paused place,
    # where it blocks until the paused rank joins.
    name, _, value = point.partition(":")
    place = f"AT agree {'train' if name == 'train_step' else name.removesuffix('_batch')}:{value}"
    _wait_until(lambda: any(f"{signalled}]:" in line and line.endswith(place) for line in list(child.lines)))
    _workers(child.proc)[signalled].send_signal(signal.SIGTERM)
    child.finish(timeout=120)
    _wait_until(lambda: not pids_alive(family), 30)
    assert child.stderr.count("exitcode  : 143") == 2, child.stderr
    saved = list(models.glob("*interrupted*"))
    assert len(saved) == 1, sorted(p.name for p in models.iterdir())
    logs = _rank_logs(tmp_path)
    assert logs[0][-1] == logs[1][-1] == "Cleanup complete", logs
    text = "\n".join(line for lines in logs.values() for line in lines)
    assert "Traceback" not in text and "terminate called" not in text
    assert load(saved[0])["global_step"] in ((STEPS_PER_EPOCH, 21) if paused == 0 else (21,))
