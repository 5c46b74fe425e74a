"""The sweep's study and its trials: asking, claiming, resuming and telling.

    DIR/sweep.db                the Optuna study (unless --storage names another database)
    DIR/trials/<number>/        one ordinary run per trial: run.toml, trial.json, models/, runs/
    DIR/trials/<number>/pruned.json   written by the trial's process when the pruner ended it

A trial stays RUNNING in the study until its run has ended: a stopped or killed sweep leaves it
so, with its checkpoint, and the next sweep process on the storage claims it and continues the
same trial (same number and parameters) from that checkpoint. Optuna itself would mark it failed
and start a new one. Who runs a trial is decided by a lock on its folder (folder_lock.py: the
kernel lets go of a dead process's lock at once); claims are made one at a time under a lock file
in DIR, so two workers never take the same trial. Each running trial's heartbeat is recorded in
the storage too, for ``--status`` and dashboards.

Sampling is reproducible: with a sweep seed every parameter of trial ``n`` is drawn by a TPE
sampler seeded from (seed, n, parameter), from the finished trials in the study. A sweep stopped
any number of times therefore asks the same trials as one never stopped (with one worker), and a
trial whose parameters were only partly drawn when its sweep died gets the same values again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_json
from ..config import Config
from ..errors import StorageError, UserError
from ..experiment.walkforward import RunFolders
from ..folder_lock import FolderInUse, folder_holder, hold_folder
from .hook import OBJECTIVES, PRUNED_FILE
from .space import Space, invalid
from .storage import db_errors

TRIALS = "trials"
TRIAL_FILE = "trial.json"
RECORD_KEY = "indicator_transformer_sweep"  # the study's user attribute: what the sweep is
SKIPPED_KEY = "skipped"                     # a trial's user attribute: why its values make no model
FAILED_KEY = "failed"
CLAIM_LOCK = ".claim.lock"


@dataclass(frozen=True)
class TrialSpec(RunFolders):
    """One trial's run and where it lives (the folders of walk-forward's runs)."""

    number: int
    params: dict[str, Any]
    root: Path

    @property
    def name(self) -> str:
        return f"trial {self.number}"

    def config(self, base: Config) -> Config:
        """The base configuration with this trial's values, writing into its folders."""
        return base.replace(models_dir=str(self.models.absolute()), runs_dir=str(self.runs.absolute()),
                            **self.params)


def trial_root(out: Path, number: int) -> Path:
    return out / TRIALS / str(number)


def _seed_for(seed: int, number: int, name: str) -> int:
    digest = hashlib.sha256(f"{seed}:{number}:{name}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


class Sweep:
    """One worker's view of the study: the storage, the space, the base settings."""

    def __init__(self, storage: Any, url: str, study_name: str, space: Space, base: Config, out: Path,
                 objective: str, pruner: str, startup_trials: int, sweep_seed: int | None) -> None:
        self.storage, self.url, self.study_name = storage, url, study_name
        self.space, self.base, self.out = space, base, out
        self.objective, self.pruner, self.startup_trials = objective, pruner, startup_trials
        self.sweep_seed = sweep_seed
        self.study: Any = None
        # Trials whose worker is gone but whose training process still holds their models folder
        # (saving on its parent's death): claimed once that process has ended.
        self.waiting: dict[int, str] = {}

    # ------------------------------------------------------------------ the study
    def record(self, fingerprint: str) -> dict[str, Any]:
        """What must be the same for another process to work on this study."""
        from ..experiment.walkforward import NOT_COMPUTED

        cfg = self.base.to_dict()
        for section in cfg.values():
            for key in NOT_COMPUTED:
                section.pop(key, None)
        return {"space": self.space.record(), "objective": self.objective, "pruner": self.pruner,
                "pruner_startup_trials": self.startup_trials, "sweep_seed": self.sweep_seed,
                "config": cfg, "data_fingerprint": fingerprint}

    def open(self, fingerprint: str) -> None:
        """Create the study, or check that the one of that name is this sweep."""
        import optuna

        from ..experiment.walkforward import differences
        from .hook import make_pruner

        record = json.loads(json.dumps(self.record(fingerprint)))  # as the storage gives it back
        with db_errors(self.url, "opening the study"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.study = optuna.create_study(
                storage=self.storage, study_name=self.study_name, load_if_exists=True,
                direction=OBJECTIVES[self.objective], pruner=make_pruner(self.pruner, self.startup_trials),
                sampler=self._sampler(0, ""))
            old = self.study.user_attrs.get(RECORD_KEY)
            if old is None:
                if self.study.get_trials(deepcopy=False):
                    raise UserError(f"study {self.study_name!r} in {self.url} has trials but was not made "
                                    f"by this sweep command; use another --study")
                left = self.out / TRIALS
                if left.is_dir() and any(left.iterdir()):
                    # Trial folders of another study (its database removed, or another --study in
                    # this --out): trial 0 of this one must not continue trial 0 of that one.
                    raise UserError(f"{left}/ holds the trials of another sweep (not of study "
                                    f"{self.study_name!r} in {self.url}); use another --out, or that "
                                    f"sweep's --storage and --study to continue it")
                self.study.set_user_attr(RECORD_KEY, record)
                return
        if old != record:
            diff = differences(old, record)
            raise UserError(f"study {self.study_name!r} in {self.url} is another sweep: {'; '.join(diff[:6])}"
                            f"{' ...' if len(diff) > 6 else ''}. Use the same settings to continue it, "
                            f"or another --study or --out")

    def _sampler(self, number: int, name: str) -> Any:
        import optuna

        seed = None if self.sweep_seed is None else _seed_for(self.sweep_seed, number, name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return optuna.samplers.TPESampler(seed=seed)

    def trials(self, states: tuple[Any, ...] | None = None) -> list[Any]:
        """The study's trials (frozen), by number."""
        with db_errors(self.url, "reading the trials"):
            return sorted(self.study.get_trials(deepcopy=False, states=states), key=lambda t: t.number)

    # ------------------------------------------------------------------ claiming work
    def claim(self, held: contextlib.ExitStack, trials_wanted: int, mine: set[int]
              ) -> tuple[TrialSpec, str] | None:
        """The next trial for this worker, its folder held in ``held``: a RUNNING trial nobody runs
        (stopped, or its worker died), else a new one while the study has fewer than
        ``trials_wanted``; (spec, "resumed" | "new"), or None when there is no work. Trials whose
        values make no valid model are told failed, with the reason, and passed over."""
        from filelock import FileLock, Timeout
        from optuna.trial import TrialState

        self.out.mkdir(parents=True, exist_ok=True)
        try:
            lock = FileLock(str(self.out / CLAIM_LOCK), timeout=120)
            self.waiting = {}
            with lock:
                for t in self.trials((TrialState.RUNNING,)):
                    if t.number in mine:
                        continue
                    got = self._take(held, t)
                    if got is not None:
                        return got, "resumed"
                while len(self.trials()) < trials_wanted:
                    with db_errors(self.url, "asking for a new trial"), warnings.catch_warnings():
                        warnings.simplefilter("ignore")  # "heartbeat is meant for optimize": we beat
                        trial = self.study.ask()
                    spec = self._complete(trial)
                    if spec is None:
                        continue
                    held.enter_context(hold_folder(spec.root, "sweep", flag="--out"))
                    return spec, "new"
        except Timeout:
            raise StorageError(f"{self.out / CLAIM_LOCK}: held by another sweep worker for over 120 s; "
                               f"is one stuck?") from None
        return None

    def _take(self, held: contextlib.ExitStack, frozen: Any) -> TrialSpec | None:
        root = trial_root(self.out, frozen.number)
        try:
            inner = contextlib.ExitStack()
            inner.enter_context(hold_folder(root, "sweep", flag="--out"))
        except FolderInUse:
            return None  # another worker runs it
        holder = folder_holder(root / "models")
        if holder:  # a dead worker's trial process still saving: later
            self.waiting[frozen.number] = holder
            inner.close()
            return None
        if (root / PRUNED_FILE).is_file():  # pruned, then its worker died before telling the study:
            with db_errors(self.url, f"recording trial {frozen.number}"):  # as decided, not asked again
                self.study.tell(frozen.number, state=self._state("PRUNED"))
            print(f"trial {frozen.number}: pruned (its worker stopped before recording it)", file=sys.stderr,
                  flush=True)
            inner.close()
            return None
        import optuna

        with db_errors(self.url, f"reading trial {frozen.number}"):
            current = self.study._storage.get_trial(frozen._trial_id)
            if current.state != optuna.trial.TrialState.RUNNING:
                inner.close()
                return None
            trial = optuna.trial.Trial(self.study, frozen._trial_id)
        spec = self._complete(trial)
        if spec is None:
            inner.close()
            return None
        held.enter_context(inner)
        return spec

    def _complete(self, trial: Any) -> TrialSpec | None:
        """Draw the trial's missing values (all of a new one); None when they make no valid run (the
        trial is then told failed, with the reason)."""
        with db_errors(self.url, f"sampling trial {trial.number}"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for p in self.space.params:
                if self.sweep_seed is not None:
                    self.study.sampler = self._sampler(trial.number, p.name)
                if p.kind == "categorical":
                    trial.suggest_categorical(p.name, list(p.choices))
                elif p.kind == "int":
                    trial.suggest_int(p.name, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
                else:
                    trial.suggest_float(p.name, float(p.low), float(p.high), step=p.step, log=p.log)
            params = {p.name: trial.params[p.name] for p in self.space.params}
        why = invalid(self.base, params)
        if why is not None:
            with db_errors(self.url, f"skipping trial {trial.number}"):
                trial.set_user_attr(SKIPPED_KEY, why)
                self.study.tell(trial.number, state=self._state("FAIL"))
            print(f"trial {trial.number}: skipped, its values make no valid model: {why} "
                  f"({params_text(params)})", file=sys.stderr, flush=True)
            return None
        return TrialSpec(trial.number, params, trial_root(self.out, trial.number))

    @staticmethod
    def _state(name: str) -> Any:
        from optuna.trial import TrialState

        return TrialState[name]

    def trial_file(self, spec: TrialSpec) -> Path:
        """Write ``trial.json`` for the trial's process (storage URL: in its environment)."""
        path = spec.root / TRIAL_FILE
        atomic_write_json(path, {"study": self.study_name, "number": spec.number, "objective": self.objective,
                                 "pruner": self.pruner, "pruner_startup_trials": self.startup_trials,
                                 "params": spec.params})
        return path

    def heartbeat(self, number: int) -> None:
        """Record that this worker is alive and runs trial ``number``."""
        with db_errors(self.url, "recording a heartbeat"):
            tid = self.storage.get_trial_id_from_study_id_trial_number(self.study._study_id, number)
            self.storage.record_heartbeat(tid)

    # ------------------------------------------------------------------ results
    def finish(self, spec: TrialSpec, seconds: float) -> str:
        """Tell the study how the trial's run ended (it exited 0): complete with its objective, or
        pruned; the state's name."""
        from ..experiment.walkforward import run_state

        pruned = spec.root / PRUNED_FILE
        with db_errors(self.url, f"recording trial {spec.number}"):
            tid = self.storage.get_trial_id_from_study_id_trial_number(self.study._study_id, spec.number)
            self.storage.set_trial_user_attr(tid, "seconds", round(seconds, 1))
            self.storage.set_trial_user_attr(tid, "run", str(spec.root))
            if pruned.is_file():
                self.study.tell(spec.number, state=self._state("PRUNED"))
                return "PRUNED"
            state = run_state(spec)
            if state.status != "done":
                raise UserError(f"{spec.name}: its run ended without a report ({state.detail}); run the "
                                f"sweep again to continue it")
            value, epochs = objective_of(state.report.get("history") or [], self.objective)
            self.storage.set_trial_user_attr(tid, "epochs", epochs)
            if not math.isfinite(value):
                self.storage.set_trial_user_attr(tid, FAILED_KEY, f"{self.objective} is {value}")
                self.study.tell(spec.number, state=self._state("FAIL"))
                return "FAIL"
            self.study.tell(spec.number, value)
            return "COMPLETE"

    def fail(self, spec: TrialSpec, why: str) -> None:
        """Tell the study the trial failed (its run ended with an error), with the reason."""
        with db_errors(self.url, f"recording trial {spec.number}"):
            tid = self.storage.get_trial_id_from_study_id_trial_number(self.study._study_id, spec.number)
            self.storage.set_trial_user_attr(tid, FAILED_KEY, why)
            self.study.tell(spec.number, state=self._state("FAIL"))


def objective_of(history: list[dict[str, Any]], objective: str) -> tuple[float, int]:
    """(the objective of a finished run, its epochs), from its report's epoch history: the
    validation value of the epoch whose model the run tested (its best validation loss, the first
    such epoch: as the trainer keeps best.pth); NaN when no epoch had a finite loss."""
    best, best_val = None, float("inf")
    for e in history:  # the trainer's rule: strictly lower than the best so far
        if e["val_loss"] < best_val:
            best, best_val = e, e["val_loss"]
    return (float(best[objective]) if best is not None else float("nan")), len(history)


def params_text(params: dict[str, Any]) -> str:
    """``lr=0.001, d_model=32``: a trial's values for a message."""
    return ", ".join(f"{k}={_fmt(v)}" for k, v in params.items())


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)

