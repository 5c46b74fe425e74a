"""The run folder: runs/<UTC time>/ with train.log, metrics.csv, summary.json and plots, one
folder per line of training, which a resume continues so that the history reads as one run."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, default_sigint
from trainproc import SMALL, STEPS_PER_EPOCH, Child, load, pause_env

from indicator_transformer.errors import CheckpointError
from indicator_transformer.integrity import check_json
from indicator_transformer.runlog import RunFolder, check_run_record, new_run_name
from indicator_transformer.training import checkpoint as ckpt

PNGS = {"loss_curves.png", "predicted_vs_realised.png", "strategies.png", "ic_over_time.png"}


def _train(tmp_path: Path, *args: str, pause: str = "") -> Child:
    small = [a for a in SMALL if a != "--no-plots"]  # the plots are part of what is tested here
    cmd = [sys.executable, "train_indicator_transformer.py", *small, "--cache-dir", str(tmp_path / "cache"),
           "--models-dir", str(tmp_path / "models"), *args]
    env = pause_env(pause) if pause else {k: v for k, v in pause_env("x:0").items()
                                          if k != "INDICATOR_TRANSFORMER_PAUSE_AT"}
    return Child(subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, preexec_fn=default_sigint))


def _resume(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "resume_training.py", "--models-dir", str(tmp_path / "models"),
                           "--cache-dir", str(tmp_path / "cache"), "--no-progress", *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300, preexec_fn=default_sigint)


def _run_folder(tmp_path: Path) -> Path:
    runs = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


def _metrics(folder: Path) -> list[dict[str, str]]:
    with open(folder / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_a_run_writes_its_folder_beside_the_models_with_every_console_line_metrics_summary_and_plots(
        tmp_path: Path) -> None:
    child = _train(tmp_path, "--epochs", "2", "--cost-bps", "5")
    assert child.finish(timeout=300) == 0, child.stderr
    folder = _run_folder(tmp_path)
    assert any(line.startswith("Run folder: ") and str(folder) in line for line in child.lines)
    # train.log: every console line, in order, each with a UTC time stamp.
    logged = [line.split(" ", 1)[1] for line in (folder / "train.log").read_text().splitlines()]
    console = [line.rstrip() for line in child.lines if line.strip()]
    assert logged == console
    rows = _metrics(folder)
    assert [r["epoch"] for r in rows] == ["1", "2"] and {r["segment"] for r in rows} == {"0"}
    assert all(float(r["samples_per_s"]) > 0 and float(r["lr"]) > 0 for r in rows)
    summary = check_json(json.loads((folder / "summary.json").read_text()))
    assert summary["status"] == "completed" and summary["interrupted"] is None
    assert summary["config"]["train"]["cost_bps"] == 5.0 and summary["report"]["cost_bps"] == 5.0
    assert set(summary["report"]["predictors"]) == {"model", "zero", "train_mean", "symbol_mean", "momentum",
                                                   "ridge", "lightgbm"}
    assert summary["splits"]["policy"] == "global" and summary["splits"]["train"]["windows"] > 0
    assert summary["data"]["bar_frequency"] == {"1d": ["SYN000", "SYN001", "SYN002", "SYN003"]}
    assert set(summary["durations"]) >= {"preparation_s", "training_s", "evaluation_s", "total_s"}
    assert set(summary["plots"]) == PNGS and all((folder / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
                                                  for p in PNGS)
    # The checkpoint names its run folder; the report names its checkpoint.
    state = load(tmp_path / "models" / "checkpoint_epoch_2.pth")
    assert state["run"]["name"] == folder.name and state["run"]["segments"][0][0] == 0
    evaluation = json.loads((tmp_path / "models" / "evaluation.json").read_text())
    assert evaluation["run"] == folder.name and evaluation["report"]["verdict"]
    assert "cost 5.0 bps" in child.stderr and "Verdict:" in child.stderr


def test_a_stopped_run_says_what_it_has_and_its_resume_continues_the_same_folder(tmp_path: Path) -> None:
    child = _train(tmp_path, "--epochs", "3", pause=f"train_step:{STEPS_PER_EPOCH + 5}")
    child.wait_for("PAUSED")
    child.proc.send_signal(signal.SIGINT)
    assert child.finish() == 130, child.stderr
    folder = _run_folder(tmp_path)
    said = child.stderr
    assert f"Stopped during train at epoch 2, step 5/{STEPS_PER_EPOCH}" in said
    assert "checkpoint_epoch_2_interrupted.pth" in said and "completed epochs: 1" in said
    summary = check_json(json.loads((folder / "summary.json").read_text()))
    assert summary["status"] == "interrupted"
    assert summary["interrupted"]["during"] == "train" and summary["interrupted"]["global_step"] == \
        STEPS_PER_EPOCH + 5
    assert summary["interrupted"]["checkpoint"].endswith("checkpoint_epoch_2_interrupted.pth")
    assert (folder / "loss_curves.png").exists()
    log = (folder / "train.log").read_text()
    assert "Received SIGINT" in log and log.rstrip().endswith("Cleanup complete")

    r = _resume(tmp_path)
    assert r.returncode == 0, r.stderr
    assert _run_folder(tmp_path) == folder  # the same folder, no second one
    assert f"Run folder: {folder} (resume 1 of this run)" in r.stderr
    rows = _metrics(folder)
    assert [(r["epoch"], r["segment"]) for r in rows] == [("1", "0"), ("2", "1"), ("3", "1")]
    summary = check_json(json.loads((folder / "summary.json").read_text()))
    assert summary["status"] == "completed" and summary["segment"] == 1
    assert [s["global_step"] for s in summary["segments"]] == [0, STEPS_PER_EPOCH + 5]
    log = (folder / "train.log").read_text()
    assert log.index("Cleanup complete") < log.index("Resuming from") < log.index("Verdict:")
    state = load(tmp_path / "models" / "checkpoint_epoch_3.pth")
    assert state["run"]["segments"] == [[s["global_step"], s["started"]] for s in summary["segments"]]


@pytest.mark.parametrize("run", [{"name": "../../etc", "segments": [[0, "x"]]},
                                 {"name": "20261129T142925Z/..", "segments": [[0, "x"]]},
                                 {"name": "20261129T142925Z", "segments": []},
                                 {"name": "20261129T142925Z", "segments": [[5, "a"], [2, "b"]]},
                                 "20261129T142925Z"])
def test_a_hand_edited_run_record_is_refused_naming_the_field(real_run: Path, tmp_path: Path, run) -> None:
    assert check_run_record(run) is not None
    src = next(p for p in sorted((real_run / "models").glob("checkpoint_epoch_*.pth")))
    state = torch.load(src, weights_only=True)
    state["run"] = run
    bad = tmp_path / "checkpoint_epoch_1.pth"
    bad.write_bytes(ckpt.serialize(state))  # sealed: only the field is wrong
    with pytest.raises(CheckpointError, match="field 'run'"):
        ckpt.load_checkpoint(bad)


def test_run_folder_names_are_utc_stamps_and_never_reuse_an_existing_folder(tmp_path: Path) -> None:
    a = RunFolder.start(tmp_path, None, 0)
    b = RunFolder.start(tmp_path, None, 0)
    assert a.root != b.root and a.root.is_dir() and b.root.is_dir()
    assert check_run_record(a.record()) is None and check_run_record(b.record()) is None
    (tmp_path / "20261129T000000Z").mkdir()
    assert new_run_name(tmp_path, datetime(2026, 11, 29, tzinfo=UTC)) == "20261129T000000Z-2"
    # A resume from an older checkpoint drops the segments of the history it replaces.
    later = RunFolder.start(tmp_path, {"name": a.name, "segments": [[0, "t0"], [40, "t1"], [90, "t2"]]}, 50)
    assert later.segments[:2] == [[0, "t0"], [40, "t1"]] and later.segments[2][0] == 50
    assert later.segment == 2 and later.resume_steps() == [40, 50]


def test_a_resume_from_an_older_checkpoint_shows_only_its_history_from_the_start(tmp_path: Path) -> None:
    child = _train(tmp_path, "--epochs", "2")
    assert child.finish(timeout=300) == 0, child.stderr
    folder = _run_folder(tmp_path)
    assert [r["epoch"] for r in _metrics(folder)] == ["1", "2"]
    older = tmp_path / "models" / "checkpoint_epoch_1.pth"
    cmd = [sys.executable, "resume_training.py", "--checkpoint", str(older), "--epochs", "1",
           "--models-dir", str(tmp_path / "models"), "--cache-dir", str(tmp_path / "cache"), "--no-progress"]
    fork = Child(subprocess.Popen(cmd, cwd=REPO_ROOT, env=pause_env(f"train_step:{STEPS_PER_EPOCH + 3}"),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  preexec_fn=default_sigint))
    fork.wait_for("PAUSED")
    # Before any epoch of the new line ends, metrics.csv already shows that line's history only.
    assert [r["epoch"] for r in _metrics(folder)] == ["1"]
    fork.proc.send_signal(signal.SIGINT)
    assert fork.finish() == 130, fork.stderr
    assert [r["epoch"] for r in _metrics(folder)] == ["1"]
    assert "(best.pth)" not in fork.stderr  # the line's best.pth was moved aside with its epoch 2


def test_a_kill_while_the_report_is_written_leaves_no_stale_report_and_resume_writes_it_all(
        tmp_path: Path) -> None:
    child = _train(tmp_path, "--epochs", "1", pause="before_commit:evaluation.json")
    child.wait_for("PAUSED")
    child.proc.kill()
    child.finish()
    folder = _run_folder(tmp_path)
    assert not (tmp_path / "models" / "evaluation.json").exists()  # written last, so not yet
    r = _resume(tmp_path)
    assert r.returncode == 0, r.stderr
    assert "running the final evaluation" in r.stderr
    assert (tmp_path / "models" / "evaluation.json").exists()
    summary = check_json(json.loads((folder / "summary.json").read_text()))
    assert summary["status"] == "completed" and set(summary["plots"]) == PNGS
    assert not list(folder.glob(".*.tmp"))  # the killed writer's temporary files are cleared


def test_no_plots_writes_every_run_file_but_the_pngs(tmp_path: Path) -> None:
    child = _train(tmp_path, "--epochs", "1", "--no-plots")
    assert child.finish(timeout=300) == 0, child.stderr
    folder = _run_folder(tmp_path)
    assert not list(folder.glob("*.png"))
    assert {"train.log", "metrics.csv", "summary.json"} <= {p.name for p in folder.iterdir()}
    assert check_json(json.loads((folder / "summary.json").read_text()))["plots"] == []


def test_a_restart_without_a_checkpoint_continues_the_killed_attempts_run_folder(tmp_path: Path) -> None:
    # Attempt 0 is killed (kill -9, as torchrun's agent sees a dying rank) before any checkpoint.
    child = _train(tmp_path, "--no-plots", pause="train_step:3")
    child.wait_for("PAUSED train_step 3")
    child.proc.kill()
    child.finish(timeout=60)
    folder = _run_folder(tmp_path)
    assert not (folder / "summary.json").exists() and not list((tmp_path / "models").glob("*.pth"))
    # Attempt 1: what torchrun restarts (TORCHELASTIC_RESTART_COUNT=1) with --resume auto.
    env = {k: v for k, v in pause_env("x:0").items() if k != "INDICATOR_TRANSFORMER_PAUSE_AT"}
    env["TORCHELASTIC_RESTART_COUNT"] = "1"
    r = subprocess.run([sys.executable, "train_indicator_transformer.py", *SMALL, "--resume", "auto",
                        "--cache-dir", str(tmp_path / "cache"), "--models-dir", str(tmp_path / "models")],
                       cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300,
                       preexec_fn=default_sigint)
    assert r.returncode == 0, r.stderr
    assert _run_folder(tmp_path) == folder  # the same folder, not an orphan beside a new one
    assert "in the folder of the unfinished previous attempt" in r.stderr
    log = (folder / "train.log").read_text()
    assert log.count("Run folder:") == 2 and "Report:" in log
    assert json.loads((folder / "summary.json").read_text())["status"] == "completed"


def test_only_the_newest_unfinished_run_folder_is_adopted(tmp_path: Path) -> None:
    from indicator_transformer.runlog import unfinished_run

    runs = tmp_path / "runs"
    assert unfinished_run(runs) is None  # no folder at all
    for name, finished in (("20260101T000000Z", False), ("20260102T000000Z", True)):
        (runs / name).mkdir(parents=True)
        (runs / name / "train.log").write_text("x\n")
        if finished:
            (runs / name / "summary.json").write_text("{}")
    assert unfinished_run(runs) is None  # the newest ended: the older one is another job's
    (runs / "20260102T000000Z-2").mkdir()
    (runs / "20260102T000000Z-2" / "train.log").write_text("x\n")
    assert unfinished_run(runs) == "20260102T000000Z-2"
    (runs / "20260103T000000Z").symlink_to(tmp_path)  # never a link to elsewhere
    assert unfinished_run(runs) == "20260102T000000Z-2"
