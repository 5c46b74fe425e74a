"""--precision bf16 and --threads: resume stays bit for bit, results keep their meaning, changes are said.

The interrupted run and the uninterrupted one are real subprocesses stopped by a real SIGINT (as in
test_resume_exact.py), both with ``--precision bf16 --threads 1``; the noise comparison trains in
this process on a tiny market with three seeds per precision.
"""

from __future__ import annotations

import io
import signal
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, child_env, default_sigint
from trainproc import SMALL, Child, assert_same_training_state, load, pause_env

from indicator_transformer.config import Config
from indicator_transformer.data.cache import FeatureCache
from indicator_transformer.data.prepare import prepare, resolve_sources
from indicator_transformer.data.windows import fit_normalisation, make_splits
from indicator_transformer.shutdown import SignalHandler
from indicator_transformer.training import checkpoint as ckpt
from indicator_transformer.training.trainer import Trainer

OPTIONS = ["--precision", "bf16", "--threads", "1"]


def _run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO_ROOT, env=child_env(), capture_output=True,
                          text=True, timeout=300, preexec_fn=default_sigint)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> dict:
    """The uninterrupted bf16 run's final checkpoint."""
    models = tmp_path_factory.mktemp("reference")
    r = _run(["train_indicator_transformer.py", *SMALL, *OPTIONS, "--cache-dir", str(cache_dir),
              "--models-dir", str(models)])
    assert r.returncode == 0, r.stderr
    return load(models / "checkpoint_epoch_2.pth")


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Path:
    """A models folder holding a bf16 run stopped by SIGINT after step 17 (mid first epoch)."""
    models = tmp_path_factory.mktemp("interrupted")
    child = Child(subprocess.Popen(
        [sys.executable, "train_indicator_transformer.py", *SMALL, *OPTIONS, "--cache-dir", str(cache_dir),
         "--models-dir", str(models)], cwd=REPO_ROOT, env=pause_env("train_step:17"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint))
    child.wait_for("PAUSED")
    child.proc.send_signal(signal.SIGINT)
    assert child.finish() == 130, child.stderr
    return models


def _copy(models: Path, to: Path) -> Path:
    to.mkdir()
    for p in models.glob("*.pth"):
        (to / p.name).write_bytes(p.read_bytes())
    return to


def test_a_bf16_run_stopped_by_sigint_and_resumed_equals_the_uninterrupted_bf16_run(
        reference: dict, interrupted: Path, cache_dir: Path, tmp_path: Path) -> None:
    models = _copy(interrupted, tmp_path / "models")
    saved = load(models / "checkpoint_epoch_1_interrupted.pth")
    assert saved["config"]["train"]["precision"] == "bf16" and saved["threads"] == 1
    r = _run(["resume_training.py", "--cache-dir", str(cache_dir), "--models-dir", str(models),
              "--no-progress"])  # precision and threads come from the checkpoint
    assert r.returncode == 0, r.stderr
    assert "note: resuming" not in r.stderr
    final = load(models / "checkpoint_epoch_2.pth")
    assert final["config"]["train"]["precision"] == "bf16"
    assert_same_training_state(reference, final)


def test_a_resume_with_another_precision_and_thread_count_says_it_will_not_be_bit_for_bit(
        interrupted: Path, cache_dir: Path, tmp_path: Path) -> None:
    models = _copy(interrupted, tmp_path / "models")
    r = _run(["resume_training.py", "--cache-dir", str(cache_dir), "--models-dir", str(models),
              "--no-progress", "--precision", "fp32", "--threads", "2", "--epochs", "1"])
    assert r.returncode == 0, r.stderr
    note = next(line for line in r.stderr.splitlines() if line.startswith("note: resuming"))
    assert "--precision bf16 -> fp32 (--precision bf16 keeps it)" in note and "threads 1 -> 2" in note
    assert "differ slightly" in note
    assert load(models / "checkpoint_epoch_1.pth")["config"]["train"]["precision"] == "fp32"


def test_a_checkpoint_from_before_the_precision_setting_resumes_as_fp32(reference: dict,
                                                                       tmp_path: Path) -> None:
    old = dict(reference)
    old["config"] = {k: dict(v) for k, v in reference["config"].items()}
    del old["config"]["train"]["precision"], old["config"]["train"]["threads"], old["threads"]
    path = ckpt.save_checkpoint(tmp_path / "checkpoint_epoch_2.pth", old)
    state = ckpt.load_checkpoint(path)
    assert state["config"]["train"]["precision"] == "fp32" and state["config"]["train"]["threads"] == 0
    assert Config.from_dict(state["config"]).train.precision == "fp32"


@pytest.mark.parametrize(("flag", "value", "expected"), [("--precision", "fp16", "fp32 or bf16"),
                                                          ("--threads", "-1", "0 (torch's default)")])
def test_a_bad_precision_or_thread_count_exits_2_naming_the_flag(flag: str, value: str, expected: str,
                                                                 tmp_path: Path) -> None:
    r = _run(["train_indicator_transformer.py", flag, value, "--models-dir", str(tmp_path / "m"),
              "--cache-dir", str(tmp_path / "c")])
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("error:") and flag in r.stderr
    assert expected in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "m").exists() and not (tmp_path / "c").exists()


def _val_loss(cfg: Config, data, splits, norm) -> float:
    trainer = Trainer(cfg, data, splits, norm, handler=SignalHandler(), stream=io.StringIO(),
                      show_progress=False)
    for _ in range(cfg.train.epochs):
        trainer._train_epoch()
        trainer.epoch += 1
    val = trainer.evaluate("val")
    assert val is not None
    return val["loss"]


def test_bf16_validation_loss_is_within_the_run_to_run_noise_of_fp32(tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    base = Config().replace(symbols=4, bars=800, epochs=2, batch_size=64, d_model=16, heads=2, device="cpu",
                            cache_dir=str(tmp_path / "cache"), models_dir=str(tmp_path / "models"))
    data = prepare(resolve_sources(base.data), base.features, FeatureCache(base.data.cache_dir).open(),
                   handler=SignalHandler(), workers=1, stream=io.StringIO(), show_progress=False)
    splits = make_splits(data.symbols, base.features)
    norm = fit_normalisation(data.symbols, splits["train"], base.features.window)
    try:
        losses = {p: [_val_loss(base.replace(precision=p, seed=s, threads=1), data, splits, norm)
                      for s in (0, 1, 2)] for p in ("fp32", "bf16")}
    finally:
        torch.set_num_threads(threads)
    fp32, bf16 = losses["fp32"], losses["bf16"]
    noise = max(fp32) - min(fp32)  # seeds differ: init, dropout and data order
    gap = abs(statistics.mean(bf16) - statistics.mean(fp32))
    same_seed = max(abs(a - b) for a, b in zip(fp32, bf16, strict=True))
    figures = (f"val loss fp32 {[round(v, 4) for v in fp32]}, bf16 {[round(v, 4) for v in bf16]}; "
               f"seed-to-seed range of fp32 {noise:.4f}, gap of the means {gap:.4f}, largest same-seed "
               f"difference {same_seed:.4f}")
    print(figures)
    assert noise > 0, figures
    assert gap <= noise, figures
