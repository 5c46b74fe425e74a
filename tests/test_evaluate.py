"""indicator-transformer evaluate: the run report for any checkpoint, on its own data or new files."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import child_env, default_sigint, write_symbol_csv
from trainproc import Child, pause_env

from indicator_transformer.atomic import atomic_write_json
from indicator_transformer.data.synthetic import synthetic_symbol
from indicator_transformer.errors import UserError
from indicator_transformer.evaluate import check_out
from indicator_transformer.integrity import check_json, seal_json

PNGS = {"loss_curves.png", "predicted_vs_realised.png", "strategies.png", "ic_over_time.png"}


def _evaluate(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "indicator_transformer", "evaluate", *args, "--no-progress"],
                          cwd=cwd, env=child_env(), capture_output=True, text=True, timeout=300,
                          preexec_fn=default_sigint)


def _copy_run(real_run: Path, tmp_path: Path) -> Path:
    """The trained run's models and cache, copied: the session fixture is never changed."""
    shutil.copytree(real_run / "models", tmp_path / "models")
    shutil.copytree(real_run / "cache", tmp_path / "cache")
    return tmp_path / "models"


def _evaluated_checkpoint(models: Path) -> tuple[Path, dict]:
    """The checkpoint training's evaluation.json reports on, and that report."""
    evaluation = json.loads((models / "evaluation.json").read_text())
    if evaluation["evaluated"].startswith("best model"):
        return models / "best.pth", evaluation
    return models / f"checkpoint_epoch_{evaluation['checkpoint']['epoch']}.pth", evaluation


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def test_on_its_own_data_the_report_equals_the_one_training_wrote_and_lands_beside_the_models(
        real_run: Path, tmp_path: Path) -> None:
    models = _copy_run(real_run, tmp_path)
    checkpoint, evaluation = _evaluated_checkpoint(models)
    before = _snapshot(models)
    r = _evaluate(tmp_path, "--checkpoint", str(checkpoint))
    assert r.returncode == 0, r.stderr
    assert "Data: the checkpoint's own data" in r.stderr
    assert f"Test split ({checkpoint.name}, own data):" in r.stdout and "lightgbm" in r.stdout

    folders = list((tmp_path / "runs").iterdir())
    assert len(folders) == 1 and folders[0].name.endswith("-evaluate"), folders
    out = folders[0]
    summary = check_json(json.loads((out / "summary.json").read_text()))  # sealed, intact
    # Same test samples, same model, same baselines: the very figures of training's report.
    assert summary["report"]["predictors"]["model"]["pooled"] == evaluation["test"]
    assert summary["report"] == evaluation["report"]
    assert summary["baseline_settings"] == evaluation["baseline_settings"]
    assert summary["command"] == "evaluate" and summary["data"]["own"] is True
    assert summary["checkpoint"]["path"] == str(checkpoint.absolute())
    assert summary["checkpoint"]["global_step"] > 0 and summary["splits"]["test"]["windows"] > 0
    assert summary["normalisation"]["pooled_symbols"] == []
    assert set(summary["plots"]) == PNGS and all((out / p).is_file() for p in PNGS)
    log = (out / "evaluate.log").read_text()
    assert "Evaluating" in log and "Test split" in log and "Report:" in log
    # The models folder (its evaluation.json included) is exactly as it was.
    assert _snapshot(models) == before


def test_on_new_files_it_says_other_data_and_names_the_symbols_without_statistics(
        real_run: Path, tmp_path: Path) -> None:
    data = tmp_path / "new"
    for i in range(3):
        write_symbol_csv(data / f"NEW{i}.csv", synthetic_symbol(1, 11, i, 600))
    out = tmp_path / "report"
    r = _evaluate(tmp_path, "--checkpoint", str(real_run / "models" / "best.pth"), "--data-dir", str(data),
                  "--cache-dir", str(tmp_path / "cache"), "--out", str(out), "--cost-bps", "5")
    assert r.returncode == 0, r.stderr
    assert "Data: other data than the checkpoint was trained on" in r.stderr
    notes = [line for line in r.stderr.splitlines() if "no normalisation statistics" in line]
    assert len(notes) == 1 and all(f"NEW{i}" in notes[0] for i in range(3)), r.stderr
    assert "Test split (best.pth, other data):" in r.stdout and "cost 5.0 bps" in r.stdout
    summary = check_json(json.loads((out / "summary.json").read_text()))
    assert summary["data"]["own"] is False and summary["data"]["relation"] == "other"
    assert summary["normalisation"]["pooled_symbols"] == ["NEW0", "NEW1", "NEW2"]
    assert summary["report"]["symbols"] == 3 and summary["report"]["cost_bps"] == 5.0
    assert set(summary["report"]["predictors"]) == {"model", "zero", "train_mean", "symbol_mean", "momentum",
                                                   "ridge", "lightgbm"}
    assert "evaluation.json" not in {p.name for p in out.iterdir()}


def test_ctrl_c_while_scoring_stops_it_with_cleanup_complete_last_and_no_report(
        real_run: Path, tmp_path: Path) -> None:
    models = _copy_run(real_run, tmp_path)
    child = Child(subprocess.Popen(
        [sys.executable, "-m", "indicator_transformer", "evaluate", "--checkpoint", str(models / "best.pth"),
         "--no-progress"], cwd=tmp_path, env=pause_env("test_batch:1"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint))
    child.wait_for("PAUSED test_batch 1")
    child.proc.send_signal(signal.SIGINT)
    assert child.finish() == 130, child.stderr
    assert child.lines[-1] == "Cleanup complete", child.stderr
    assert "Evaluation stopped during scoring: no report written" in child.lines
    assert "Traceback" not in child.stderr
    assert not (tmp_path / "runs").exists()  # not even the folder


def _bad_checkpoint(tmp_path: Path, real_run: Path) -> Path:
    data = bytearray((real_run / "models" / "best.pth").read_bytes())
    data[len(data) // 2] ^= 0xFF
    path = tmp_path / "damaged.pth"
    path.write_bytes(bytes(data))
    return path


def _bad_data(tmp_path: Path) -> Path:
    """A folder with a file holding text where a price belongs and one without the volume column."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "BAD.csv").write_text("Date,Open,High,Low,Close,Volume\n2020-01-01,1,2,0.5,abc,10\n")
    frame = synthetic_symbol(1, 5, 0, 300)
    write_symbol_csv(data / "NOVOL.csv", frame)
    path = data / "NOVOL.csv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(",".join(line.split(",")[:-1]) for line in lines) + "\n")
    return data


@pytest.mark.parametrize("case", ["missing checkpoint", "damaged checkpoint", "bad data files",
                                  "out is a file"])
def test_bad_input_exits_2_naming_the_file_and_writes_no_report(real_run: Path, tmp_path: Path,
                                                                case: str) -> None:
    best = real_run / "models" / "best.pth"
    out = tmp_path / "report"
    args = ["--checkpoint", str(best), "--cache-dir", str(tmp_path / "cache"), "--out", str(out)]
    if case == "missing checkpoint":
        args[1] = str(tmp_path / "nowhere.pth")
        named = [args[1], "not found"]
    elif case == "damaged checkpoint":
        args[1] = str(_bad_checkpoint(tmp_path, real_run))
        named = [args[1], "corrupt"]
    elif case == "bad data files":
        args += ["--data-dir", str(_bad_data(tmp_path))]
        named = ["BAD.csv", "NOVOL.csv", "volume"]
    else:
        out.write_text("not a folder")
        named = ["--out", str(out), "is a file"]
    before = _snapshot(real_run / "models")
    r = _evaluate(tmp_path, *args)
    assert r.returncode == 2, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in r.stderr, r.stderr
    assert all(n in r.stderr for n in named), r.stderr
    assert not (out.is_dir() or (tmp_path / "runs").exists())
    assert _snapshot(real_run / "models") == before


def test_the_report_folder_may_be_new_empty_or_an_earlier_evaluation_but_never_the_models_folder(
        tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    checkpoint = models / "best.pth"
    checkpoint.write_bytes(b"weights")
    (tmp_path / "empty").mkdir()
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    atomic_write_json(earlier / "summary.json", seal_json({"command": "evaluate"}))
    # An evaluation killed while writing its plots: no summary yet, a PNG and a temporary file.
    killed = tmp_path / "killed"
    killed.mkdir()
    (killed / "loss_curves.png").write_bytes(b"\x89PNG")
    (killed / f".strategies.png.{os.getpid()}.0.tmp").write_bytes(b"half")
    for fine in (tmp_path / "new" / "deeper", tmp_path / "empty", earlier, killed):
        check_out(fine, checkpoint, "--out")

    run = tmp_path / "run"
    run.mkdir()
    (run / "train.log").write_text("a training run's log\n")
    (tmp_path / "file").write_text("x")
    refused = {models: "models folder", models / "sub": "models folder or inside it",
               run: "not an earlier evaluation report",
               tmp_path / "file": "is a file", tmp_path / "file" / "sub": "not a folder"}
    for folder, why in refused.items():
        with pytest.raises(UserError, match=why):
            check_out(folder, checkpoint, "--out")
