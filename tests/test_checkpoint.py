"""The checkpoint schema: safe loading, clear errors, retention that never loses the newest."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from trainproc import load

from indicator_transformer.clock import now_iso
from indicator_transformer.errors import CheckpointError
from indicator_transformer.training import checkpoint as ckpt


def _state(step: int, epoch: int = 1, interrupted: bool = False) -> dict:
    return {"model": {"w": torch.full((3,), float(step))}, "optimizer": {"state": {}, "param_groups": []},
            "scheduler": {"last_epoch": step}, "epoch": epoch, "step_in_epoch": step,
            "global_step": step, "loss_history": {"epochs": [], "steps": [0.5] * step},
            "rng": {"torch": torch.get_rng_state()}, "sampler": {"epoch": epoch, "position": step},
            "config": {}, "normalisation": {"mean": torch.zeros(2)}, "data_fingerprint": {"fingerprint": "x"},
            "timestamp": now_iso(), "format_version": ckpt.FORMAT_VERSION, "interrupted": interrupted}


class Exploit:
    """Unpickling this would run a command that creates a marker file."""

    marker: str = ""

    def __reduce__(self):  # noqa: ANN204
        return (os.system, (f"touch {self.marker}",))


def test_saved_checkpoint_loads_with_weights_only_and_keeps_every_key(tmp_path: Path) -> None:
    path = ckpt.save_checkpoint(tmp_path / "checkpoint_epoch_1.pth", _state(3))
    state = load(path)
    assert set(ckpt.REQUIRED_KEYS) <= set(state)
    assert torch.equal(state["model"]["w"], torch.full((3,), 3.0))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_checkpoint_holding_a_pickled_object_is_refused_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    Exploit.marker = str(marker)
    evil = _state(1)
    evil["config"] = {"payload": Exploit()}
    path = tmp_path / "checkpoint_epoch_1.pth"
    torch.save(evil, path)
    with pytest.raises(CheckpointError, match="refused") as info:
        ckpt.load_checkpoint(path)
    assert str(path) in str(info.value)
    assert not marker.exists()


def test_a_truncated_checkpoint_gives_a_clear_error_naming_it(tmp_path: Path) -> None:
    path = ckpt.save_checkpoint(tmp_path / "checkpoint_epoch_1.pth", _state(3))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated") as info:
        ckpt.load_checkpoint(path)
    assert str(path) in str(info.value)


def test_a_file_that_is_not_a_checkpoint_is_named_in_the_error(tmp_path: Path) -> None:
    path = tmp_path / "x.pth"
    torch.save({"model": {}}, path)
    with pytest.raises(CheckpointError, match="missing"):
        ckpt.load_checkpoint(path)
    with pytest.raises(CheckpointError, match="not found"):
        ckpt.load_checkpoint(tmp_path / "absent.pth")


def test_retention_keeps_the_newest_periodic_and_never_interrupted_or_best(tmp_path: Path) -> None:
    names = [ckpt.step_checkpoint_name(1, 10), ckpt.step_checkpoint_name(1, 20),
             ckpt.epoch_checkpoint_name(1), ckpt.step_checkpoint_name(2, 40), ckpt.epoch_checkpoint_name(2),
             ckpt.interrupted_checkpoint_name(1), ckpt.BEST_NAME]
    for i, n in enumerate(names):
        ckpt.save_checkpoint(tmp_path / n, _state(i))
    removed = ckpt.apply_retention(tmp_path, keep=2)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted([ckpt.step_checkpoint_name(2, 40), ckpt.epoch_checkpoint_name(2),
                           ckpt.interrupted_checkpoint_name(1), ckpt.BEST_NAME])
    assert len(removed) == 3


def test_listing_shows_corrupt_files_and_newest_valid_skips_them(tmp_path: Path) -> None:
    ckpt.save_checkpoint(tmp_path / ckpt.epoch_checkpoint_name(1), _state(5))
    ckpt.save_checkpoint(tmp_path / ckpt.interrupted_checkpoint_name(2), _state(7, 2, True))
    (tmp_path / "checkpoint_epoch_3.pth").write_bytes(b"garbage")
    (tmp_path / ".checkpoint_epoch_4.pth.123.abcd.tmp").write_bytes(b"partial")
    infos = ckpt.list_checkpoints(tmp_path)
    assert [i.path.name for i in infos] == ["checkpoint_epoch_3.pth", "checkpoint_epoch_1.pth",
                                           "checkpoint_epoch_2_interrupted.pth"]
    assert not infos[0].ok and "corrupt" in infos[0].error
    newest, corrupt = ckpt.newest_valid(tmp_path)
    assert newest is not None and newest.path.name == "checkpoint_epoch_2_interrupted.pth"
    assert [c.path.name for c in corrupt] == ["checkpoint_epoch_3.pth"]


def test_changing_the_epoch_count_on_resume_keeps_the_learning_rate_of_the_current_step(tmp_path: Path
                                                                                       ) -> None:
    import warnings

    from indicator_transformer.config import Config
    from indicator_transformer.data.cache import FeatureCache
    from indicator_transformer.data.prepare import prepare, resolve_sources
    from indicator_transformer.data.windows import fit_normalisation, make_splits
    from indicator_transformer.shutdown import SignalHandler
    from indicator_transformer.training.trainer import Trainer, lr_factor

    cfg = Config().replace(symbols=2, bars=600, d_model=8, heads=2, layers=1, epochs=6, warmup_steps=4,
                           batch_size=64, cache_dir=str(tmp_path / "c"), models_dir=str(tmp_path / "m"))
    data = prepare(resolve_sources(cfg.data), cfg.features, FeatureCache(cfg.data.cache_dir).open(),
                   show_progress=False)
    splits = make_splits(data.symbols, cfg.features)
    trainer = Trainer(cfg, data, splits, fit_normalisation(data.symbols, splits["train"], 32),
                      handler=SignalHandler(), show_progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scheduler steps without optimizer steps
        for _ in range(8):
            trainer.scheduler.step()
    trainer.set_total_epochs(12)
    expected = cfg.train.lr * lr_factor(8, 4, 12 * trainer.steps_per_epoch)
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(expected, rel=1e-12)


def test_a_checkpoint_with_every_key_but_wrong_types_is_a_clear_error(tmp_path: Path) -> None:
    bad = _state(3)
    bad["loss_history"] = {"steps": []}
    path = ckpt.save_checkpoint(tmp_path / "checkpoint_epoch_1.pth", bad)
    with pytest.raises(CheckpointError, match="wrong type for loss_history"):
        ckpt.load_checkpoint(path)
    bad = _state(3)
    bad["epoch"] = "3"
    path = ckpt.save_checkpoint(tmp_path / "checkpoint_epoch_1.pth", bad)
    with pytest.raises(CheckpointError, match="wrong type for epoch") as info:
        ckpt.load_checkpoint(path)
    assert str(path) in str(info.value)
