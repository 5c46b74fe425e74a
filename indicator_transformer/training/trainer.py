"""The training loop: plain, top to bottom, with a stop check after every optimizer step.

    for epoch in epochs:
        check stop                      -> save checkpoint_epoch_<E>_interrupted.pth, return
        for batch in loader:            # resumable sampler: starts at the saved position
            forward, backward, clip, step, scheduler step
            every --checkpoint-every steps: checkpoint_epoch_<E>_step_<S>.pth (+ retention)
            check stop                  -> save interrupted checkpoint, return
        validate (checks stop per batch)
        checkpoint_epoch_<E>.pth, best.pth when val loss improved, retention

Exactness: model, optimizer, scheduler, every RNG and the sampler position are in each checkpoint,
the data order depends only on (seed, epoch), and the DataLoader gets its own generator so creating
an iterator never draws from the global RNG that dropout uses. Resuming after step k therefore
replays steps k+1.. exactly as the uninterrupted run did, bit for bit.

Under torchrun (:mod:`.distributed`) the same loop runs on every rank with the model wrapped in
DistributedDataParallel: each rank trains on its slice of the same global batch (the sampler's
docstring has the global batch and the learning-rate rule), losses are weighted so the averaged
gradient is the global batch mean's, the stop check is an all-reduce agreed by every rank after
each step and each validation batch, validation is sharded and gathered in the single-process
order, and only rank 0 writes (every checkpoint holds every rank's RNG state, ``rng_ranks``). In
one process none of this runs: the loss, the order and the files are exactly as before.
"""

from __future__ import annotations

import errno
import functools
import gc
import math
import os
import signal
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from .. import faults
from ..atomic import remove_stale_temp_files
from ..clock import now_iso
from ..config import Config
from ..data import frequency
from ..data.periods import label_digest, split_dates
from ..data.prepare import PreparedData
from ..data.windows import Normalisation, SplitIndex, WindowDataset, collate_batch
from ..errors import (
    CheckpointError,
    FolderMoved,
    StorageError,
    TrainingDiverged,
    UserError,
    WorkerStalled,
    too_many_open_files,
)
from ..folder_lock import check_still_held, explain_move, moved_to
from ..metrics import point_metrics
from ..model import IndicatorTransformer
from ..progress import Progress
from ..runlog import RunFolder
from ..shutdown import SignalHandler
from . import checkpoint as ckpt
from . import distributed
from .distributed import Dist
from .rng import capture_rng, restore_rng, seed_everything
from .sampler import ResumableBatchSampler
from .schedule import lr_factor, schedule

EVAL_BATCH = 1024
PREFETCH = 4  # batches each DataLoader worker keeps ready
# Seconds without a batch from the workers after which the wait ends in WorkerStalled: far above
# what a batch of windows from memory-mapped arrays takes, even on a loaded machine.
WORKER_TIMEOUT_S = 300.0
LOSS_FLUSH_EVERY = 50  # steps between fetching losses from the device (avoids a sync per step)


def worker_init(parent_pid: int, _worker_id: int) -> None:
    """DataLoader workers: the parent decides about stopping (invariant 3), and one thread each.

    Used as ``functools.partial(worker_init, os.getpid())``."""
    for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGUSR1"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)
    _die_with_parent(parent_pid)
    torch.set_num_threads(1)


def _die_with_parent(parent_pid: int) -> None:
    """On Linux, have the kernel kill this worker the moment its parent dies (even by kill -9);
    PyTorch's own watchdog would notice only within about 5 seconds. Elsewhere a no-op. The kernel
    ties this to the thread that forked the worker: loaders are created on the main thread."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1  # noqa: N806 - the kernel's name
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent_pid:  # the parent died before the call (we were re-parented)
            os._exit(0)
    except (OSError, AttributeError):
        pass


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda when available, else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine (use --device cpu "
                        f"or auto)")
    return torch.device(name)


def check_precision(precision: str, device: torch.device) -> None:
    """bf16 needs a device that computes in it: every CPU does (natively with AVX512-BF16 or AMX,
    emulated and slower elsewhere); on CUDA, Ampere or later."""
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError(f"--precision bf16: {torch.cuda.get_device_name(device)} does not support "
                        f"bfloat16 (use --precision fp32)")


@dataclass
class FitResult:
    """How :meth:`Trainer.fit` ended."""

    completed: bool
    checkpoint: Path | None = None          # the interrupted checkpoint, when stopped
    stopped_in: str = ""                    # "train", "validation", "pruned" or ""


class Trainer:
    """Owns the model, optimizer, scheduler, sampler and loaders of one run."""

    def __init__(self, cfg: Config, data: PreparedData, splits: dict[str, SplitIndex],
                 norm: Normalisation, *, handler: SignalHandler, stream: TextIO | None = None,
                 show_progress: bool = True, dist: Dist | None = None) -> None:
        self.cfg = cfg
        self.dist = dist or distributed.current()
        self.data = data
        self.norm = norm
        self.handler = handler
        self.stream = stream or sys.stderr
        self.show_progress = show_progress
        self.device = resolve_device(cfg.train.device)
        t, f = cfg.train, cfg.features
        check_precision(cfg.train.precision, self.device)
        if t.threads:  # before any tensor work: the count also decides how reductions round
            torch.set_num_threads(t.threads)
        self.models_dir = Path(cfg.train.models_dir)

        self.datasets = {k: WindowDataset(data.symbols, splits[k], f.window, norm) for k in splits}
        if len(self.datasets["train"]) == 0:
            raise UserError(f"no training windows: the data has too few bars for window {f.window} "
                            f"and horizon {f.horizon} (use more bars or a smaller --window)")

        seed_everything(t.seed)
        self.model = IndicatorTransformer(len(data.feature_names), f.window, cfg.model).to(self.device)
        # The module the training step calls: DDP averages the ranks' gradients in backward. Rank
        # 0's weights are broadcast at construction (they are equal anyway: same seed).
        self.forward_model: nn.Module = self.model
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            with warnings.catch_warnings():  # torch 2.13 renames it; the meaning we want is this one
                warnings.filterwarnings("ignore", message=".*broadcast_buffers.*")
                self.forward_model = DistributedDataParallel(
                    self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                    broadcast_buffers=False)  # the buffers are equal on every rank: no sync per step
            seed_everything(distributed.rank_seed(t.seed, self.dist.rank))  # own dropout masks
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
        self.sampler = ResumableBatchSampler(len(self.datasets["train"]), t.batch_size, t.seed,
                                             rank=self.dist.rank, world_size=self.dist.world_size)
        self.steps_per_epoch = self.sampler.batches_per_epoch
        self._make_scheduler()
        self.loss_fn = nn.MSELoss()

        # Progress counters (all saved in checkpoints).
        self.epoch = 1
        self.step_in_epoch = 0
        self.global_step = 0
        self.epoch_complete = False
        self.epoch_history: list[dict[str, Any]] = []
        self._train_baseline: float | None = None
        self._data_profile: dict[str, Any] | None = None
        self.step_losses: list[float] = []
        self.best_val = float("inf")
        self._pending_losses: list[torch.Tensor] = []
        self.lineage = ckpt.new_lineage()  # resume replaces it (same line, or a fork)
        self.run: RunFolder | None = None  # the run folder (run.py sets it); its record is saved
        self._train_samples = 0
        self._train_seconds = 0.0
        self._pauses = distributed.pauses_here()  # test pause points (faults.py) on this rank?
        # A sweep's trial (sweep/hook.py): called with the epoch history after each epoch, and once
        # on resume; True ends the run as pruned (its end-of-epoch checkpoint is already saved).
        self.epoch_hook: Callable[[list[dict[str, Any]], bool], bool] | None = None

    # ------------------------------------------------------------------ setup helpers
    def _make_scheduler(self) -> None:
        warmup, total = schedule(self.cfg.train, self.steps_per_epoch)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, warmup, total))

    def _autocast(self) -> torch.autocast:
        """The training step's arithmetic (``--precision``): bf16 autocast, or a disabled one (fp32).
        Autocast keeps the weights, their gradients and AdamW's state in fp32 and runs matrix
        products in bfloat16; it draws no random numbers, so resuming stays bit for bit."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16,
                              enabled=self.cfg.train.precision == "bf16")

    def _loader(self, split: str, sampler: Any) -> DataLoader:
        nw = self.cfg.train.num_workers
        return DataLoader(
            self.datasets[split], batch_sampler=sampler, collate_fn=collate_batch, num_workers=nw,
            worker_init_fn=functools.partial(worker_init, os.getpid()) if nw else None,
            pin_memory=self.device.type == "cuda",
            # A private generator: creating the iterator must not draw from the global RNG.
            generator=torch.Generator().manual_seed(self.cfg.train.seed),
            prefetch_factor=PREFETCH if nw else None,
            # A way out of every wait on a worker: a batch it cannot hand over is dropped without
            # a word (see WorkerStalled), and the wait would otherwise never end.
            timeout=WORKER_TIMEOUT_S if nw else 0)

    def _start(self, loader: DataLoader) -> Iterator[Any]:
        """The loader's iterator (its worker processes start here); workers that cannot start for
        lack of descriptors are one error line saying how to raise the limit, not a traceback."""
        nw = self.cfg.train.num_workers
        if nw:
            _check_descriptors_for(nw)
        hook = sys.unraisablehook
        try:
            return iter(loader)
        except OSError as e:
            if e.errno not in (errno.EMFILE, errno.ENFILE):
                raise
            # The half-built iterator's __del__ fails on attributes it never set (noise, not
            # news) when the traceback that holds it goes, at the end of this block or in the
            # collection below; collected now, it gives back the pipes of the workers it did
            # start (the failed run's summary needs descriptors too).
            sys.unraisablehook = lambda _: None
        try:
            gc.collect()
        finally:
            sys.unraisablehook = hook
        raise too_many_open_files(f"could not start a DataLoader worker process (--num-workers "
                                  f"{self.cfg.train.num_workers})")

    # ------------------------------------------------------------------ state
    def state_dict(self, *, interrupted: bool) -> dict[str, Any]:
        """The checkpoint dict (schema owned by :mod:`training.checkpoint`)."""
        self._flush_losses()
        rng = capture_rng(include_cuda=self.device.type == "cuda")
        per_rank = distributed.gather_states(rng) if self.dist.enabled else None
        sampler_state = self.sampler.state_dict()
        sampler_state.update(epoch=self.epoch, position=self.step_in_epoch)
        return {
            "format_version": ckpt.FORMAT_VERSION,
            "timestamp": now_iso(precise=True),  # orders two lines written in the same second
            "lineage": self.lineage,
            **({"run": self.run.record()} if self.run is not None else {}),
            "interrupted": interrupted,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "steps_per_epoch": self.steps_per_epoch,
            "epoch_complete": self.epoch_complete,
            "global_step": self.global_step,
            "best_val": self.best_val,
            "loss_history": {"epochs": [dict(e) for e in self.epoch_history],
                             "steps": list(self.step_losses)},
            "rng": rng,
            # Under torchrun: every rank's RNG state, so each rank resumes with its own.
            **({"rng_ranks": per_rank, "world_size": self.dist.world_size} if per_rank else {}),
            "sampler": sampler_state,
            # The threads the steps ran with: another count rounds differently (a resume says so).
            "threads": torch.get_num_threads(),
            "config": self.cfg.to_dict(),
            "normalisation": self.norm.to_dict(),
            "data_fingerprint": {"fingerprint": self.data.fingerprint,
                                 "keys": {s.symbol: s.key for s in self.data.symbols}},
            "feature_names": list(self.data.feature_names),
            # What evaluate and predict say about the training data: its bar sizes, and each
            # symbol's train / validation / test period.
            "data_profile": self.data_profile,
            # Absolute forms of the data paths, so a resume from another folder still finds them.
            "data_location": {k: os.path.abspath(v) for k in ("data_dir", "data_file")
                              if (v := getattr(self.cfg.data, k)) is not None},
        }

    def load_state_dict(self, state: dict[str, Any], path: Path | str = "checkpoint") -> None:
        """Continue from a checkpoint (validated by :func:`ckpt.load_checkpoint`): weights,
        optimizer, scheduler, counters, RNG, sampler. Anything that does not fit this run's model
        and data is a :class:`CheckpointError` naming ``path`` and the field (the shapes and the
        sampler are checked before anything is loaded)."""
        self._check_compatible(state, path)
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as e:
            raise CheckpointError(f"{path}: does not fit this model: {str(e).splitlines()[0]}") from None
        self.epoch = int(state["epoch"])
        self.step_in_epoch = int(state["step_in_epoch"])
        self.global_step = int(state["global_step"])
        self.epoch_complete = bool(state.get("epoch_complete", False))
        self.best_val = float(state.get("best_val", float("inf")))
        self.epoch_history = [dict(e) for e in state["loss_history"]["epochs"]]
        self.step_losses = list(state["loss_history"]["steps"])
        self.lineage = ckpt.lineage_of(state)
        if self.epoch_complete:  # an end-of-epoch checkpoint: the next epoch starts from step 0
            self.epoch += 1
            self.step_in_epoch = 0
            self.epoch_complete = False
        self.step_in_epoch = min(self.step_in_epoch, self.steps_per_epoch)
        self._restore_rank_rng(state)
        self._note_arithmetic_change(state, path)

    def _note_arithmetic_change(self, state: dict[str, Any], path: Path | str) -> None:
        """A resume may change ``--precision`` or the thread count (runtime settings, like the
        device: a line can go on where bf16 does not pay, or on a machine with more cores), but the
        continuation then rounds differently from the uninterrupted run: say so, once. Checkpoints
        older than these settings were trained in fp32 (checkpoint.py fills it) and did not record
        their thread count (nothing to compare)."""
        saved = state["config"].get("train", {}).get("precision", "fp32")
        mine = self.cfg.train.precision
        changes = [f"--precision {saved} -> {mine} (--precision {saved} keeps it)"] if saved != mine else []
        if "threads" in state and state["threads"] != torch.get_num_threads():
            changes.append(f"threads {state['threads']} -> {torch.get_num_threads()} (--threads "
                           f"{state['threads']} keeps them)")
        if changes and self.dist.is_main:
            print(f"note: resuming {path} with {'; '.join(changes)}: the result will differ slightly "
                  f"from the uninterrupted run, which these settings would have reproduced bit for "
                  f"bit", file=self.stream, flush=True)

    def _restore_rank_rng(self, state: dict[str, Any]) -> None:
        """Each rank continues with its own saved RNG state. A rank the checkpoint has no state for
        (resumed with more processes than it was written with) starts from a seed of (seed, rank,
        global step): the run is then deterministic, though not equal to the original one."""
        ranks = state.get("rng_ranks") or [state["rng"]]
        if self.dist.rank < len(ranks):
            restore_rng(ranks[self.dist.rank])
        else:
            seed_everything(distributed.rank_seed(self.cfg.train.seed + self.global_step, self.dist.rank))

    def _check_model_shapes(self, weights: dict[str, torch.Tensor], path: Path | str) -> None:
        expected = {k: tuple(v.shape) for k, v in self.model.state_dict().items()}
        got = {k: tuple(v.shape) for k, v in weights.items()}
        for key in sorted(set(expected) | set(got)):
            if expected.get(key) != got.get(key):
                raise CheckpointError(
                    f"{path}: invalid checkpoint: field 'model.{key}': expected "
                    + (f"shape {list(expected[key])}" if key in expected else "no such weight")
                    + " for this configuration, found "
                    + (f"shape {list(got[key])}" if key in got else "it missing"))

    def load_weights(self, state: dict[str, Any], path: Path | str) -> None:
        """Only the model weights of a checkpoint (best.pth for the final evaluation)."""
        self._check_model_shapes(state["model"], path)
        self.model.load_state_dict(state["model"])

    def _check_compatible(self, state: dict[str, Any], path: Path | str) -> None:
        """The checkpoint's tensors and sampler must fit this run's model, optimizer and data."""
        saved = state["sampler"]
        if (saved.get("seed"), saved.get("batch_size")) != (self.sampler.seed, self.sampler.batch_size):
            raise CheckpointError(f"{path}: checkpoint sampler (seed {saved.get('seed')}, batch size "
                                  f"{saved.get('batch_size')}) does not match this run's "
                                  f"({self.sampler.seed}, {self.sampler.batch_size})")
        self._check_model_shapes(state["model"], path)

    def set_total_epochs(self, epochs: int) -> None:
        """Change the planned epoch count (resume --epochs); the LR schedule follows it."""
        if epochs != self.cfg.train.epochs:
            self.cfg = self.cfg.replace(epochs=epochs)
            sched_state = self.scheduler.state_dict()
            self._make_scheduler()  # a new LambdaLR sets the LR of step 0 in the optimizer...
            self.scheduler.load_state_dict(sched_state)
            # ...and loading its state does not undo that: put the LR of the current step back.
            step = self.scheduler.last_epoch
            for group, base, fn in zip(self.optimizer.param_groups, self.scheduler.base_lrs,
                                       self.scheduler.lr_lambdas, strict=True):
                group["lr"] = base * fn(step)
            self.scheduler._last_lr = [g["lr"] for g in self.optimizer.param_groups]

    # ------------------------------------------------------------------ saving
    def _save(self, name: str, *, interrupted: bool, also_best: bool = False) -> Path:
        """Every rank takes part (the RNG states are gathered); only rank 0 writes."""
        state = self.state_dict(interrupted=interrupted)
        if not self.dist.is_main:
            return self.models_dir / name
        data = ckpt.serialize(state)
        try:
            check_still_held(self.models_dir)  # moved or replaced under the run: write nothing there
            if also_best:
                # best.pth first: a checkpoint may only claim a best_val whose model is already on
                # disk. Dying between the two writes leaves best.pth one epoch ahead, holding that
                # epoch's complete end-of-epoch state, which a resume then continues from.
                ckpt.save_checkpoint(self.models_dir / ckpt.BEST_NAME, {}, data=data)
            return ckpt.save_checkpoint(self.models_dir / name, {}, data=data)
        except StorageError as e:  # FolderMoved before the write, or a write broken by the move
            went = moved_to(self.models_dir)
            if went is None:
                raise
            # Renamed under the run: the lock still holds the folder under its new name, so this
            # state goes there (nothing trained is lost), and the run stops.
            if also_best:
                ckpt.save_checkpoint(went / ckpt.BEST_NAME, {}, data=data)
            saved = ckpt.save_checkpoint(went / name, {}, data=data)
            first = explain_move(e, self.models_dir)
            raise FolderMoved(f"{first}; this run saved its state there as {saved.name} and "
                              f"stopped", saved=saved) from None

    def save_interrupted(self) -> Path:
        """Save ``checkpoint_epoch_<E>_interrupted.pth`` and say so."""
        path = self._save(ckpt.interrupted_checkpoint_name(self.epoch), interrupted=True)
        if self.dist.is_main:
            print(f"Checkpoint saved: {path}", file=self.stream, flush=True)
        return path

    def _flush_losses(self) -> None:
        # Under torchrun every rank calls this at the same steps (a fixed interval, saves, epoch
        # ends): the pending per-rank parts of each step's global-batch mean are summed over ranks.
        if self._pending_losses:
            values = distributed.all_reduce_sum(torch.stack(self._pending_losses)).cpu().tolist()
            self._pending_losses.clear()
            bad = [v for v in values if not math.isfinite(v)]
            self.step_losses.extend(values)
            if bad:
                raise TrainingDiverged(
                    f"training loss became {bad[0]} by step {self.global_step}; the last good "
                    f"checkpoint is kept; try a lower --lr")

    # ------------------------------------------------------------------ the loop
    def fit(self) -> FitResult:
        """Train until the configured epoch count, or until a stop is requested."""
        t = self.cfg.train
        if self.dist.is_main:
            check_still_held(self.models_dir)  # else the mkdir would make a new one at the old name
            self.models_dir.mkdir(parents=True, exist_ok=True)
            remove_stale_temp_files(self.models_dir)  # checkpoints abandoned by an earlier hard exit
        # Resumed after an epoch: ask again about the last one (a stop may have come between its
        # checkpoint and the answer), so an interrupted trial is pruned exactly where it would be.
        if self._pruned():
            return FitResult(False, None, "pruned")
        while self.epoch <= t.epochs:
            if self.stop_agreed():
                return FitResult(False, self.save_interrupted(), "train")
            epoch_start = time.perf_counter()
            if self.step_in_epoch < self.steps_per_epoch:
                if not self._train_epoch():
                    return FitResult(False, self.save_interrupted(), "train")
            val = self.evaluate("val")
            if val is None:
                return FitResult(False, self.save_interrupted(), "validation")
            self._end_epoch(val, time.perf_counter() - epoch_start)
            if self._pruned():
                return FitResult(False, None, "pruned")
        return FitResult(True)

    def _pruned(self) -> bool:
        """Whether the sweep's pruner ends this run after its last completed epoch."""
        if self.epoch_hook is None or not self.epoch_history:
            return False
        return bool(self.epoch_hook(self.epoch_history, self.epoch <= self.cfg.train.epochs))

    def _train_epoch(self) -> bool:
        """Run the rest of the current epoch. False when stopped after a step."""
        t = self.cfg.train
        self.model.train()
        self.sampler.set_epoch(self.epoch, self.step_in_epoch)
        loader = self._loader("train", self.sampler)
        progress = Progress(self.steps_per_epoch, f"epoch {self.epoch}/{t.epochs}", unit="step",
                            stream=self.stream, enabled=self.show_progress, initial=self.step_in_epoch)
        it = self._start(loader)
        samples, tick = 0, time.perf_counter()
        self._train_samples, self._train_seconds = 0, 0.0
        try:
            for x, y in it:
                x = x.to(self.device, non_blocking=True)      # (B, L, F)
                y = y.to(self.device, non_blocking=True)      # (B,)
                with self._autocast():
                    pred = self.forward_model(x)
                loss, recorded = self._loss(pred.float(), y)  # the loss itself always in fp32
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)
                self.optimizer.step()
                self.scheduler.step()
                self.step_in_epoch += 1
                self.global_step += 1
                self._pending_losses.append(recorded)
                # samples/s of the job: the global batch (this rank's slice is only part of it)
                samples += self.sampler.global_size(self.step_in_epoch - 1) if self.dist.enabled else len(y)
                if self._pauses:
                    faults.point("train_step", self.global_step)
                if not self.dist.enabled and moved_to(self.models_dir) is not None:
                    # The models folder was renamed: stop now, saving the state where it went,
                    # rather than train on to a checkpoint that cannot be written. (Under torchrun
                    # the ranks find out together, at the next save.)
                    self._save(ckpt.interrupted_checkpoint_name(self.epoch), interrupted=True)
                if len(self._pending_losses) >= LOSS_FLUSH_EVERY:
                    self._flush_losses()
                if self.show_progress:
                    rate = samples / max(time.perf_counter() - tick, 1e-9)
                    progress.update(1, loss=self._recent_loss(loss), samples_per_s=round(rate))
                if t.checkpoint_every and self.global_step % t.checkpoint_every == 0 \
                        and self.step_in_epoch < self.steps_per_epoch:
                    path = self._save(ckpt.step_checkpoint_name(self.epoch, self.global_step),
                                      interrupted=False)
                    if self.dist.is_main:
                        ckpt.apply_retention(self.models_dir, t.keep, newest=path)
                if self.stop_agreed(f"train:{self.global_step}"):
                    return False
        except RuntimeError as e:
            stalled = _stalled(e, t.num_workers)
            if stalled is None:
                raise
            raise stalled from None
        finally:
            self._train_samples, self._train_seconds = samples, time.perf_counter() - tick
            progress.close()
            _shutdown_loader(it)
        self._flush_losses()
        return True

    def _loss(self, pred: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the loss to differentiate, this rank's part of the step's recorded loss).

        One process: the batch mean, as always. Under torchrun: this rank's summed squared error
        times W / (global batch size), so DDP's average over W ranks is the gradient of the global
        batch's mean; the recorded part is the sum / size, which summed over ranks is that mean. A
        zero-weight stand-in sample (an empty slice of a short last batch) counts for nothing."""
        if not self.dist.enabled:
            loss = self.loss_fn(pred, y)
            return loss, loss.detach()
        b = self.step_in_epoch  # the global batch this step trains on (0-based)
        sq = ((pred.float() - y.float()) ** 2).sum()
        if self.sampler.shard_size(b) == 0:
            sq = sq * 0.0
        size = self.sampler.global_size(b)
        return sq * self.sampler.loss_scale(b), sq.detach() / size

    def stop_agreed(self, at: str = "epoch") -> bool:
        """Whether to stop now. Under torchrun the ranks all-reduce the MAX of their recorded
        signal numbers, so all stop at the same step with the same exit code; a rank that got no
        signal itself adopts the agreed one (never inside the signal handler: see shutdown.py).
        ``at`` names the place for the ``agree`` trace point (faults.py)."""
        if not self.dist.enabled:
            return self.handler.should_stop
        faults.trace("agree", at)
        return self.handler.agree(distributed.agree_stop(self.handler.pending_signal))

    def _recent_loss(self, loss: torch.Tensor) -> float:
        # The progress bar shows a loss averaged over what is already on the host: no sync per step.
        recent = self.step_losses[-LOSS_FLUSH_EVERY:]
        return float(np.mean(recent)) if recent else float(loss.detach().cpu())

    def _end_epoch(self, val: dict[str, float], seconds: float) -> None:
        first = (self.epoch - 1) * self.steps_per_epoch
        train_loss = float(np.mean(self.step_losses[first:first + self.steps_per_epoch]))
        rate = self._train_samples / self._train_seconds if self._train_seconds > 0 else float("nan")
        self.epoch_history.append({"epoch": self.epoch, "train_loss": train_loss,
                                   "val_loss": val["loss"], "val_ic": val["ic"],
                                   "seconds": round(seconds, 3),
                                   # Each split's loss of predicting the training mean: the plot
                                   # divides by them so the two curves are comparable.
                                   "train_baseline": self.train_baseline,
                                   "val_baseline": val.get("baseline", float("nan")),
                                   # For the run folder's metrics.csv (not needed to resume):
                                   "lr": float(self.optimizer.param_groups[0]["lr"]),
                                   "samples_per_s": round(rate, 1) if math.isfinite(rate) else None,
                                   "segment": self.run.segment if self.run is not None else 0,
                                   "finished": now_iso()})
        improved = val["loss"] < self.best_val
        if improved:
            self.best_val = val["loss"]
        self.epoch_complete = True
        path = self._save(ckpt.epoch_checkpoint_name(self.epoch), interrupted=False, also_best=improved)
        if self.dist.is_main:
            ckpt.apply_retention(self.models_dir, self.cfg.train.keep, newest=path)
        if self.run is not None:
            self.run.write_metrics(self.epoch_history)  # after the checkpoint: never ahead of it
        if self.dist.is_main:
            print(f"epoch {self.epoch}/{self.cfg.train.epochs}: train_loss={train_loss:.4f} "
              f"val_loss={val['loss']:.4f} val_ic={val['ic']:+.4f}"
                  f"{' (best)' if improved else ''} [{seconds:.1f}s]", file=self.stream, flush=True)
        self.epoch += 1
        self.step_in_epoch = 0
        self.epoch_complete = False

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def predict(self, split: str, *, together: bool = False) -> tuple[np.ndarray, np.ndarray] | None:
        """Standardised predictions and targets over a split, in order; None if stopped.

        ``together`` (validation under torchrun): every rank predicts its slice of each batch, the
        stop check is agreed after each batch, and the slices are gathered back into the
        single-process order on every rank. Otherwise this rank predicts the whole split alone
        (the final test evaluation, on rank 0)."""
        ds = self.datasets[split]
        if len(ds) == 0:
            return np.zeros(0, np.float32), np.zeros(0, np.float32)
        shard = together and self.dist.enabled
        self.model.eval()
        sampler = ResumableBatchSampler(len(ds), EVAL_BATCH, 0, shuffle=False,
                                        rank=self.dist.rank if shard else 0,
                                        world_size=self.dist.world_size if shard else 1)
        it = self._start(self._loader(split, sampler))
        rows: list[torch.Tensor] = []  # (n, 2): prediction, target
        try:
            for b, (x, y) in enumerate(it):
                pred = self.model(x.to(self.device)).float().cpu()
                if sampler.shard_size(b) > 0:  # not a zero-weight stand-in
                    rows.append(torch.stack([pred, y.float()], dim=1))
                if self._pauses:
                    faults.point(f"{split}_batch", b + 1)
                if self.stop_agreed(f"{split}:{b + 1}") if shard else self.handler.should_stop:
                    return None
        except RuntimeError as e:
            stalled = _stalled(e, self.cfg.train.num_workers)
            if stalled is None:
                raise
            raise stalled from None
        finally:
            _shutdown_loader(it)
            self.model.train()
        mine = torch.cat(rows) if rows else torch.zeros((0, 2))
        if shard:
            mine = _interleave(distributed.all_gather_rows(mine), sampler)
        return mine[:, 0].numpy(), mine[:, 1].numpy()

    def evaluate(self, split: str) -> dict[str, float] | None:
        """Loss (standardised MSE) and return-space metrics on a split; None if stopped. Under
        torchrun every rank computes the same figures from the gathered predictions."""
        out = self.predict(split, together=True)
        if out is None:
            return None
        pred, target = out
        loss = float(np.mean((pred - target) ** 2)) if len(pred) else float("nan")
        ds = self.datasets[split]
        metrics = point_metrics(ds.to_returns(pred), ds.to_returns(target), train_mean=self.norm.label_mean)
        metrics["loss"] = loss
        # The loss of predicting 0 (each symbol's training mean) on this split. Validation labels
        # measured in training units vary less than 1 when the market calmed down, so the raw
        # validation loss sits below the training loss without the model being any better.
        metrics["baseline"] = (float(np.mean(np.square(target, dtype=np.float64))) if len(target)
                               else float("nan"))
        return metrics

    @property
    def data_profile(self) -> dict[str, Any]:
        """Bar sizes, per-symbol split dates and label digests of the training data (computed
        once)."""
        if self._data_profile is None:
            self._data_profile = {
                "bar_frequency": frequency.frequencies(self.data.symbols),
                "split_dates": split_dates(self.data.symbols,
                                           {k: ds.split for k, ds in self.datasets.items()}),
                "label_digests": {s.symbol: label_digest(s.label) for s in self.data.symbols},
            }
        return self._data_profile

    @property
    def train_baseline(self) -> float:
        """The training split's loss of predicting 0 (each symbol's training mean): the mean
        squared standardised training label, about 1 by construction (computed once)."""
        if self._train_baseline is None:
            self._train_baseline = label_baseline(self.datasets["train"])
        return self._train_baseline


def label_baseline(ds: WindowDataset) -> float:
    """Mean squared standardised label over a split's samples (NaN when empty), straight from the
    label arrays: no windows are built."""
    total, n = 0.0, 0
    for s, (lo, hi) in enumerate(zip(ds.split.starts, ds.split.stops, strict=True)):
        if hi > lo:
            y = (np.asarray(ds.symbols[s].label[lo:hi], np.float64) - float(ds.label_mean[s])) \
                * float(ds.label_inv_std[s])
            total += float(np.sum(y * y))
            n += int(hi - lo)
    return total / n if n else float("nan")


def _interleave(parts: list[torch.Tensor], sampler: ResumableBatchSampler) -> torch.Tensor:
    """Put the ranks' gathered rows back in the single-process order: batch by batch, each
    batch's slices in rank order (the slices are contiguous, see the sampler)."""
    world = len(parts)
    offsets = [0] * world
    out = []
    for b in range(sampler.batches_per_epoch):
        size = sampler.global_size(b)
        for r in range(world):
            n = size * (r + 1) // world - size * r // world
            out.append(parts[r][offsets[r]:offsets[r] + n])
            offsets[r] += n
    return torch.cat(out)


def _check_descriptors_for(workers: int) -> None:
    """Refuse to start ``workers`` DataLoader workers that the limit of open files would starve:
    each batch in flight passes its tensors as descriptors, and one that cannot be passed is
    dropped, so the training would wait for it for ever. The estimate is generous (a few dozen
    per worker); the soft limit was raised to the hard one at start, so only a tiny hard limit
    meets it."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        in_use = len(os.listdir("/dev/fd"))
    except (ImportError, OSError, ValueError):
        return
    need = in_use + 8 + workers * (6 + 4 * PREFETCH)
    if soft != getattr(resource, "RLIM_INFINITY", -1) and soft < need:
        raise too_many_open_files(f"starting {workers} DataLoader worker(s) needs about {need} open "
                                  f"files ({in_use} open now; --num-workers 0 needs none)")


def _stalled(e: RuntimeError, workers: int) -> WorkerStalled | None:
    """The error for a DataLoader's timeout (None for any other RuntimeError)."""
    if not str(e).startswith("DataLoader timed out"):
        return None
    return WorkerStalled(f"no batch came from the DataLoader workers (--num-workers {workers}) for "
                         f"{WORKER_TIMEOUT_S:.0f}s: one could not be handed over (too few open "
                         f"files, `ulimit -n`, or a full /dev/shm, e.g. Docker's 64 MB default: "
                         f"--shm-size). Use --num-workers 0, or fix that, and run the command again "
                         f"(training continues from the last checkpoint with resume_training.py)")


def _shutdown_loader(it: Any) -> None:
    """Stop and join DataLoader workers now rather than whenever the iterator is collected."""
    shutdown = getattr(it, "_shutdown_workers", None)  # private, but the only explicit way
    if shutdown is not None:
        shutdown()

