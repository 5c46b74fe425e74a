"""One line of training, never mixed: resuming an older checkpoint forks a new line that never
overwrites, deletes or is confused with the other line's files; best.pth and the epoch checkpoint
agree whatever instant the process dies; a report belongs to the checkpoint it names.

Every test runs the real commands in subprocesses and stops them with real signals or kill -9.
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, child_env, default_sigint
from trainproc import SMALL, STEPS_PER_EPOCH, Child, load, pause_env

from indicator_transformer.training import checkpoint as ckpt


def _cmd(tmp_path: Path, script: str, *args: str, env: dict | None = None) -> Child:
    return Child(subprocess.Popen(
        [sys.executable, str(REPO_ROOT / script), *args, "--no-progress"], cwd=tmp_path,
        env=env or child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=default_sigint))


def _run(tmp_path: Path, script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO_ROOT / script), *args, "--no-progress"], cwd=tmp_path,
                          env=child_env(), capture_output=True, text=True, timeout=300,
                          preexec_fn=default_sigint)


def _train(tmp_path: Path, *extra: str) -> Path:
    r = _run(tmp_path, "train_indicator_transformer.py", *SMALL, *extra)
    assert r.returncode == 0, r.stderr
    return tmp_path / "models"


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir() if p.is_file()}


def _report(models: Path) -> dict:
    return json.loads((models / "evaluation.json").read_text())


def test_resuming_an_older_checkpoint_forks_a_line_that_a_plain_resume_then_continues(tmp_path: Path
                                                                                      ) -> None:
    models = _train(tmp_path, "--epochs", "3")
    before = _digests(models)
    old_line = load(models / "checkpoint_epoch_3.pth")["lineage"]["line"]

    # Resume from epoch 2 for 2 more epochs and stop it 25 steps into epoch 3.
    stop_at = 2 * STEPS_PER_EPOCH + 25
    child = _cmd(tmp_path, "resume_training.py", "--checkpoint", "models/checkpoint_epoch_2.pth",
                 "--epochs", "2", env=pause_env(f"train_step:{stop_at}"))
    child.wait_for("PAUSED")
    child.proc.send_signal(signal.SIGINT)
    assert child.finish() == 130, child.stderr
    assert "starting line" in child.stderr and "moved" in child.stderr

    # The old line's later files were moved aside untouched; nothing of it was deleted.
    [archive] = (models / ckpt.ARCHIVE_DIR).iterdir()
    assert archive.name.endswith(f"-line-{old_line[:8]}")  # named after the line it holds
    moved = _digests(archive)
    assert {"checkpoint_epoch_3.pth", "evaluation.json"} <= set(moved)
    assert all(before[name] == digest for name, digest in moved.items())
    new = load(models / "checkpoint_epoch_3_interrupted.pth")
    assert new["global_step"] == stop_at and new["lineage"]["line"] != old_line
    assert new["lineage"]["ancestors"] == [[old_line, 2 * STEPS_PER_EPOCH]]

    listing = _run(tmp_path, "resume_training.py", "--list")
    assert listing.returncode == 0, listing.stderr
    assert f"continues line {new['lineage']['line'][:8]} from models/checkpoint_epoch_3_interrupted.pth" \
        in listing.stdout

    # A plain resume continues the new line (the work just saved), to its end.
    r = _run(tmp_path, "resume_training.py")
    assert r.returncode == 0, r.stderr
    assert "Resuming from models/checkpoint_epoch_3_interrupted.pth" in r.stderr
    final = load(models / "checkpoint_epoch_4.pth")
    assert final["lineage"]["line"] == new["lineage"]["line"]
    assert _report(models)["belongs_to"] == {"line": new["lineage"]["line"],
                                             "global_step": 4 * STEPS_PER_EPOCH, "epoch": 4}
    r = _run(tmp_path, "resume_training.py")
    assert r.returncode == 0 and "Nothing to do" in r.stdout

    # Going back to the archived line continues in models/ (never inside the archive): the line
    # just finished moves aside in turn, and the archived checkpoint's report is written here.
    r = _run(tmp_path, "resume_training.py", "--checkpoint", str(archive / "checkpoint_epoch_3.pth"))
    assert r.returncode == 0, r.stderr
    assert f"training continues in {models}" in r.stderr
    assert _report(models)["belongs_to"] == {"line": old_line, "global_step": 3 * STEPS_PER_EPOCH,
                                             "epoch": 3}
    assert not (archive / ckpt.ARCHIVE_DIR).exists() and len(list((models / ckpt.ARCHIVE_DIR).iterdir())) == 2


def test_kill_9_during_a_forked_resume_never_loses_the_new_line_to_retention(tmp_path: Path) -> None:
    models = _train(tmp_path, "--epochs", "3", "--keep", "2", "--checkpoint-every", "3")
    start = models / "checkpoint_epoch_3_step_93.pth"
    assert start.exists() and (models / "checkpoint_epoch_3.pth").exists()
    start_step, old_line = load(start)["global_step"], load(start)["lineage"]["line"]

    # From the older of the two kept checkpoints, to the end of epoch 4; kill -9 after several saves.
    child = _cmd(tmp_path, "resume_training.py", "--checkpoint", str(start.relative_to(tmp_path)),
                 "--epochs", "2", "--keep", "2", "--checkpoint-every", "3",
                 env=pause_env(f"train_step:{3 * STEPS_PER_EPOCH + 20}"))
    child.wait_for("PAUSED")
    child.proc.kill()
    child.finish()

    infos = [i for i in ckpt.list_checkpoints(models) if i.ok]
    lines = {i.line for i in infos}
    new_line = load(max((p for p in models.glob("checkpoint_epoch_4_step_*.pth")),
                        key=lambda p: int(p.stem.rsplit("_", 1)[1])))["lineage"]["line"]
    # The new line's newest periodic checkpoints survived; the old line's later file is aside.
    assert sorted(p.name for p in models.glob("checkpoint_epoch_4_step_*.pth")) == [
        "checkpoint_epoch_4_step_111.pth", "checkpoint_epoch_4_step_114.pth"]
    assert lines <= {new_line, old_line}  # the start itself was retired once 2 newer existed
    [archive] = (models / ckpt.ARCHIVE_DIR).iterdir()
    assert "checkpoint_epoch_3.pth" in {p.name for p in archive.iterdir()}

    r = _run(tmp_path, "resume_training.py", "--keep", "2", "--checkpoint-every", "3")
    assert r.returncode == 0, r.stderr
    assert "Resuming from models/checkpoint_epoch_4_step_114.pth" in r.stderr
    final = load(models / "checkpoint_epoch_4.pth")
    assert final["lineage"]["line"] == new_line and final["global_step"] > start_step


@pytest.mark.parametrize("point", ["before_commit:best.pth@2", "before_commit:checkpoint_epoch_2.pth"])
def test_best_pth_agrees_with_the_run_whatever_instant_the_process_dies(tmp_path: Path, point: str
                                                                        ) -> None:
    child = _cmd(tmp_path, "train_indicator_transformer.py", *SMALL, env=pause_env(point))
    child.wait_for("PAUSED")
    child.proc.kill()
    child.finish()
    models = tmp_path / "models"

    r = _run(tmp_path, "resume_training.py")
    assert r.returncode == 0, r.stderr
    # The newest state on disk (checkpoint_epoch_2.pth, or best.pth when the kill came between
    # the two writes and the resume only had the final evaluation left to do).
    newest = ckpt.select_for_resume(models)[0]
    assert newest is not None and newest.global_step == 2 * STEPS_PER_EPOCH
    history = newest.state["loss_history"]["epochs"]
    best_epoch = min(history, key=lambda e: e["val_loss"])["epoch"]
    assert best_epoch == 2, "precondition: epoch 2 improves, or this test shows nothing"
    best = load(models / "best.pth")
    assert best["epoch"] == best_epoch and best["best_val"] == history[1]["val_loss"]
    assert _report(models)["evaluated"] == f"best model (epoch {best_epoch})"
    # evaluation.json names the checkpoint it scored (best.pth, epoch 2), not the run's last one.
    scored = _report(models)["checkpoint"]
    assert scored["file"] == "best.pth" and scored["epoch"] == best_epoch
    assert scored["global_step"] == best["global_step"] and scored["best_val"] == best["best_val"]
    assert _report(models)["belongs_to"]["epoch"] == len(history)


def test_a_stale_report_does_not_end_a_resumed_run(tmp_path: Path) -> None:
    models = _train(tmp_path)
    assert _report(models)["belongs_to"]["global_step"] == 2 * STEPS_PER_EPOCH
    child = _cmd(tmp_path, "resume_training.py", "--epochs", "1", env=pause_env("test_batch:1"))
    child.wait_for("PAUSED")
    child.proc.send_signal(signal.SIGINT)
    assert child.finish() == 130, child.stderr
    assert _report(models)["belongs_to"]["global_step"] == 2 * STEPS_PER_EPOCH  # the old one, as it was

    r = _run(tmp_path, "resume_training.py")
    assert r.returncode == 0, r.stderr
    assert "Nothing to do" not in r.stdout and "running the final evaluation" in r.stderr
    assert _report(models)["belongs_to"]["global_step"] == 3 * STEPS_PER_EPOCH
    # A damaged report is not trusted either.
    report = models / "evaluation.json"
    report.write_text(report.read_text().replace('"samples": ', '"samples": 1'))
    r = _run(tmp_path, "resume_training.py")
    assert r.returncode == 0, r.stderr
    assert "running the final evaluation" in r.stderr


def test_resume_writes_to_the_cache_folder_of_its_command_line_not_the_checkpoint(tmp_path: Path) -> None:
    models = _train(tmp_path, "--epochs", "1")
    path = models / "checkpoint_epoch_1.pth"
    elsewhere = tmp_path / "elsewhere"
    state = load(path)
    state["config"]["data"]["cache_dir"] = str(elsewhere)
    ckpt.save_checkpoint(path, state)
    r = _run(tmp_path, "resume_training.py", "--epochs", "1")
    assert r.returncode == 0, r.stderr
    assert not elsewhere.exists()
    assert "cache hits 4, misses 0" in r.stderr  # the default ./cache, prepared by the first run


def _trainer_on(real_run: Path, tmp_path: Path, **changes: object):
    """A Trainer on the session run's cached data (in this process), with config changes."""
    from indicator_transformer.config import Config
    from indicator_transformer.data.cache import FeatureCache
    from indicator_transformer.data.prepare import prepare, resolve_sources
    from indicator_transformer.data.windows import Normalisation, make_splits
    from indicator_transformer.shutdown import SignalHandler
    from indicator_transformer.training.trainer import Trainer

    state = ckpt.load_checkpoint(real_run / "models" / "checkpoint_epoch_2.pth")
    cfg = Config.from_dict(state["config"]).replace(cache_dir=str(real_run / "cache"),
                                                   models_dir=str(tmp_path / "models"), **changes)
    data = prepare(resolve_sources(cfg.data), cfg.features, FeatureCache(cfg.data.cache_dir).open(),
                   show_progress=False)
    trainer = Trainer(cfg, data, make_splits(data.symbols, cfg.features),
                      Normalisation.from_dict(state["normalisation"]), handler=SignalHandler(),
                      show_progress=False)
    return trainer, data, state


def test_the_final_evaluation_uses_best_pth_only_when_it_belongs_to_the_run(real_run: Path,
                                                                           tmp_path: Path) -> None:
    import io

    from indicator_transformer.run import _load_best

    best = real_run / "models" / "best.pth"
    # The run's own best.pth: used.
    trainer, data, state = _trainer_on(real_run, tmp_path)
    trainer.load_state_dict(state)
    out = io.StringIO()
    which, record = _load_best(trainer, data, best, out)
    assert which == f"best model (epoch {load(best)['epoch']})"
    assert record["file"] == "best.pth" and record["global_step"] == load(best)["global_step"]
    # A best.pth of another line (a fresh run here): refused with a warning, final model evaluated.
    trainer, data, _ = _trainer_on(real_run, tmp_path)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    which, record = _load_best(trainer, data, best, out)
    assert which == "final model" and record["file"] == "final model"
    assert "another line of training" in out.getvalue()
    assert all(torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    # Same line and best_val but another architecture: refused, never a RuntimeError.
    trainer, data, _ = _trainer_on(real_run, tmp_path, d_model=16)
    saved = load(best)
    trainer.lineage, trainer.global_step, trainer.best_val = saved["lineage"], saved["global_step"], \
        saved["best_val"]
    out = io.StringIO()
    assert _load_best(trainer, data, best, out)[0] == "final model"
    assert "model.input.weight" in out.getvalue() or "shape" in out.getvalue()
