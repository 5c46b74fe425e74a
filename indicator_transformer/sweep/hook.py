"""The trial's side of a sweep, inside its training process (``--sweep-trial trial.json``): after
each epoch the validation objective is reported to the study (step = the epoch) and, while epochs
remain, the study's pruner is asked whether to go on. A pruned run ends after that epoch, whose
checkpoint is already saved, and ``pruned.json`` in the trial folder says so to the sweep.

The same question is asked again when a run resumes after an epoch, so a stop that came between
an epoch's checkpoint and the pruner's answer changes nothing: a trial is pruned at the same epoch
as in a sweep that was never stopped. Reporting a step twice is ignored by Optuna.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_json
from ..errors import UserError
from .storage import db_errors, from_environment, open_storage

OBJECTIVES = {"val_loss": "minimize", "val_ic": "maximize"}
PRUNED_FILE = "pruned.json"


def make_pruner(kind: str, startup_trials: int) -> Any:
    """The study's pruner: median (Optuna's MedianPruner) or none."""
    import optuna

    if kind == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=startup_trials, n_warmup_steps=0)


def load_hook(path: Path) -> Callable[[list[dict[str, Any]], bool], bool]:
    """The Trainer's epoch hook of the trial described by ``path`` (written by the sweep)."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        study_name, number, objective = doc["study"], int(doc["number"]), doc["objective"]
        pruner_kind, startup = doc["pruner"], int(doc["pruner_startup_trials"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"--sweep-trial {path}: not a trial file written by the sweep ({e})") from None
    if objective not in OBJECTIVES:
        raise UserError(f"--sweep-trial {path}: objective {objective!r} is not one of "
                        f"{', '.join(OBJECTIVES)}")
    url = from_environment()
    state: dict[str, Any] = {}

    def trial() -> Any:  # connected at the first epoch's end: nothing to do before
        if "trial" not in state:
            import optuna

            storage = open_storage(url)
            with db_errors(url, "loading the study"):
                study = optuna.load_study(study_name=study_name, storage=storage,
                                          pruner=make_pruner(pruner_kind, startup))
                trial_id = storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
                state["trial"] = optuna.trial.Trial(study, trial_id)
        return state["trial"]

    def hook(history: list[dict[str, Any]], more: bool) -> bool:
        last = history[-1]
        value = float(last[objective])
        if not math.isfinite(value):
            return False  # a diverged epoch: the run's own checks end it, nothing to report
        t = trial()
        with db_errors(url, f"reporting epoch {last['epoch']} of trial {number}"), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "already reported" on a resume: the same value
            t.report(value, step=int(last["epoch"]))
            if not more or not t.should_prune():
                return False
        atomic_write_json(path.parent / PRUNED_FILE, {"epoch": int(last["epoch"]), "value": value})
        return True

    return hook
