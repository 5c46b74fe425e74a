"""The checkpoint schema, naming, verified loading, lineage, listing and retention. Nobody else
knows them.

Names in ``models/``:
    checkpoint_epoch_<E>.pth                 end of epoch E (periodic)
    checkpoint_epoch_<E>_step_<S>.pth        every --checkpoint-every steps, S = global step (periodic)
    checkpoint_epoch_<E>_interrupted.pth     stopped inside epoch E (never deleted by retention)
    best.pth                                 lowest validation loss so far (never deleted by retention)

Each file is one dict readable by ``torch.load(path, weights_only=True)``: tensors, numbers,
strings, lists and dicts only, so loading can never execute code. Since format 2 the zip archive's
comment holds the sha256 of the rest of the file (:mod:`..integrity`), so any damaged byte is
reported, and every field is validated before use, so a hand-edited value is an error naming the
file and the field, never a traceback. Format-1 files (no digest) still load, with a warning.

Lineage: every checkpoint names its *line* of training (a random id) and the lines it descends
from (``ancestors``: [line, global step] pairs). A run, or a resume from a line's newest
checkpoint, continues one line. A resume from an older checkpoint starts a new line and first moves
the old line's later files to ``previous_runs/`` (:func:`plan_resume`), so ``models/`` only ever
holds one path of history: names never collide, retention and ``best.pth`` never mix two lines,
and a plain resume continues the line written most recently (:func:`select_for_resume`).
"""

from __future__ import annotations

import io
import math
import mmap
import os
import pickle
import re
import secrets
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_write_bytes, fsync_dir, is_temp_file
from ..clock import now_iso
from ..errors import CheckpointError, UserError
from ..integrity import IntegrityError, seal_zip, zip_seal_status

FORMAT_VERSION = 2
LEGACY_FORMAT_VERSIONS = (1,)  # readable without a digest, with a warning
REQUIRED_KEYS = ("model", "optimizer", "scheduler", "epoch", "step_in_epoch", "global_step",
                 "loss_history", "rng", "sampler", "config", "normalisation", "data_fingerprint",
                 "timestamp", "format_version", "interrupted")
BEST_NAME = "best.pth"
ARCHIVE_DIR = "previous_runs"
LEGACY_LINE = "legacy"  # the line of format-1 checkpoints, which recorded none
_NAME = re.compile(r"^checkpoint_epoch_(?P<epoch>\d+)(?:_step_(?P<step>\d+))?(?P<intr>_interrupted)?\.pth$")
_LINE_ID = re.compile(r"^[0-9a-f]{16}$")


class CheckpointWarning(UserWarning):
    """A checkpoint was loaded without full verification (written before digests existed)."""


def epoch_checkpoint_name(epoch: int) -> str:
    return f"checkpoint_epoch_{epoch}.pth"


def step_checkpoint_name(epoch: int, global_step: int) -> str:
    return f"checkpoint_epoch_{epoch}_step_{global_step}.pth"


def interrupted_checkpoint_name(epoch: int) -> str:
    return f"checkpoint_epoch_{epoch}_interrupted.pth"


def new_lineage(parent: dict[str, Any] | None = None, fork_step: int | None = None) -> dict[str, Any]:
    """A fresh line id; with ``parent`` (a lineage) it descends from that line at ``fork_step``."""
    ancestors = [] if parent is None else [*parent["ancestors"], [parent["line"], int(fork_step or 0)]]
    # "started" names the run's folder in previous_runs/ when a later run moves it aside.
    return {"line": secrets.token_hex(8), "ancestors": ancestors, "started": now_iso()}


def lineage_of(state: dict[str, Any]) -> dict[str, Any]:
    """The (validated) lineage of a loaded checkpoint; format-1 files belong to ``legacy``."""
    return state.get("lineage") or {"line": LEGACY_LINE, "ancestors": []}


# ----------------------------------------------------------------------------- writing
def serialize(state: dict[str, Any]) -> bytes:
    """The checkpoint as sealed bytes (so the same bytes can go to several files)."""
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise ValueError(f"checkpoint state lacks {missing}")
    buf = io.BytesIO()
    torch.save(state, buf)
    return seal_zip(buf.getvalue())


def save_checkpoint(path: str | Path, state: dict[str, Any], data: bytes | None = None) -> Path:
    """Atomically write ``state`` (or its pre-serialised ``data``) to ``path``."""
    return atomic_write_bytes(path, data if data is not None else serialize(state))


# ----------------------------------------------------------------------------- reading
# Settings added after checkpoints were first written, with the value that reproduces how those
# checkpoints were trained (not today's default): a resume must cut and scale the data as before.
OLD_SETTING_VALUES = {"features": {"split": "global", "normalise": "global"},
                      # trained before these settings existed: in fp32, with torch's thread count
                      "train": {"precision": "fp32", "threads": 0}}


def _fill_old_settings(state: Any) -> None:
    cfg = state.get("config") if isinstance(state, dict) else None
    for section, values in OLD_SETTING_VALUES.items():
        if isinstance(cfg, dict) and isinstance(cfg.get(section), dict):
            for key, value in values.items():
                cfg[section].setdefault(key, value)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", *,
                    mmap: bool = False) -> dict[str, Any]:
    """Verify, load (``weights_only=True``) and validate a checkpoint.

    Any failure is a :class:`CheckpointError` naming the file (and the field, for a bad value).
    ``mmap=True`` maps tensor data instead of reading it (for listing many large checkpoints).
    """
    return _read(Path(path), map_location, mmap)[0]


def _read(path: Path, map_location: str | torch.device, use_mmap: bool) -> tuple[dict[str, Any], bool]:
    """(state, sealed)."""
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found")
    if not path.is_file():
        raise CheckpointError(f"{path}: is not a file")
    try:
        if use_mmap:
            # Hash through a mapping (no copy of a large file), then let torch map the tensors.
            with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
                view = memoryview(m)
                try:
                    sealed = zip_seal_status(view) == "sealed"
                finally:
                    view.release()  # an exception's frames still reference it; the map must close
            source: Any = path
        else:
            # Read once, verify and parse the same bytes: the file cannot change in between.
            data = path.read_bytes()
            sealed = zip_seal_status(data) == "sealed"
            source = io.BytesIO(data)
    except IntegrityError as e:
        raise CheckpointError(f"{path}: corrupt checkpoint: {e}") from None
    except (OSError, ValueError) as e:  # unreadable, or empty (mmap refuses 0 bytes)
        raise CheckpointError(f"{path}: cannot read checkpoint ({e})") from None
    try:
        state = torch.load(source, map_location=map_location, weights_only=True,
                           mmap=use_mmap)
    except pickle.UnpicklingError as e:
        culprit = next((ln.strip() for ln in str(e).splitlines() if "GLOBAL" in ln or "global" in ln), "")
        raise CheckpointError(
            f"{path}: refused: it holds Python objects that loading would have to execute "
            f"(only tensors, numbers, strings, lists and dicts are accepted)"
            + (f"; found {culprit}" if culprit else "")) from None
    except Exception as e:  # noqa: BLE001 - any failure to parse is damage, reported as such
        first = str(e).splitlines()[0] if str(e) else "no detail"
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({type(e).__name__}: "
                              f"{first})") from None
    _fill_old_settings(state)
    try:
        validate_state(state, sealed=sealed)
    except _Invalid as e:
        raise CheckpointError(f"{path}: invalid checkpoint: {e}") from None
    if not sealed:
        warnings.warn(f"{path}: written by an older version without an integrity digest; loaded "
                      f"after checking its fields only", CheckpointWarning, stacklevel=3)
    return state, sealed


class _Invalid(Exception):
    """A field of a loaded checkpoint is missing or wrong (message names the field)."""


def _need(cond: bool, field: str, expected: str, value: Any = None) -> None:
    if not cond:
        shown = "" if value is None else f", found {_show(value)}"
        raise _Invalid(f"field '{field}': expected {expected}{shown}")


def _show(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {list(value.shape)}"
    text = repr(value)
    return text if len(text) <= 60 else f"{type(value).__name__} {text[:57]}..."


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _finite_tensor(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and (not t.is_floating_point() or bool(torch.isfinite(t).all()))


def validate_state(state: Any, *, sealed: bool = True) -> None:
    """Check every field a reader relies on (types, ranges, and how they agree), raising
    :class:`_Invalid` naming the first bad one. Compatibility with a particular model or data set
    is checked by the trainer when it loads the state."""
    _need(isinstance(state, dict), "(top level)", "a dict", type(state).__name__)
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise _Invalid(f"not a training checkpoint of this tool (missing {', '.join(missing)})")
    version = state["format_version"]
    # A current-format file must carry its digest; only an old-format one may lack it.
    _need((version == FORMAT_VERSION and sealed) or (version in LEGACY_FORMAT_VERSIONS and not sealed),
          "format_version", f"{FORMAT_VERSION} with an integrity digest", version)
    if version == FORMAT_VERSION or "lineage" in state:  # an old file may carry a (damaged) one
        _check_lineage(state.get("lineage"))
    for key in ("model", "optimizer", "scheduler", "rng", "sampler", "config", "normalisation",
                "data_fingerprint", "loss_history"):
        _need(isinstance(state[key], dict), key, "a dict", state[key])
    # Counters.
    for key in ("epoch", "step_in_epoch", "global_step"):
        _need(_is_int(state[key]) and state[key] >= (1 if key == "epoch" else 0), key,
              "an integer >= " + ("1" if key == "epoch" else "0"), state[key])
    spe = state.get("steps_per_epoch", state["step_in_epoch"] or 1)
    _need(_is_int(spe) and spe >= 1, "steps_per_epoch", "an integer >= 1", spe)
    _need(state["step_in_epoch"] <= spe, "step_in_epoch", f"at most steps_per_epoch ({spe})",
          state["step_in_epoch"])
    _need(state["global_step"] >= state["step_in_epoch"], "global_step",
          f"at least step_in_epoch ({state['step_in_epoch']})", state["global_step"])
    for key in ("interrupted", "epoch_complete"):
        _need(isinstance(state.get(key, False), bool), key, "true or false", state.get(key))
    _need(isinstance(state["timestamp"], str) and _parses_as_time(state["timestamp"]), "timestamp",
          "an ISO 8601 time", state["timestamp"])
    completed = state["epoch"] - (0 if state.get("epoch_complete") else 1)
    _check_history(state["loss_history"], state["global_step"], completed)
    best = state.get("best_val", math.inf)
    _need(_is_num(best) and not math.isnan(best) and best >= 0, "best_val", "a number >= 0", best)
    lowest = min((e["val_loss"] for e in state["loss_history"]["epochs"] if not math.isnan(e["val_loss"])),
                 default=math.inf)
    _need(best == lowest, "best_val", f"the lowest val_loss of loss_history ({lowest})", best)
    _check_model(state["model"])
    _check_optimizer(state["optimizer"])
    sched = state["scheduler"]
    _need(_is_int(sched.get("last_epoch")) and sched["last_epoch"] == state["global_step"],
          "scheduler.last_epoch", f"the global step ({state['global_step']})", sched.get("last_epoch"))
    _need(isinstance(sched.get("base_lrs"), list) and all(_is_num(v) and math.isfinite(v) and v > 0
                                                          for v in sched["base_lrs"]),
          "scheduler.base_lrs", "a list of positive numbers", sched.get("base_lrs"))
    _check_rng(state["rng"])
    _check_rank_rngs(state)
    _check_sampler(state["sampler"], state)
    # The intra-op thread count the steps ran with (since --threads; older files do not say).
    _need(_is_int(state.get("threads", 1)) and 1 <= state.get("threads", 1) <= 1024, "threads",
          "an integer from 1 to 1024 (the range --threads accepts)", state.get("threads"))
    cfg = _check_config(state["config"])
    n_features = _check_normalisation(state["normalisation"])
    names = state.get("feature_names", list(cfg.features.features))
    _need(isinstance(names, list) and names == list(cfg.features.features), "feature_names",
          f"the configuration's features {list(cfg.features.features)}", names)
    _need(n_features == len(names), "normalisation.mean", f"{len(names)} values (one per feature)",
          n_features)
    reference = _reference_model(cfg)
    _check_shapes(state["model"], state["optimizer"], reference)
    _check_optimisation(state, cfg, spe, reference)
    if "run" in state:
        from ..runlog import check_run_record

        problem = check_run_record(state["run"])
        _need(problem is None, "run", problem or "", state["run"])
    if "data_profile" in state:  # added later: older checkpoints have none
        _check_data_profile(state["data_profile"])
    fp = state["data_fingerprint"]
    _need(isinstance(fp.get("fingerprint"), str) and re.fullmatch(r"[0-9a-f]{64}", fp["fingerprint"])
          is not None, "data_fingerprint.fingerprint", "a sha256 hex digest", fp.get("fingerprint"))
    loc = state.get("data_location", {})
    _need(isinstance(loc, dict) and all(k in ("data_dir", "data_file") and isinstance(v, str)
                                        for k, v in loc.items()),
          "data_location", "absolute data_dir / data_file paths", loc)
    keys = fp.get("keys", {})
    _need(isinstance(keys, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in keys.items()),
          "data_fingerprint.keys", "a map of symbol to cache key", keys)


def _check_data_profile(profile: Any) -> None:
    """{bar_frequency: {bar size: [symbol, ...]}, split_dates: {symbol: {split: {from, to,
    windows} | None}}}: what evaluate and predict tell about the training data (its bar sizes, and
    which period of each symbol was train, validation and test)."""
    _need(isinstance(profile, dict), "data_profile", "a dict", profile)
    groups = profile.get("bar_frequency", {})
    _need(isinstance(groups, dict) and all(isinstance(k, str) and isinstance(v, list)
                                           and all(isinstance(x, str) for x in v) for k, v in groups.items()),
          "data_profile.bar_frequency", "a map of bar size to symbol names", groups)
    dates = profile.get("split_dates", {})
    _need(isinstance(dates, dict), "data_profile.split_dates", "a map of symbol to its split dates", dates)
    for sym, splits in dates.items():
        ok = isinstance(sym, str) and isinstance(splits, dict) and all(
            k in ("train", "val", "test") and (r is None or (
                isinstance(r, dict) and isinstance(r.get("from"), str) and isinstance(r.get("to"), str)
                and _parses_as_time(r["from"]) and _parses_as_time(r["to"]) and _is_int(r.get("windows"))))
            for k, r in splits.items())
        _need(ok, f"data_profile.split_dates[{sym!r}]",
              "{train|val|test: {from: ISO time, to: ISO time, windows: int} or null}", splits)
    digests = profile.get("label_digests", {})  # absent in checkpoints written before them
    _need(isinstance(digests, dict) and all(isinstance(k, str) and isinstance(v, str) and len(v) <= 64
                                            for k, v in digests.items()),
          "data_profile.label_digests", "a map of symbol to a hex digest", digests)


def _parses_as_time(text: str) -> bool:
    try:
        datetime.fromisoformat(text)
    except ValueError:
        return False
    return True


def _check_lineage(lin: Any) -> None:
    _need(isinstance(lin, dict), "lineage", "a dict with 'line' and 'ancestors'", lin)
    _need(isinstance(lin.get("line"), str) and _LINE_ID.fullmatch(lin["line"]) is not None,
          "lineage.line", "a 16-digit hex id", lin.get("line"))
    anc = lin.get("ancestors")
    _need(isinstance(anc, list) and all(
        isinstance(a, list) and len(a) == 2 and isinstance(a[0], str)
        and (a[0] == LEGACY_LINE or _LINE_ID.fullmatch(a[0]) is not None) and _is_int(a[1]) and a[1] >= 0
        for a in anc), "lineage.ancestors", "a list of [line id, global step] pairs", anc)
    started = lin.get("started", "")
    _need(isinstance(started, str) and (started == "" or _parses_as_time(started)), "lineage.started",
          "an ISO 8601 time", started)


def _check_history(hist: dict[str, Any], global_step: int, completed: int) -> None:
    steps, epochs = hist.get("steps"), hist.get("epochs")
    _need(isinstance(steps, list) and all(_is_num(v) and math.isfinite(v) for v in steps),
          "loss_history.steps", "a list of finite numbers", steps)
    _need(len(steps) == global_step, "loss_history.steps",
          f"one loss per step ({global_step})", f"{len(steps)} values")
    _need(isinstance(epochs, list), "loss_history.epochs", "a list of per-epoch records", epochs)
    _need(len(epochs) == completed, "loss_history.epochs", f"one record per completed epoch ({completed})",
          f"{len(epochs)} records")
    for i, e in enumerate(epochs):
        # val_loss is NaN when the validation split is empty; it is never negative or infinite.
        ok = isinstance(e, dict) and e.get("epoch") == i + 1 and all(
            _is_num(e.get(k)) for k in ("train_loss", "val_loss", "val_ic", "seconds")) \
            and math.isfinite(e["train_loss"]) and not math.isinf(e["val_loss"]) \
            and not e["val_loss"] < 0
        _need(ok, f"loss_history.epochs[{i}]",
              f"a record {{epoch: {i + 1}, train_loss, val_loss, val_ic, seconds}}", e)


def _check_model(model: dict[str, Any]) -> None:
    _need(len(model) > 0, "model", "the model's weights", "an empty dict")
    for k, v in model.items():
        _need(isinstance(k, str) and isinstance(v, torch.Tensor), f"model.{k}", "a tensor", v)
        _need(_finite_tensor(v), f"model.{k}", "finite values", "NaN or infinity")


def _check_optimizer(opt: dict[str, Any]) -> None:
    state, groups = opt.get("state"), opt.get("param_groups")
    _need(isinstance(state, dict), "optimizer.state", "a dict", state)
    _need(isinstance(groups, list) and len(groups) >= 1 and all(isinstance(g, dict) for g in groups),
          "optimizer.param_groups", "a non-empty list of dicts", groups)
    for i, g in enumerate(groups):
        for key in ("lr", "weight_decay"):
            _need(_is_num(g.get(key)) and math.isfinite(g[key]) and g[key] >= 0,
                  f"optimizer.param_groups[{i}].{key}", "a finite number >= 0", g.get(key))
        _need(isinstance(g.get("params"), list) and all(_is_int(p) for p in g["params"]),
              f"optimizer.param_groups[{i}].params", "a list of parameter indices", g.get("params"))
    for k, s in state.items():
        _need(_is_int(k) and isinstance(s, dict), f"optimizer.state[{k!r}]", "a dict per parameter", s)
        for name, v in s.items():
            _need(_finite_tensor(v), f"optimizer.state[{k}].{name}", "a tensor of finite values", v)


def _reference_model(cfg: Any) -> torch.nn.Module:
    """The model the config describes, on the meta device: shapes only, no memory, no init cost."""
    from ..model import IndicatorTransformer

    with torch.device("meta"):
        return IndicatorTransformer(len(cfg.features.features), cfg.features.window, cfg.model)


def _check_optimisation(state: dict[str, Any], cfg: Any, steps_per_epoch: int,
                        reference: torch.nn.Module) -> None:
    """Every optimizer and scheduler setting must be the one the configuration implies: a file
    edited to another learning rate, betas or `maximize` would otherwise train on silently."""
    from .schedule import lr_at

    ref = torch.optim.AdamW(list(reference.parameters()), lr=cfg.train.lr,
                            weight_decay=cfg.train.weight_decay).param_groups[0]
    step = state["global_step"]
    lr = lr_at(cfg.train, steps_per_epoch, step)
    for i, g in enumerate(state["optimizer"]["param_groups"]):
        # The settings that change the update; bookkeeping keys (foreach, fused, ...) that another
        # torch version may add or drop are left to torch's own load_state_dict.
        for key in ("betas", "eps", "weight_decay", "amsgrad", "maximize"):
            expected = ref[key]
            got = tuple(g[key]) if isinstance(g.get(key), list | tuple) else g.get(key)
            _need(got == (tuple(expected) if isinstance(expected, tuple) else expected),
                  f"optimizer.param_groups[{i}].{key}", f"{expected!r} (from the configuration)", got)
        _need(g.get("initial_lr") == cfg.train.lr, f"optimizer.param_groups[{i}].initial_lr",
              f"the configured lr {cfg.train.lr}", g.get("initial_lr"))
        _need(math.isclose(g["lr"], lr, rel_tol=1e-9, abs_tol=0.0), f"optimizer.param_groups[{i}].lr",
              f"{lr!r}, the schedule's learning rate after {step} steps", g["lr"])
    sched = state["scheduler"]
    _need(sched["base_lrs"] == [cfg.train.lr] * len(state["optimizer"]["param_groups"]),
          "scheduler.base_lrs", f"[{cfg.train.lr}] (the configured lr)", sched["base_lrs"])
    last = sched.get("_last_lr", [g["lr"] for g in state["optimizer"]["param_groups"]])
    _need(last == [g["lr"] for g in state["optimizer"]["param_groups"]], "scheduler._last_lr",
          "the optimizer's learning rates", last)
    for k, s in state["optimizer"]["state"].items():
        if "step" in s:
            _need(float(s["step"]) == step, f"optimizer.state[{k}].step", f"the global step ({step})",
                  s["step"])
        if "exp_avg_sq" in s:
            _need(bool((s["exp_avg_sq"] >= 0).all()), f"optimizer.state[{k}].exp_avg_sq",
                  "values >= 0 (a running mean of squares)", "negative values")


def _check_shapes(model: dict[str, Any], opt: dict[str, Any], ref: torch.nn.Module) -> None:
    """Weights and optimizer moments must have the shapes of the model the config describes
    (built on the meta device: shapes only, no memory, no initialisation cost)."""
    expected = {k: list(v.shape) for k, v in ref.state_dict().items()}
    for key in sorted(set(expected) | set(model)):
        _need(key in model and key in expected and list(model[key].shape) == expected[key],
              f"model.{key}", f"shape {expected[key]}" if key in expected else "no such weight",
              model.get(key, "nothing"))
    params = [list(p.shape) for p in ref.parameters()]
    indices = sorted(i for g in opt["param_groups"] for i in g["params"])
    _need(indices == list(range(len(params))), "optimizer.param_groups",
          f"parameter indices 0..{len(params) - 1}", indices)
    for i, s in opt["state"].items():
        _need(0 <= i < len(params), f"optimizer.state[{i}]", f"a parameter index < {len(params)}", i)
        for name in ("exp_avg", "exp_avg_sq"):
            if name in s:
                _need(list(s[name].shape) == params[i], f"optimizer.state[{i}].{name}",
                      f"shape {params[i]}", s[name])


def _check_rng(rng: dict[str, Any]) -> None:
    py = rng.get("python")
    _need(isinstance(py, list) and len(py) == 3 and _is_int(py[0]) and isinstance(py[1], list)
          and len(py[1]) == 625 and all(_is_int(v) and 0 <= v < 2**32 for v in py[1])
          and (py[2] is None or _is_num(py[2])), "rng.python", "Python's random state", py)
    npst = rng.get("numpy")
    _need(isinstance(npst, dict) and npst.get("bit_generator") == "MT19937"
          and isinstance(npst.get("key"), torch.Tensor) and npst["key"].dtype == torch.int64
          and list(npst["key"].shape) == [624] and _is_int(npst.get("pos")) and 0 <= npst["pos"] <= 624
          and npst.get("has_gauss") in (0, 1) and _is_num(npst.get("gauss")),
          "rng.numpy", "NumPy's MT19937 state", npst)
    t = rng.get("torch")
    _need(isinstance(t, torch.Tensor) and t.dtype == torch.uint8
          and t.shape == torch.get_rng_state().shape, "rng.torch", "torch's CPU generator state", t)
    cuda = rng.get("cuda", [])
    from .rng import rng_state_problem

    refused = rng_state_problem(rng)
    _need(refused is None, f"rng.{(refused or '').split(' ')[0]}", "a state its generator accepts",
          f"one it refuses: {refused}")
    _need(isinstance(cuda, list)
          and all(isinstance(c, torch.Tensor) and c.dtype == torch.uint8 for c in cuda),
          "rng.cuda", "a list of CUDA generator states", cuda)


def _check_rank_rngs(state: dict[str, Any]) -> None:
    """``rng_ranks`` (written by a training under torchrun with W > 1 processes): every rank's RNG
    state, rank 0's first and equal to ``rng``; ``world_size`` says W. A one-process checkpoint
    has neither field."""
    world = state.get("world_size", 1)
    _need(_is_int(world) and world >= 1, "world_size", "an integer >= 1", world)
    ranks = state.get("rng_ranks")
    if ranks is None:
        _need(world == 1, "rng_ranks", f"the RNG states of the {world} ranks", "none")
        return
    _need(isinstance(ranks, list) and len(ranks) == world and world > 1
          and all(isinstance(r, dict) for r in ranks), "rng_ranks",
          f"a list of {world} RNG states (one per rank, world_size {world})", ranks)
    for i, r in enumerate(ranks):
        try:
            _check_rng(r)
        except _Invalid as e:
            raise _Invalid(f"rng_ranks[{i}]: {e}") from None
    _need(torch.equal(ranks[0]["torch"], state["rng"]["torch"]), "rng_ranks[0]",
          "rank 0's state, the same as field 'rng'", "a different one")


def _check_sampler(s: dict[str, Any], state: dict[str, Any]) -> None:
    for key in ("seed", "epoch", "position", "n", "batch_size"):
        _need(_is_int(s.get(key)) and s[key] >= (1 if key in ("n", "batch_size", "epoch") else 0),
              f"sampler.{key}", "an integer >= " + ("1" if key in ("n", "batch_size", "epoch") else "0"),
              s.get(key))
    _need(isinstance(s.get("shuffle", True), bool), "sampler.shuffle", "true or false", s.get("shuffle"))
    _need(s["epoch"] == state["epoch"] and s["position"] == state["step_in_epoch"], "sampler",
          f"epoch {state['epoch']} position {state['step_in_epoch']} (as the checkpoint's counters)",
          f"epoch {s['epoch']} position {s['position']}")


def _check_config(cfg: dict[str, Any]) -> Any:
    from ..config import Config  # the configuration owns its own validation

    try:
        return Config.from_dict(cfg, source="field 'config'")
    except UserError as e:
        raise _Invalid(str(e)) from None
    except Exception as e:  # noqa: BLE001 - a damaged config must never escape as a traceback
        raise _Invalid(f"field 'config': not a valid configuration ({type(e).__name__}: {e})") from None


# What fit_normalisation can produce (a constant feature gets std 1, a feature std below 1e-8 too;
# a constant label std 1), with room: beyond these a hand-edited file would make every input or
# prediction overflow or vanish while still loading (a label std of 1e300 gave a Sharpe of 9e16).
FEATURE_STD = (1e-9, 1e9)
LABEL_STD = (1e-13, 1e6)
MAX_LEVEL = 1e9


def _scale_ok(t: torch.Tensor, bounds: tuple[float, float]) -> bool:
    return bool(((t >= bounds[0]) & (t <= bounds[1])).all())


def _level_ok(t: torch.Tensor) -> bool:
    return bool((t.abs() <= MAX_LEVEL).all())


def _check_normalisation(norm: dict[str, Any]) -> int:
    mean, std = norm.get("mean"), norm.get("std")
    _need(isinstance(mean, torch.Tensor) and mean.dim() == 1 and mean.is_floating_point()
          and _finite_tensor(mean), "normalisation.mean", "a 1-D tensor of finite values", mean)
    _need(isinstance(std, torch.Tensor) and std.shape == mean.shape and std.is_floating_point()
          and _finite_tensor(std) and _scale_ok(std, FEATURE_STD), "normalisation.std",
          f"{mean.shape[0]} values in [{FEATURE_STD[0]:g}, {FEATURE_STD[1]:g}]", std)
    _need(_level_ok(mean), "normalisation.mean", f"values within +-{MAX_LEVEL:g}", mean)
    for key, bounds in (("label_mean", None), ("label_std", LABEL_STD)):
        v = norm.get(key)
        _need(isinstance(v, torch.Tensor) and v.numel() == 1 and v.is_floating_point()
              and math.isfinite(float(v)) and (_scale_ok(v, bounds) if bounds else _level_ok(v)),
              f"normalisation.{key}", f"a number in [{bounds[0]:g}, {bounds[1]:g}]" if bounds
              else f"a number within +-{MAX_LEVEL:g}", v)
    if "symbols" in norm:
        _check_symbol_statistics(norm, int(mean.shape[0]))
    return int(mean.shape[0])


def _check_symbol_statistics(norm: dict[str, Any], n_features: int) -> None:
    """Per-symbol statistics: one row per named symbol, finite, positive scales."""
    names = norm["symbols"]
    _need(isinstance(names, list) and len(names) >= 1 and all(isinstance(n, str) and n for n in names)
          and len(set(names)) == len(names), "normalisation.symbols", "a list of distinct symbol names",
          names)
    shapes = {"sym_mean": (len(names), n_features), "sym_std": (len(names), n_features),
              "sym_label_mean": (len(names),), "sym_label_std": (len(names),)}
    bounds = {"sym_std": FEATURE_STD, "sym_label_std": LABEL_STD}
    for key, shape in shapes.items():
        v = norm.get(key)
        ok = isinstance(v, torch.Tensor) and tuple(v.shape) == shape and v.is_floating_point() \
            and _finite_tensor(v)
        ok = ok and (_scale_ok(v, bounds[key]) if key in bounds else _level_ok(v))
        where = f"in [{bounds[key][0]:g}, {bounds[key][1]:g}]" if key in bounds else f"within +-{MAX_LEVEL:g}"
        _need(ok, f"normalisation.{key}", f"a tensor of shape {list(shape)} of values {where}", v)


# ----------------------------------------------------------------------------- listing
@dataclass
class CheckpointInfo:
    """One row of ``resume_training.py --list``."""

    path: Path
    size: int
    state: dict[str, Any] | None = None
    error: str | None = None
    sealed: bool = True

    @property
    def ok(self) -> bool:
        return self.state is not None

    @property
    def global_step(self) -> int:
        return int(self.state["global_step"]) if self.state else -1

    @property
    def line(self) -> str | None:
        return lineage_of(self.state)["line"] if self.state else None

    @property
    def is_best(self) -> bool:
        return self.path.name == BEST_NAME

    @property
    def written(self) -> datetime:
        """When it was written (timestamp field; naive times taken as UTC)."""
        t = datetime.fromisoformat(self.state["timestamp"]) if self.state else datetime.min
        return t if t.tzinfo else t.replace(tzinfo=UTC)


def parse_name(name: str) -> tuple[int, int | None, bool] | None:
    """(epoch, global step or None, interrupted) of a checkpoint file name this tool writes, or
    None for any other name (best.pth included)."""
    m = _NAME.match(name)
    if m is None:
        return None
    return int(m["epoch"]), (int(m["step"]) if m["step"] else None), m["intr"] is not None


def checkpoint_files(models_dir: str | Path) -> list[Path]:
    """Every ``*.pth`` in the folder except in-flight temporary files and symbolic links (a link
    could make a resume read, and retention delete, a file outside the folder: see
    :func:`linked_checkpoints`)."""
    d = Path(models_dir)
    if not d.is_dir():
        return []
    return sorted(p for p in d.glob("*.pth") if not p.is_symlink() and p.is_file() and not is_temp_file(p))


def linked_checkpoints(models_dir: str | Path) -> list[Path]:
    """``*.pth`` names in the folder that are symbolic links: never followed, listed as unusable."""
    d = Path(models_dir)
    return sorted(p for p in d.glob("*.pth") if p.is_symlink()) if d.is_dir() else []


def list_checkpoints(models_dir: str | Path) -> list[CheckpointInfo]:
    """Verify and load every checkpoint (corrupt ones are listed with their error), oldest first."""
    infos = []
    for p in checkpoint_files(models_dir):
        size = p.stat().st_size
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", CheckpointWarning)  # shown as a column instead
                state, sealed = _read(p, "cpu", True)
            infos.append(CheckpointInfo(p, size, state=state, sealed=sealed))
        except CheckpointError as e:
            infos.append(CheckpointInfo(p, size, error=str(e).split(": ", 1)[-1]))
    for p in linked_checkpoints(models_dir):
        infos.append(CheckpointInfo(p, 0, error=f"a symbolic link (to {os.readlink(p)}): never followed; "
                                                f"copy the file here to use it"))
    return sorted(infos, key=_age_key)


def _age_key(i: CheckpointInfo) -> tuple:
    # Oldest first: by write time, then step, then best.pth after the file it copies.
    return (i.ok, i.written if i.ok else datetime.min.replace(tzinfo=UTC), i.global_step, i.is_best,
            i.path.name)


def on_path(info: CheckpointInfo, lineage: dict[str, Any], global_step: int) -> bool:
    """Whether a checkpoint lies on the history that leads to (lineage, global_step): the same line
    at or before that step, or an ancestor line at or before the step the history forked from it."""
    if not info.ok:
        return False
    if info.line == lineage["line"]:
        return info.global_step <= global_step
    return any(info.line == line and info.global_step <= step for line, step in lineage["ancestors"])


def select_for_resume(models_dir: str | Path, infos: list[CheckpointInfo] | None = None
                      ) -> tuple[CheckpointInfo | None, list[CheckpointInfo]]:
    """The checkpoint a plain resume continues, and the corrupt files it skipped.

    The line written to most recently wins (a line that descends from another wins a tie on time);
    within it, the checkpoint with the highest global step (a periodic or interrupted file rather
    than ``best.pth`` when they tie)."""
    infos = list_checkpoints(models_dir) if infos is None else infos
    corrupt = [i for i in infos if not i.ok]
    valid = [i for i in infos if i.ok]
    if not valid:
        return None, corrupt
    lines: dict[str, list[CheckpointInfo]] = {}
    for i in valid:
        lines.setdefault(i.line or "", []).append(i)

    def recency(group: list[CheckpointInfo]) -> tuple:
        return (max(i.written for i in group),
                max(len(lineage_of(i.state)["ancestors"]) for i in group))

    group = max(lines.values(), key=recency)
    return max(group, key=lambda i: (i.global_step, not i.is_best, i.written)), corrupt


@dataclass
class ResumePlan:
    """What resuming from a checkpoint into a models folder does before training."""

    lineage: dict[str, Any]                 # the line the resumed run writes
    forked: bool                            # a new line (the start was not its line's newest)
    move_aside: list[Path]                  # files not on the start's history
    label: str = ""                         # names the lines moved aside, for their folder
    known: list[CheckpointInfo] = field(default_factory=list)  # the moved files, already read


def plan_resume(models_dir: str | Path, state: dict[str, Any], start: Path,
                extra_files: Iterable[Path] = ()) -> ResumePlan:
    """Decide the line of a resumed run and which files of ``models_dir`` must move aside.

    Every checkpoint that is not on the start's history (a later file of the same line, another
    line, a corrupt file) is moved to ``previous_runs/`` before training writes anything, so the
    resumed line never overwrites, deletes or is confused with them. ``extra_files`` (reports)
    that do not belong to the start are passed in by the caller and moved with them."""
    lineage = lineage_of(state)
    step = int(state["global_step"])
    infos = list_checkpoints(models_dir)
    start_abs = start.resolve()
    moving = [i for i in infos if i.path.resolve() != start_abs and not on_path(i, lineage, step)]
    # Later files of the start's line make this a new line, in models/ or beside the start (a
    # checkpoint taken from previous_runs/<run>/ that is not that run's newest).
    beside = list_checkpoints(start.parent) if start.parent.resolve() != Path(models_dir).resolve() else []
    forked = any(i.ok and i.line == lineage["line"] and i.global_step > step for i in infos + beside)
    if forked or lineage["line"] == LEGACY_LINE:
        lineage = new_lineage(lineage, step)
    lines = sorted({i.line[:8] for i in moving if i.ok and i.line})
    label = f"line-{lines[0]}" if len(lines) == 1 else f"lines-{'-'.join(lines)}" if 1 < len(lines) <= 3 \
        else f"{len(lines)}-lines" if lines else ""
    return ResumePlan(lineage, forked, [i.path for i in moving] + list(extra_files), label, moving)


def _run_start(files: list[Path], known: Iterable[CheckpointInfo]) -> datetime:
    """When the run that wrote ``files`` started: the earliest ``started`` of their lines (the
    earliest file time for files that record none). ``known`` files are not read again."""
    states = {i.path: i.state for i in known}
    times = []
    for p in files:
        try:  # never through a link: its target's times say nothing about this run
            state = states[p] if p in states else load_checkpoint(p, mmap=True) \
                if p.suffix == ".pth" and not p.is_symlink() else None
            started = lineage_of(state).get("started") if state and not p.is_symlink() else None
            t = datetime.fromisoformat(started) if isinstance(started, str) else None
        except (CheckpointError, ValueError):
            t = None
        times.append(t if t is not None else datetime.fromtimestamp(p.lstat().st_mtime, UTC))
    return min(t if t.tzinfo else t.replace(tzinfo=UTC) for t in times)


def move_aside(models_dir: str | Path, files: list[Path], label: str = "",
               known: Iterable[CheckpointInfo] = ()) -> Path | None:
    """Move ``files`` (in ``models_dir``) to ``previous_runs/<run start>[-label]/``, named by when
    the run that wrote them started (``known``: those already read). Nothing is deleted. Returns
    the folder, or None."""
    d = Path(models_dir)
    files = [p for p in files if p.is_file() or p.is_symlink()]
    if not files:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CheckpointWarning)
        stamp = _run_start(files, known).strftime("%Y%m%dT%H%M%S")
    base = f"{stamp}-{label}" if label else stamp
    target = d / ARCHIVE_DIR / base
    n = 1
    while target.exists():
        n += 1
        target = d / ARCHIVE_DIR / f"{base}-{n}"
    target.mkdir(parents=True)
    for p in files:
        p.rename(target / p.name)  # same file system: atomic, no copy
    fsync_dir(d)
    fsync_dir(target)
    return target


def archive_previous_run(models_dir: str | Path, extra_names: tuple[str, ...] = ()) -> Path | None:
    """Move an earlier run's checkpoints (and ``extra_names``) aside so that a new run's retention,
    ``best.pth`` and "newest checkpoint" never mix two runs. Returns the archive folder, or None."""
    d = Path(models_dir)
    return move_aside(d, checkpoint_files(d) + [d / n for n in extra_names if (d / n).is_file()])


# ----------------------------------------------------------------------------- retention
def _order(p: Path) -> tuple[int, float] | None:
    m = _NAME.match(p.name)
    if not m or m.group("intr"):
        return None
    # An end-of-epoch checkpoint comes after every step checkpoint of the same epoch.
    return int(m.group("epoch")), (int(m.group("step")) if m.group("step") else math.inf)


def apply_retention(models_dir: str | Path, keep: int, newest: Path | None = None) -> list[Path]:
    """Delete all but the ``keep`` newest periodic checkpoints (by name order of epoch, step).

    Called only after ``newest`` (a periodic checkpoint) was committed: it is never deleted, and
    neither is any file ordered after it (which only a foreign or damaged history could hold).
    Interrupted checkpoints and best.pth are never deleted here.
    """
    limit = _order(newest) if newest is not None else None
    periodic = sorted((o, p) for p in checkpoint_files(models_dir)
                      if (o := _order(p)) is not None and (limit is None or o <= limit))
    removed = []
    for _, p in periodic[:-keep] if keep > 0 else []:
        try:
            p.unlink()
            removed.append(p)
        except FileNotFoundError:
            pass
    return removed
