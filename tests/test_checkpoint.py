"""The checkpoint schema: verified loading (every damaged byte and every bad field is a clear error
naming the file), retention that never loses the newest, and the choice a plain resume makes."""

from __future__ import annotations

import io
import os
import random
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from trainproc import load

from indicator_transformer.errors import CheckpointError
from indicator_transformer.training import checkpoint as ckpt


@pytest.fixture
def real(real_run: Path, tmp_path: Path) -> Callable[[str], Path]:
    """``real(name)``: a private copy of one of the session run's checkpoint files."""

    def _copy(name: str, as_name: str | None = None) -> Path:
        dst = tmp_path / (as_name or name)
        shutil.copyfile(real_run / "models" / name, dst)
        return dst

    return _copy


def _resealed(path: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    """Apply ``edit`` to the loaded state and write it back *with a valid digest*, as a user who
    edits a checkpoint with this tool's own writer would: only field validation can catch it."""
    state = torch.load(path, weights_only=True)
    edit(state)
    buf = io.BytesIO()
    torch.save(state, buf)
    from indicator_transformer.integrity import seal_zip

    path.write_bytes(seal_zip(buf.getvalue()))
    return path


class Exploit:
    """Unpickling this would run a command that creates a marker file."""

    marker: str = ""

    def __reduce__(self):  # noqa: ANN204
        return (os.system, (f"touch {self.marker}",))


def test_saved_checkpoint_loads_with_weights_only_and_keeps_every_key(real) -> None:
    path = real("checkpoint_epoch_2.pth")
    state = load(path)  # plain torch.load(weights_only=True): the digest does not get in its way
    assert set(ckpt.REQUIRED_KEYS) <= set(state)
    assert state["format_version"] == ckpt.FORMAT_VERSION
    assert ckpt.load_checkpoint(path)["global_step"] == state["global_step"]


def test_a_checkpoint_holding_a_pickled_object_is_refused_without_running_it(real, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    Exploit.marker = str(marker)
    evil = load(real("checkpoint_epoch_1.pth"))
    evil["config"] = {"payload": Exploit()}
    path = tmp_path / "checkpoint_epoch_1.pth"
    torch.save(evil, path)
    with pytest.raises(CheckpointError, match="refused") as info:
        ckpt.load_checkpoint(path)
    assert str(path) in str(info.value)
    assert not marker.exists()


def test_a_truncated_checkpoint_gives_a_clear_error_naming_it(real) -> None:
    path = real("checkpoint_epoch_1.pth")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt") as info:
        ckpt.load_checkpoint(path)
    assert str(path) in str(info.value)


def test_a_file_that_is_not_a_checkpoint_is_named_in_the_error(tmp_path: Path) -> None:
    path = tmp_path / "x.pth"
    torch.save({"model": {}}, path)
    with pytest.raises(CheckpointError, match="missing"):
        ckpt.load_checkpoint(path)
    with pytest.raises(CheckpointError, match="not found"):
        ckpt.load_checkpoint(tmp_path / "absent.pth")
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty.pth"):
        ckpt.load_checkpoint(tmp_path / "empty.pth", mmap=True)


def _damage(data: bytearray, rng: random.Random, lo: int = 0, hi: int | None = None) -> str:
    """Change 1-3 random bytes in data[lo:hi] (flip, zero or random); returns what was done."""
    hi = len(data) if hi is None else hi
    done = []
    for _ in range(rng.randint(1, 3)):
        i = rng.randrange(lo, hi)
        old = data[i]
        kind = rng.choice(["flip", "zero", "random"])
        new = old ^ (1 << rng.randrange(8)) if kind == "flip" else 0 if kind == "zero" else rng.randrange(256)
        if new == old:
            new = old ^ 0x01
        data[i] = new
        done.append(f"{kind}@{i}")
    return ",".join(done)


def _pickle_span(data: bytes) -> tuple[int, int]:
    """Byte range of data.pkl inside the archive (where damage used to load as if fine)."""
    import zipfile

    with zipfile.ZipFile(io.BytesIO(data)) as z:
        info = next(i for i in z.infolist() if i.filename.endswith("data.pkl"))
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    return start, start + info.compress_size


@pytest.mark.parametrize("trials", [pytest.param(300, id="fast"),
                                    pytest.param(5000, id="long", marks=pytest.mark.slow)])
def test_every_random_byte_change_in_a_checkpoint_is_reported_as_corrupt(real, tmp_path: Path,
                                                                         trials: int) -> None:
    original = real("checkpoint_epoch_2.pth").read_bytes()
    pkl = _pickle_span(original)
    rng = random.Random(20261129)
    target = tmp_path / "damaged.pth"
    undetected = []
    for t in range(trials):
        data = bytearray(original)
        # Half the trials aim at data.pkl (the case), the rest anywhere in the file;
        # a few truncate or append instead.
        r = rng.random()
        if r < 0.05:
            data = data[: rng.randrange(len(data))]
            what = "truncate"
        elif r < 0.1:
            data += bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
            what = "append"
        else:
            what = _damage(data, rng, *(pkl if r < 0.55 else (0, len(data))))
        target.write_bytes(bytes(data))
        for mmap in (False, True):
            try:
                ckpt.load_checkpoint(target, mmap=mmap)
                undetected.append((t, what, mmap))
            except CheckpointError as e:
                assert str(target) in str(e)
    assert not undetected, f"{len(undetected)}/{trials} damaged files loaded: {undetected[:5]}"


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(state: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        d = state
        for p in parents:
            d = d[p]
        d[last] = value(d[last]) if callable(value) else value
    return edit


def _del_shape(state: dict[str, Any]) -> None:
    state["model"]["head.weight"] = torch.zeros(1, 3)


# Each edit -> the field the error must name. Every one of these used to be a traceback or was
# accepted silently.
HAND_EDITS = [
    ("head_weight_shape", _del_shape, "model.head.weight"),
    ("normalisation_empty", _set("normalisation", {}), "normalisation.mean"),
    ("config_data_not_a_table", _set("config.data", 5), "data"),
    ("rng_empty", _set("rng", {}), "rng.python"),
    ("epochs_history_of_ints", _set("loss_history.epochs", [1, 2]), "loss_history.epochs[0]"),
    ("negative_epoch", _set("epoch", -3), "epoch"),
    ("epoch_as_string", _set("epoch", "3"), "epoch"),
    ("steps_short", _set("loss_history.steps", lambda v: v[:-1]), "loss_history.steps"),
    ("global_step_ahead_of_history", _set("global_step", lambda v: v + 7), "loss_history.steps"),
    ("step_beyond_epoch", _set("step_in_epoch", 10_000), "step_in_epoch"),
    ("best_val_not_the_history_minimum", _set("best_val", 0.0001), "best_val"),
    ("nan_weight", lambda s: s["model"]["head.bias"].fill_(float("nan")), "model.head.bias"),
    ("optimizer_moment_shape", lambda s: s["optimizer"]["state"].__setitem__(
        0, dict(s["optimizer"]["state"][0], exp_avg=torch.zeros(2))), "optimizer.state[0].exp_avg"),
    ("negative_lr", lambda s: s["optimizer"]["param_groups"][0].__setitem__("lr", -1.0), "lr"),
    ("sampler_position_disagrees", _set("sampler.position", 3), "sampler"),
    ("std_zero", lambda s: s["normalisation"]["std"].zero_(), "normalisation.std"),
    ("label_std_nan", _set("normalisation.label_std", torch.tensor(float("nan"), dtype=torch.float64)),
     "normalisation.label_std"),
    ("timestamp_garbage", _set("timestamp", "yesterday"), "timestamp"),
    ("fingerprint_not_hex", _set("data_fingerprint.fingerprint", 42), "data_fingerprint.fingerprint"),
    ("lineage_missing", lambda s: s.pop("lineage"), "lineage"),
    ("lineage_path", _set("lineage.line", "../../etc"), "lineage.line"),
    ("feature_names_other", _set("feature_names", ["ret_1"]), "feature_names"),
    ("torch_rng_short", _set("rng.torch", torch.zeros(3, dtype=torch.uint8)), "rng.torch"),
    ("unknown_config_key", _set("config.train", lambda t: dict(t, evil=1)), "evil"),
    ("scheduler_out_of_step", _set("scheduler.last_epoch", 1), "scheduler.last_epoch"),
    # Optimisation settings that would silently change training (found by an outside attack).
    ("base_lrs", _set("scheduler.base_lrs", [50.0]), "scheduler.base_lrs"),
    ("maximize", lambda s: s["optimizer"]["param_groups"][0].__setitem__("maximize", True), "maximize"),
    ("betas", lambda s: s["optimizer"]["param_groups"][0].__setitem__("betas", (0.0, 0.0)), "betas"),
    ("eps_negative", lambda s: s["optimizer"]["param_groups"][0].__setitem__("eps", -1.0), "eps"),
    ("weight_decay_huge", lambda s: s["optimizer"]["param_groups"][0].__setitem__("weight_decay", 1e6),
     "weight_decay"),
    ("group_lr_off_schedule", lambda s: s["optimizer"]["param_groups"][0].__setitem__("lr", 0.5),
     "param_groups[0].lr"),
    ("exp_avg_sq_negative", lambda s: s["optimizer"]["state"][0].__setitem__(
        "exp_avg_sq", -s["optimizer"]["state"][0]["exp_avg_sq"] - 1), "exp_avg_sq"),
    ("adam_step_count", lambda s: s["optimizer"]["state"][0].__setitem__("step", torch.tensor(3.0)),
     "optimizer.state[0].step"),
    # RNG states their generators refuse: a traceback at restore time before.
    ("python_rng_version", lambda s: s["rng"]["python"].__setitem__(0, 7), "rng.python"),
    ("python_rng_position", lambda s: s["rng"]["python"][1].__setitem__(624, 1000), "rng.python"),
    ("torch_rng_zero", lambda s: s["rng"]["torch"].zero_(), "rng.torch"),
]


@pytest.mark.parametrize("edit,field", [pytest.param(e, f, id=i) for i, e, f in HAND_EDITS])
def test_a_hand_edited_field_is_an_error_naming_the_file_and_the_field(real, edit, field: str) -> None:
    path = _resealed(real("checkpoint_epoch_2.pth"), edit)
    with pytest.raises(CheckpointError) as info:
        ckpt.load_checkpoint(path)
    msg = str(info.value)
    assert str(path) in msg and field in msg, msg
    # Listing never crashes on it either: the file is shown as corrupt.
    [listed] = ckpt.list_checkpoints(path.parent)
    assert not listed.ok and field in listed.error


def test_a_checkpoint_of_the_previous_format_loads_with_a_warning(real) -> None:
    path = real("checkpoint_epoch_2.pth")
    state = load(path)
    state["format_version"] = 1
    del state["lineage"]
    torch.save(state, path)  # unsealed, as version 1 wrote them
    with pytest.warns(ckpt.CheckpointWarning, match="without an integrity digest"):
        loaded = ckpt.load_checkpoint(path)
    assert ckpt.lineage_of(loaded)["line"] == ckpt.LEGACY_LINE
    [info] = ckpt.list_checkpoints(path.parent)
    assert info.ok and not info.sealed


@pytest.mark.parametrize("lineage", [{"line": 5, "ancestors": "x"}, "abc"])
def test_a_previous_format_file_with_a_damaged_lineage_is_refused_not_a_traceback(real, lineage) -> None:
    path = real("checkpoint_epoch_2.pth")
    state = load(path)
    state["format_version"], state["lineage"] = 1, lineage
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="lineage"):
        ckpt.load_checkpoint(path)
    [info] = ckpt.list_checkpoints(path.parent)
    assert not info.ok and "lineage" in info.error


def test_a_current_format_file_without_its_digest_is_refused(real) -> None:
    path = real("checkpoint_epoch_2.pth")
    torch.save(load(path), path)  # re-saved by plain torch.save: the digest is gone
    with pytest.raises(CheckpointError, match="integrity digest"):
        ckpt.load_checkpoint(path)


def test_retention_keeps_the_newest_periodic_and_never_interrupted_or_best(real, tmp_path: Path) -> None:
    names = [ckpt.step_checkpoint_name(1, 10), ckpt.step_checkpoint_name(1, 20),
             ckpt.epoch_checkpoint_name(1), ckpt.step_checkpoint_name(2, 40), ckpt.epoch_checkpoint_name(2),
             ckpt.interrupted_checkpoint_name(1), ckpt.BEST_NAME]
    for n in names:
        real("checkpoint_epoch_1.pth", n)
    removed = ckpt.apply_retention(tmp_path, keep=2, newest=tmp_path / ckpt.epoch_checkpoint_name(2))
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted([ckpt.step_checkpoint_name(2, 40), ckpt.epoch_checkpoint_name(2),
                           ckpt.interrupted_checkpoint_name(1), ckpt.BEST_NAME])
    assert len(removed) == 3


def test_retention_never_deletes_the_file_just_written_even_if_later_names_exist(real, tmp_path: Path
                                                                                 ) -> None:
    # Files named after the new one (another history that was not moved aside) must not push the
    # new checkpoint, or the one it started from, out.
    for n in (ckpt.epoch_checkpoint_name(2), ckpt.epoch_checkpoint_name(3), ckpt.step_checkpoint_name(3, 70),
              ckpt.step_checkpoint_name(3, 73)):
        real("checkpoint_epoch_1.pth", n)
    newest = tmp_path / ckpt.step_checkpoint_name(3, 73)
    ckpt.apply_retention(tmp_path, keep=2, newest=newest)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert newest.name in left and ckpt.epoch_checkpoint_name(3) in left
    assert ckpt.step_checkpoint_name(3, 70) in left and ckpt.epoch_checkpoint_name(2) not in left


def test_listing_shows_corrupt_files_and_plain_resume_skips_them(real, tmp_path: Path) -> None:
    real("checkpoint_epoch_1.pth")
    real("checkpoint_epoch_2.pth")
    (tmp_path / "checkpoint_epoch_3.pth").write_bytes(b"garbage")
    (tmp_path / ".checkpoint_epoch_4.pth.123.abcd.tmp").write_bytes(b"partial")
    infos = ckpt.list_checkpoints(tmp_path)
    assert [i.path.name for i in infos] == ["checkpoint_epoch_3.pth", "checkpoint_epoch_1.pth",
                                           "checkpoint_epoch_2.pth"]
    assert not infos[0].ok and "corrupt" in infos[0].error
    chosen, corrupt = ckpt.select_for_resume(tmp_path)
    assert chosen is not None and chosen.path.name == "checkpoint_epoch_2.pth"
    assert [c.path.name for c in corrupt] == ["checkpoint_epoch_3.pth"]


def test_plain_resume_prefers_the_line_written_most_recently_over_a_higher_step(real, tmp_path: Path
                                                                                ) -> None:
    old = real("checkpoint_epoch_2.pth")                      # line A, step 36
    fork = real("checkpoint_epoch_1.pth", "checkpoint_epoch_2_interrupted.pth")

    def as_new_line(state: dict[str, Any]) -> None:
        from indicator_transformer.clock import now_iso

        state["lineage"] = ckpt.new_lineage(state["lineage"], state["global_step"])
        state["timestamp"] = now_iso(precise=True)

    _resealed(fork, as_new_line)                              # line B, forked at step 18, written later
    chosen, _ = ckpt.select_for_resume(tmp_path)
    assert chosen is not None and chosen.path == fork
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plan = ckpt.plan_resume(tmp_path, ckpt.load_checkpoint(fork), fork)
    assert not plan.forked and plan.move_aside == [old]      # A's later file is not on B's history


def test_changing_the_epoch_count_on_resume_keeps_the_learning_rate_of_the_current_step(tmp_path: Path
                                                                                       ) -> None:
    import warnings

    from indicator_transformer.config import Config
    from indicator_transformer.data.cache import FeatureCache
    from indicator_transformer.data.prepare import prepare, resolve_sources
    from indicator_transformer.data.windows import fit_normalisation, make_splits
    from indicator_transformer.shutdown import SignalHandler
    from indicator_transformer.training.schedule import lr_factor
    from indicator_transformer.training.trainer import Trainer

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




def test_a_previous_run_is_moved_to_a_folder_named_by_when_it_started(real_run: Path, tmp_path: Path) -> None:
    from datetime import datetime

    models = tmp_path / "models"
    shutil.copytree(real_run / "models", models)  # copies are newer than the run itself
    started = datetime.fromisoformat(load(models / "checkpoint_epoch_1.pth")["lineage"]["started"])
    archive = ckpt.archive_previous_run(models, ("evaluation.json",))
    assert archive is not None and archive.name == started.strftime("%Y%m%dT%H%M%S")
    assert not list(models.glob("*.pth")) and (archive / "evaluation.json").exists()


def test_resuming_an_archived_checkpoint_with_later_files_beside_it_starts_a_new_line(real_run: Path,
                                                                                      tmp_path: Path) -> None:
    archive = tmp_path / "models" / ckpt.ARCHIVE_DIR / "run"
    shutil.copytree(real_run / "models", archive)
    start = archive / "checkpoint_epoch_1.pth"
    plan = ckpt.plan_resume(tmp_path / "models", ckpt.load_checkpoint(start), start)
    assert plan.forked and plan.lineage["line"] != load(start)["lineage"]["line"]


def test_a_symlinked_checkpoint_is_never_followed_but_listed_as_unusable_and_skipped(real_run, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(real_run / "models" / "checkpoint_epoch_1.pth", models)
    outside = tmp_path / "elsewhere" / "finished.pth"
    outside.parent.mkdir()
    shutil.copy(real_run / "models" / "checkpoint_epoch_2.pth", outside)
    (models / "checkpoint_epoch_9.pth").symlink_to(outside)
    assert [p.name for p in ckpt.checkpoint_files(models)] == ["checkpoint_epoch_1.pth"]
    chosen, skipped = ckpt.select_for_resume(models)
    assert chosen is not None and chosen.path.name == "checkpoint_epoch_1.pth"
    assert [i.path.name for i in skipped] == ["checkpoint_epoch_9.pth"]
    assert "symbolic link" in skipped[0].error and "never followed" in skipped[0].error
    ckpt.apply_retention(models, 1, newest=models / "checkpoint_epoch_1.pth")
    assert outside.exists()  # retention never deletes through a link
