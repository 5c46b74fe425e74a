"""The shared harness of the fault-injection campaign: real subprocesses in their own process group
and temporary folder, uninterrupted reference runs computed once per configuration, and the checks
every trial ends with (exit code, last line, every file under a final name, the process table,
bit-exact resume).

Nothing here is a mock: children are the installed commands (``train_indicator_transformer.py``,
``resume_training.py``, ``validate_cache.py``, torchrun), signals are real, files are real.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

REPO_ROOT = Path(__file__).resolve().parents[2]
TESTS = REPO_ROOT / "tests"
for _p in (str(TESTS), str(REPO_ROOT)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from trainproc import Child, assert_same_training_state  # noqa: E402

TRAIN = "train_indicator_transformer.py"
RESUME = "resume_training.py"
VALIDATE = "validate_cache.py"
TMP_SUFFIX = ".tmp"  # atomic.py's temporary files: ".<final>.<pid>.<random>.tmp"

# The single-process configuration: 3 symbols x 600 bars, window 8 -> 18 steps per epoch, 4
# validation and 1 test batch, about a second of training: trials stay fast.
EPOCHS = 2
STEPS_PER_EPOCH = 18
VAL_BATCHES = 1   # evaluation batches hold 1024 windows (trainer.EVAL_BATCH): one batch each
TEST_BATCHES = 1
BASE = ["--symbols", "3", "--bars", "600", "--epochs", str(EPOCHS), "--window", "8", "--batch-size", "64",
        "--d-model", "8", "--heads", "2", "--layers", "1", "--no-progress", "--no-plots"]
EXIT_BY_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGHUP: 129, signal.SIGUSR1: 138}


class TrialFailure(Exception):
    """A check failed in a way that makes the rest of the trial meaningless."""


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment of every child: unbuffered, the repository importable, one thread per process.

    One BLAS/OpenMP thread: the machine is shared and small, and oversubscribed threads made one
    epoch take 8 s instead of 0.3 s. The reference runs use the same environment, so bit-exact
    comparisons hold."""
    env = dict(os.environ)
    env.pop("PYTHONWARNINGS", None)
    env.pop("INDICATOR_TRANSFORMER_PAUSE_AT", None)
    env.pop("INDICATOR_TRANSFORMER_PAUSE_RANKS", None)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = "1"
    env.update(extra or {})
    return env


def _own_group_default_sigint() -> None:
    """preexec_fn: a process group of its own (the trial can count every descendant and signal
    them all, as a terminal does), and SIGINT back to its default (a background shell ignores it)."""
    os.setpgid(0, 0)
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group ``pgid``."""
    out = []
    for p in psutil.process_iter(["status"]):
        try:
            if os.getpgid(p.pid) == pgid and p.info["status"] != psutil.STATUS_ZOMBIE:
                out.append(p.pid)
        except (ProcessLookupError, psutil.Error, OSError):
            continue
    return out


def alive(pids: Iterable[int]) -> list[int]:
    """The pids among ``pids`` that still exist and are not zombies."""
    out = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.Error:
            pass
    return out


@dataclass
class Proc:
    """A started command: its Child (stderr drained by a thread), command line and process group."""

    child: Child
    cmd: list[str]
    stdout_path: Path
    descendants: set[int] = field(default_factory=set)

    @property
    def pid(self) -> int:
        return self.child.proc.pid

    def remember_family(self) -> None:
        """Record every descendant now (a torchrun rank may leave the group, never the family)."""
        with contextlib.suppress(psutil.Error):
            self.descendants.update(p.pid for p in psutil.Process(self.pid).children(recursive=True))

    def finish(self, timeout: float) -> int:
        try:
            return self.child.finish(timeout=timeout)
        except subprocess.TimeoutExpired as e:
            raise TrialFailure(f"no exit within {timeout:.0f}s of {shlex.join(self.cmd)}; last lines:\n"
                               + "\n".join(self.child.lines[-15:])) from e

    @property
    def stderr(self) -> str:
        return self.child.stderr

    @property
    def stdout(self) -> str:
        try:
            return self.stdout_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def last_line(self) -> str:
        lines = [line for line in self.child.lines if line.strip()]
        return lines[-1] if lines else ""


@dataclass
class Outcome:
    """What one trial did and found."""

    kind: str
    seed: int
    injected: str = "-"
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    seconds: float = 0.0
    folder: str = ""

    @property
    def ok(self) -> bool:
        return not self.failures


class Trial:
    """One trial: its seeded RNG, its own temporary folder, its commands and its findings."""

    def __init__(self, campaign: Campaign, kind: str, seed: int) -> None:
        self.campaign = campaign
        self.kind = kind
        self.seed = seed
        self.rng = random.Random(f"{kind}:{seed}")
        self.root = campaign.workdir / f"{kind}-{seed}"
        if self.root.exists():
            import shutil

            shutil.rmtree(self.root)
        self.root.mkdir(parents=True)
        self.out = Outcome(kind, seed, folder=str(self.root))
        self.procs: list[Proc] = []
        # Files a trial damaged on purpose (by path, and by content: the tool may move them aside):
        # check_files does not hold them to the invariants, the trial checks them its own way.
        self.damaged = _DamagedFiles()
        self._n = 0

    # ------------------------------------------------------------------ bookkeeping
    def inject(self, text: str) -> None:
        """Say what this trial injects (shown on its line)."""
        self.out.injected = text

    def check(self, cond: bool, message: str) -> bool:
        """Record a failed invariant (the trial goes on, to report every failure it finds)."""
        if not cond:
            self.out.failures.append(message)
        return cond

    def note(self, message: str) -> None:
        self.out.notes.append(message)

    # ------------------------------------------------------------------ processes
    def start(self, args: list[str], *, env: dict[str, str] | None = None, script: str | None = None,
              cwd: Path | None = None, prefix: list[str] | None = None) -> Proc:
        """Start ``python <script> args`` (or ``python args`` when script is None) in the trial folder,
        in its own process group with SIGINT at its default. ``prefix`` is a command that ends by
        exec-ing the rest (``unshare ... sh -c '... exec "$@"'``), so the PID stays Python's."""
        cmd = [*(prefix or []), sys.executable, *([str(REPO_ROOT / script)] if script else []), *args]
        self._n += 1
        stdout_path = self.root / f".stdout.{self._n}.log"
        cwd = cwd or self.root
        shown_env = " ".join(f"{k}={shlex.quote(v)}" for k, v in (env or {}).items())
        self.out.commands.append(f"(cd {shlex.quote(str(cwd))} && {shown_env + ' ' if shown_env else ''}"
                                 f"{shlex.join(cmd)})")
        with open(stdout_path, "wb") as out:
            popen = subprocess.Popen(cmd, cwd=cwd, env=child_env(env), stdout=out, stderr=subprocess.PIPE,
                                     text=True, errors="replace", preexec_fn=_own_group_default_sigint)
        proc = Proc(Child(popen), cmd, stdout_path)
        self.procs.append(proc)
        return proc

    def run(self, args: list[str], *, script: str | None = TRAIN, env: dict[str, str] | None = None,
            timeout: float = 300, cwd: Path | None = None) -> Proc:
        """Start a command and wait for its exit."""
        proc = self.start(args, env=env, script=script, cwd=cwd)
        proc.finish(timeout)
        return proc

    def wait_paused(self, proc: Proc, count: int = 1, timeout: float = 180) -> None:
        """Until ``count`` PAUSED lines were printed (a pause point was reached)."""
        deadline = time.monotonic() + timeout
        while True:
            if sum("PAUSED" in line for line in list(proc.child.lines)) >= count:
                return
            if proc.child.proc.poll() is not None:
                time.sleep(0.2)  # the reader may still be collecting the last lines
                if sum("PAUSED" in line for line in list(proc.child.lines)) >= count:
                    return
                raise TrialFailure(f"harness: the pause point was never reached (exit "
                                   f"{proc.child.proc.returncode}); last lines:\n"
                                   + "\n".join(proc.child.lines[-10:]))
            if time.monotonic() > deadline:
                raise TrialFailure(f"harness: no PAUSED line within {timeout:.0f}s")
            time.sleep(0.02)

    def signal(self, proc: Proc, signum: int, *, group: bool = False) -> None:
        """Send a real signal to the process (or to its whole process group, as a terminal does)."""
        proc.remember_family()
        with contextlib.suppress(ProcessLookupError):
            if group:
                os.killpg(proc.pid, signum)
            else:
                os.kill(proc.pid, signum)

    def check_no_process_left(self, proc: Proc, timeout: float = 20) -> None:
        """No process of the command's group or family is alive (DataLoader workers, ranks...).
        A killed parent's workers notice it within seconds; ``timeout`` bounds that."""
        deadline = time.monotonic() + timeout
        left: list[int] = []
        while time.monotonic() < deadline:
            left = sorted(set(group_members(proc.pid)) | set(alive(proc.descendants)))
            if not left:
                return
            time.sleep(0.1)
        names = []
        for pid in left:
            with contextlib.suppress(psutil.Error):
                names.append(f"{pid} {' '.join(psutil.Process(pid).cmdline())[:100]}")
        self.check(False, f"processes left {timeout:.0f}s after exit: {names}")

    def kill_everything(self) -> None:
        """End every process this trial started (only those: by their own process groups)."""
        for proc in self.procs:
            for pid in set(group_members(proc.pid)) | set(alive(proc.descendants)):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            if proc.child.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.child.proc.kill()
            with contextlib.suppress(Exception):
                proc.child.proc.wait(timeout=10)

    # ------------------------------------------------------------------ file checks
    def check_files(self, *, models: Path | None = None, cache: Path | None = None,
                    temp_allowed: bool = False) -> None:
        """Every file under a final name is complete and verifies: each checkpoint loads with
        ``torch.load(weights_only=True)`` and passes the tool's own verification (digest and
        fields), each JSON report parses and its digest holds, and the cache's manifest and data
        files agree (checked in-process here; ``validate_cache.py`` is run by the trials)."""
        models = models or self.root / "models"
        cache = cache or self.root / "cache"
        for path in sorted(models.rglob("*.pth")) if models.is_dir() else []:
            if path.is_symlink() or path.name.startswith(".") or path in self.damaged:
                continue
            self.check(checkpoint_problem(path) is None, f"checkpoint {path}: {checkpoint_problem(path)}")
        for folder in (models, self.root / "runs"):
            for path in sorted(folder.rglob("*.json")) if folder.is_dir() else []:
                if path.name.startswith(".") or path.is_symlink() or path in self.damaged:
                    continue
                self.check(json_problem(path) is None, f"{path}: {json_problem(path)}")
        if not temp_allowed:
            for folder in (models, cache, *sorted((self.root / "runs").glob("*"))):
                temps = [p.name for p in folder.glob(f".*{TMP_SUFFIX}")] if folder.is_dir() else []
                self.check(not temps, f"temporary files left in {folder} after a graceful stop: {temps}")

    def validate_cache(self, cache: Path | None = None, *, fix: bool) -> Proc:
        """``validate_cache.py`` (``--dry-run`` unless ``fix``); the caller checks the result."""
        cache = cache or self.root / "cache"
        return self.run(["--cache-dir", str(cache), *([] if fix else ["--dry-run"])], script=VALIDATE,
                        timeout=120)

    def check_cache_consistent(self, cache: Path | None = None, *, command: bool = False) -> None:
        """The cache has nothing to repair: ``validate_cache.py --dry-run`` when ``command``, else the
        same validation in-process (a child interpreter costs seconds of CPU on a loaded machine;
        the kinds that damage the cache run the command)."""
        cache = cache or self.root / "cache"
        if not cache.exists():
            return
        if not command:
            from indicator_transformer.data.cache import FeatureCache

            report = FeatureCache(cache).validate_full(fix=False)
            self.check(report.consistent, f"the cache {cache} is not consistent: {report.problems} "
                                          f"{report.manifest_problem or ''}")
            return
        res = self.validate_cache(cache, fix=False)
        self.check(res.child.proc.returncode == 0 and "Cache is consistent" in res.stdout,
                   f"validate_cache.py --dry-run on {cache}: exit {res.child.proc.returncode}: "
                   f"{res.stdout[-600:]} {res.stderr[-300:]}")

    def list_checkpoints(self, models: Path | None = None) -> Proc:
        """``resume_training.py --list``."""
        models = models or self.root / "models"
        return self.run(["--list", "--models-dir", str(models)], script=RESUME, timeout=120)

    def check_no_traceback(self, proc: Proc, what: str) -> None:
        self.check("Traceback" not in proc.stderr, f"{what}: a traceback:\n{tail(proc.stderr, 25)}")

    # ------------------------------------------------------------------ the end of a line
    def check_equals_reference(self, config: tuple[str, ...], models: Path | None = None,
                               distributed: bool = False) -> None:
        """The final checkpoint, best.pth and the report's test figures equal the uninterrupted
        run's of the same configuration, bit for bit."""
        models = models or self.root / "models"
        ref = self.campaign.reference(config, distributed=distributed)
        final = f"checkpoint_epoch_{epochs_of(config)}.pth"
        if not (models / final).exists() and compare_models(ref / final, models / "best.pth") is None:
            self.check(False, f"{final} is missing after the resume (an uninterrupted run writes it); "
                              f"best.pth holds the same final training state bit for bit")
        else:
            problem = compare_models(ref / final, models / final)
            self.check(problem is None, f"final model differs from the uninterrupted run's: {problem}")
        problem = compare_models(ref / "best.pth", models / "best.pth", full=False)
        self.check(problem is None, f"best.pth differs from the uninterrupted run's: {problem}")
        a, b = report_figures(ref / "evaluation.json"), report_figures(models / "evaluation.json")
        self.check(a == b, f"evaluation.json test figures differ from the uninterrupted run's: {b} vs {a}")


class _DamagedFiles:
    """Paths and content digests of files damaged on purpose."""

    def __init__(self) -> None:
        self.paths: set[Path] = set()
        self.digests: set[str] = set()

    def add(self, path: Path) -> None:
        self.paths.add(path)
        with contextlib.suppress(OSError):
            self.digests.add(hashlib.sha256(path.read_bytes()).hexdigest())

    def __contains__(self, path: object) -> bool:
        if not isinstance(path, Path):
            return False
        try:
            return hashlib.sha256(path.read_bytes()).hexdigest() in self.digests
        except OSError:
            return False


def tail(text: str, n: int = 12) -> str:
    return "\n".join(text.splitlines()[-n:])


def epochs_of(config: Iterable[str]) -> int:
    args = list(config)
    return int(args[args.index("--epochs") + 1]) if "--epochs" in args else EPOCHS


def checkpoint_problem(path: Path) -> str | None:
    """None when ``path`` loads with torch.load(weights_only=True) and passes the tool's
    verification; otherwise what is wrong."""
    import torch

    try:
        torch.load(path, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure to load is the finding
        return f"torch.load(weights_only=True) failed: {type(e).__name__}: {str(e)[:200]}"
    from indicator_transformer.training import checkpoint as ckpt

    try:
        ckpt.load_checkpoint(path)
    except Exception as e:  # noqa: BLE001
        return f"does not verify: {type(e).__name__}: {str(e)[:300]}"
    return None


def json_problem(path: Path) -> str | None:
    """None when ``path`` is complete JSON (with a valid digest when it carries one)."""
    try:
        doc = json.loads(path.read_bytes())
    except (OSError, ValueError) as e:
        return f"not complete JSON: {e}"
    if isinstance(doc, dict) and "sha256" in doc and path.name != "manifest.json":
        from indicator_transformer.integrity import check_json

        try:
            check_json(doc)
        except Exception as e:  # noqa: BLE001
            return f"digest does not hold: {e}"
    return None


def compare_models(ref: Path, got: Path, full: bool = True) -> str | None:
    """None when the two checkpoints hold the same training state bit for bit."""
    import torch

    if not got.exists():
        return f"{got} does not exist"
    try:
        a, b = torch.load(ref, weights_only=True), torch.load(got, weights_only=True)
        if full:
            assert_same_training_state(a, b)
        else:
            assert a["model"].keys() == b["model"].keys()
            for k in a["model"]:
                assert torch.equal(a["model"][k], b["model"][k]), f"model tensor {k} differs"
            assert a["global_step"] == b["global_step"], \
                f"global step {b['global_step']} vs {a['global_step']}"
    except AssertionError as e:
        return f"{got}: {e}"
    except Exception as e:  # noqa: BLE001
        return f"{got}: {type(e).__name__}: {e}"
    return None


def report_figures(path: Path) -> object:
    """The model's test figures and what was evaluated, from evaluation.json (None if absent)."""
    try:
        doc = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return {"evaluated": doc.get("evaluated"), "test": doc.get("test"), "global_step": doc.get("global_step")}


def temp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob(f".*{TMP_SUFFIX}")) if folder.is_dir() else []


class Campaign:
    """Shared state of one campaign run: the work folder and the reference runs."""

    def __init__(self, workdir: Path, keep: bool = False) -> None:
        self.workdir = workdir
        self.keep = keep
        self._refs: dict[str, Path] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()
        self.reference_seconds = 0.0

    def reference(self, config: tuple[str, ...], *, distributed: bool = False) -> Path:
        """The models folder of an uninterrupted run of ``config`` (run once per campaign run)."""
        key = hashlib.sha256(repr((config, distributed)).encode()).hexdigest()[:12]
        with self._lock:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            if key in self._refs:
                return self._refs[key]
            root = self.workdir / f"reference-{'dist-' if distributed else ''}{key}"
            if root.exists():
                import shutil

                shutil.rmtree(root)
            root.mkdir(parents=True)
            t0 = time.monotonic()
            from reliability import distributed as dist  # the torchrun command lives there

            cmd = (dist.torchrun_cmd(root, TRAIN, list(config)) if distributed
                   else [sys.executable, str(REPO_ROOT / TRAIN), *config])
            res = subprocess.run(cmd, cwd=root, env=child_env(), capture_output=True, text=True,
                                 timeout=900, preexec_fn=_own_group_default_sigint)
            if res.returncode != 0 or not (root / "models" / "evaluation.json").exists():
                raise TrialFailure(f"harness: the reference run failed (exit {res.returncode}): "
                                   f"{shlex.join(cmd)}\n{tail(res.stderr, 30)}")
            with self._lock:
                self.reference_seconds += time.monotonic() - t0
            self._refs[key] = root / "models"
            return self._refs[key]


TrialFn = Callable[[Trial], None]
