"""Several processes through PyTorch's own launcher: detection, the process group, and the few
collectives the trainer needs. In one process every function here is a no-op that costs nothing.

Launch (one machine, two processes; gloo on CPU, nccl on CUDA, chosen automatically)::

    torchrun --standalone --nproc_per_node=2 train_indicator_transformer.py --epochs 20
    python -m torch.distributed.run --standalone --nproc_per_node=2 train_indicator_transformer.py

torchrun is recognised from its environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``, ``MASTER_PORT``). Rank 0 prepares the cache, writes every file and runs the final
evaluation; the other ranks wait for it where needed and write nothing.

A stop is agreed, never assumed: torchrun forwards SIGINT/SIGTERM/SIGHUP to each rank at slightly
different instants (and SIGKILLs 30 s later). The signal handler of each rank only records the
request; after every optimizer step (and every validation batch) all ranks all-reduce the MAX of
their recorded signal numbers (:func:`agree_stop`), so they stop after the same global step and
exit with the same code. Never inside the signal handler: a collective there could deadlock.

A rank that dies (kill -9, out of memory) closes its connections: the others' next collective
fails at once (gloo), or after the process-group timeout when a whole machine vanishes
(``INDICATOR_TRANSFORMER_DIST_TIMEOUT`` seconds, default 600). Such a failure is a
:class:`PeerLost`, which ends the rank with exit code 1 without writing anything; torchrun then
tears the group down and, with ``--max-restarts``, starts it again (the training resumes by itself).

While rank 0 works alone (preparation, the final evaluation and report) the others poll the
launcher's store. They see at once when rank 0 exits (on the same machine: its process is gone),
and a stop request only they received is posted there for rank 0 (:func:`relay_stops`), so a
signal to any one rank stops the job promptly in every phase. When rank 0 fails with a usage or
data error, the others exit with its code (2), not 1.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

# torch is imported inside the functions that use it, which all run once training has started:
# the commands import this module at start-up, and a usage error is reported before the 1-2 s
# import of torch instead of after it.

TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
TIMEOUT_ENV = "INDICATOR_TRANSFORMER_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 600.0
WAIT_AFTER_STOP_S = 20.0   # a rank waiting for rank 0 gives up this long after its own stop request


class PeerLost(RuntimeError):
    """Another rank (or the launcher's store) went away in the middle of a collective."""

    exit_code = 1


class MainFailed(PeerLost):
    """Rank 0 failed while the others waited for it; they exit with its exit code."""

    def __init__(self, name: str, code: int) -> None:
        super().__init__(f"rank 0 failed during {name} with exit code {code} (its error is above)")
        self.exit_code = code


@dataclass(frozen=True)
class Dist:
    """This process's place in the job. ``Dist()`` is the single-process default."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        """Whether a process group is running (world size above 1 under torchrun)."""
        return self.backend is not None

    @property
    def is_main(self) -> bool:
        """Rank 0: the only writer."""
        return self.rank == 0


_current = Dist()
_store: Any = None
_used = False                     # a process group ran in this process (see used())
_main_proc: tuple[str, int] | None = None  # rank 0's (host, pid), read once by the other ranks
STOP_KEY = "indicator_transformer/stop_request"  # a stop another rank received, for rank 0


def under_torchrun() -> bool:
    """Whether this process was started by torchrun (its whole environment is present)."""
    return all(k in os.environ for k in TORCHRUN_ENV)


def restart_count() -> int:
    """How many times torchrun restarted this job (``TORCHELASTIC_RESTART_COUNT``; 0 otherwise)."""
    try:
        return max(int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")), 0)
    except ValueError:
        return 0


def current() -> Dist:
    """The process's :class:`Dist` (single process until :func:`init` started a group)."""
    return _current


def timeout_s() -> float:
    """Seconds a collective may wait for the other ranks."""
    try:
        value = float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S))
    except ValueError:
        value = DEFAULT_TIMEOUT_S
    return value if value > 0 else DEFAULT_TIMEOUT_S


def init(device: str = "auto") -> Dist:
    """Join torchrun's job: gloo on CPU, nccl when this rank trains on CUDA. Outside torchrun, or
    with a world of one, nothing is started and ``Dist()`` is returned."""
    global _current, _store, _used
    if _current.enabled or not under_torchrun():
        return _current
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ["LOCAL_RANK"])
    _stop_when_launcher_dies()
    if world <= 1:
        _current = Dist(rank, world, local)
        return _current
    import torch
    import torch.distributed as dist

    use_cuda = device != "cpu" and torch.cuda.is_available()
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(local)
    timeout = timedelta(seconds=timeout_s())
    # The same store torchrun's env:// would make (the agent's, or one hosted by rank 0), kept so
    # that long waits for rank 0 can poll it instead of blocking inside a collective.
    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "False") == "True"
    _store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world,
                           is_master=rank == 0 and not agent_store, timeout=timeout)
    # The launcher's store outlives a restart (its keys too): each attempt gets its own prefix, or
    # a restarted rank would connect to the addresses the dead attempt's ranks published.
    _store = dist.PrefixStore(f"indicator_transformer/attempt_{restart_count()}", _store)
    dist.init_process_group(backend, store=dist.PrefixStore("default_pg", _store), rank=rank,
                            world_size=world, timeout=timeout)
    _store.set(f"indicator_transformer/proc/{rank}", f"{socket.gethostname()} {os.getpid()}")
    _current = Dist(rank, world, local, backend)
    _used = True
    return _current


def used() -> bool:
    """Whether a process group ran in this process: then the command ends with ``os._exit``
    (see :func:`..cli.common.run_command`), skipping the interpreter's teardown of the process
    group's threads, which rarely aborted a finished rank (``terminate called without an active
    exception``, SIGABRT) and made torchrun report or even restart a completed job."""
    return _used


def _stop_when_launcher_dies() -> None:
    """Linux: have the kernel send this rank SIGTERM the moment the launcher dies (kill -9 of
    torchrun, or a signal torchrun does not handle, such as SIGUSR1 without --signals-to-handle).
    Otherwise the ranks trained on unsupervised, re-parented to PID 1, beside the job a scheduler
    started again. SIGTERM is a stop request: the ranks agree, save one interrupted checkpoint and
    exit 143. Elsewhere a no-op."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        launcher = os.getppid()
        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1  # noqa: N806 - the kernel's name
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != launcher:  # it died before the call (torchrun may be PID 1: no test on 1)
            os.kill(os.getpid(), signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def destroy(*, process_exits: bool = False) -> None:
    """Leave the process group (idempotent; never raises: it runs on the way out). With
    ``process_exits`` the group is only forgotten: the process ends with ``os._exit`` next, and the
    group's own teardown is the one step that could abort it."""
    global _current, _store, _main_proc
    _main_proc = None
    if _current.enabled and not process_exits:
        import torch.distributed as dist

        with contextlib.suppress(Exception):
            dist.destroy_process_group()
    _current = Dist(_current.rank, _current.world_size, _current.local_rank)
    _store = None


@contextlib.contextmanager
def collective() -> Any:
    """Turn a failed collective (a peer gone, a timeout) into :class:`PeerLost`."""
    try:
        yield
    except PeerLost:
        raise
    except (RuntimeError, OSError) as e:  # DistBackendError / DistNetworkError subclass RuntimeError
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PeerLost(f"lost contact with the other ranks ({first[:200]})") from None


def _device() -> torch.device:
    import torch

    return torch.device("cuda", torch.cuda.current_device()) if _current.backend == "nccl" \
        else torch.device("cpu")


def barrier() -> None:
    """All ranks wait for each other (no-op in one process)."""
    if _current.enabled:
        import torch.distributed as dist

        with collective():
            dist.barrier()


def agree_stop(signum: int) -> int:
    """All ranks agree on a stop: the MAX of each rank's recorded signal number (0 = none), so a
    request seen by any rank stops every rank, and all exit with the same code. One rank: as is."""
    if not _current.enabled:
        return signum
    import torch
    import torch.distributed as dist

    flag = torch.tensor([signum], dtype=torch.int32, device=_device())
    with collective():
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item())


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over ranks (a copy; ``t`` itself in one process)."""
    if not _current.enabled:
        return t
    import torch.distributed as dist

    out = t.detach().to(_device()).clone()
    with collective():
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out.to(t.device)


def all_gather_rows(t: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's ``t`` (1-D or more; the first dimension may differ between ranks), in rank
    order. Pads to the longest for the collective and cuts the padding off again."""
    if not _current.enabled:
        return [t]
    import torch
    import torch.distributed as dist

    dev = _device()
    n = torch.tensor([t.shape[0]], dtype=torch.int64, device=dev)
    sizes = [torch.zeros_like(n) for _ in range(_current.world_size)]
    with collective():
        dist.all_gather(sizes, n)
    longest = max(int(s.item()) for s in sizes)
    padded = torch.zeros((longest, *t.shape[1:]), dtype=t.dtype, device=dev)
    padded[:t.shape[0]] = t.to(dev)
    out = [torch.empty_like(padded) for _ in range(_current.world_size)]
    with collective():
        dist.all_gather(out, padded)
    return [o[:int(s.item())].cpu() for o, s in zip(out, sizes, strict=True)]


def gather_states(state: dict[str, Any]) -> list[dict[str, Any]]:
    """Every rank's ``state`` (tensors, numbers, strings, lists, dicts), in rank order, on every
    rank. Sent as ``torch.save`` bytes and read back with ``weights_only=True``: what another rank
    sends can never execute code here."""
    if not _current.enabled:
        return [state]
    import torch

    buf = io.BytesIO()
    torch.save(state, buf)
    mine = torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)
    return [torch.load(io.BytesIO(b.numpy().tobytes()), weights_only=True) for b in all_gather_rows(mine)]


def broadcast_text(text: str | None) -> str | None:
    """Rank 0's ``text`` (or None) on every rank."""
    if not _current.enabled:
        return text
    import torch

    data = b"\x00" if text is None else b"\x01" + text.encode("utf-8")
    got = all_gather_rows(torch.frombuffer(bytearray(data), dtype=torch.uint8))[0].numpy().tobytes()
    return None if got[:1] == b"\x00" else got[1:].decode("utf-8")


def wait_for_main(name: str, stop_signal: Callable[[], int], poll_s: float = 0.2) -> None:
    """The other ranks wait, for as long as it takes, until rank 0 calls :func:`main_done` with
    ``name`` (preparation, the final evaluation). They poll the launcher's store instead of
    blocking in a collective, so no timeout cuts a long preparation short and signals are seen
    while waiting. ``stop_signal()`` is this rank's pending stop (0 for none): it is posted for
    rank 0 (see :func:`relay_stops`), and from then on this rank waits at most
    ``WAIT_AFTER_STOP_S`` more. Rank 0 exiting on this machine is noticed at the next poll."""
    if not _current.enabled or _current.is_main:
        return
    key = f"indicator_transformer/{name}"
    stop_deadline: float | None = None
    while True:
        with collective():
            if _store.check([key]):
                value = _store.get(key).decode("utf-8", "replace")
                if value != "ok":
                    code = value.rpartition(" ")[2]
                    raise MainFailed(name, int(code) if code.isdigit() else 1)
                return
        gone = _main_exited()
        if gone:
            raise PeerLost(f"rank 0 exited during {name} ({gone})")
        if stop_deadline is None:
            signum = stop_signal()
            if signum:
                stop_deadline = time.monotonic() + WAIT_AFTER_STOP_S
                with collective():
                    _store.set(STOP_KEY, str(signum))
        if stop_deadline is not None and time.monotonic() > stop_deadline:
            raise PeerLost(f"rank 0 did not finish {name} within {WAIT_AFTER_STOP_S:.0f}s of the stop "
                           f"request")
        time.sleep(poll_s)


def _main_exited() -> str | None:
    """Why rank 0 has provably exited (it runs on this machine and its process is gone or a
    zombie), or None: alive, on another machine, or unknown (the collectives will tell)."""
    global _main_proc
    if _main_proc is None:
        key = "indicator_transformer/proc/0"
        with collective():
            if not _store.check([key]):
                return None
            host, _, pid = _store.get(key).decode("utf-8", "replace").partition(" ")
        _main_proc = (host, int(pid) if pid.isdigit() else 0)
    host, pid = _main_proc
    if host != socket.gethostname() or pid <= 0:
        return None
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            state = f.read().rpartition(")")[2].split()[:1]
    except FileNotFoundError:
        return f"process {pid} is gone"
    except OSError:
        return None
    return f"process {pid} has exited" if state and state[0] in ("Z", "X") else None


def main_done(name: str, code: int = 0) -> None:
    """Rank 0 tells the waiting ranks that ``name`` is finished (``code`` 0), or failed with the
    exit code ``code`` (see :func:`wait_for_main`)."""
    if _current.enabled and _current.is_main:
        with collective():
            _store.set(f"indicator_transformer/{name}", "ok" if code == 0 else f"failed {code}")


@contextlib.contextmanager
def relay_stops(request: Callable[[int], None], poll_s: float = 0.2) -> Any:
    """Rank 0, while the other ranks wait for it: a stop request that only another rank received
    (posted by its :func:`wait_for_main`) is passed to ``request(signum)`` within ``poll_s``, so
    the job stops as promptly as when every rank got the signal. A background thread polls the
    launcher's store; nothing else uses the store meanwhile. One process, other ranks: no-op."""
    if not _current.enabled or not _current.is_main:
        yield
        return
    done = threading.Event()

    def poll() -> None:
        while not done.wait(poll_s):
            try:
                if _store.check([STOP_KEY]):
                    value = _store.get(STOP_KEY).decode("ascii", "replace")
                    request(int(value) if value.isdigit() else int(signal.SIGTERM))
                    return
            except Exception:  # noqa: BLE001 - the store gone: the next collective reports it
                return

    thread = threading.Thread(target=poll, name="indicator-transformer-stop-relay", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


PAUSE_RANKS_ENV = "INDICATOR_TRANSFORMER_PAUSE_RANKS"


def pauses_here() -> bool:
    """Whether this rank honours the test pause points of :mod:`..faults`. Tests set
    ``INDICATOR_TRANSFORMER_PAUSE_RANKS`` to ``"1"`` (only rank 1) or ``"1@0"`` (only rank 1, and
    only before torchrun's first restart) to put one rank at a chosen step while the others run
    on; unset, every rank pauses."""
    spec = os.environ.get(PAUSE_RANKS_ENV, "").strip()
    if not spec:
        return True
    for part in filter(None, (p.strip() for p in spec.split(","))):
        rank, _, attempt = part.partition("@")
        if rank.isdigit() and int(rank) == _current.rank \
                and (not attempt.isdigit() or int(attempt) == restart_count()):
            return True
    return False


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s global RNGs (dropout): rank 0 keeps ``seed``, so one process
    is exactly as before; the others get distinct, deterministic seeds below 2**63."""
    return seed if rank == 0 else (seed * 1_000_003 + 7_919 * rank) % (2**63 - 1)
