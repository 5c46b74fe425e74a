"""Scale benchmarks (issue 8, "Large universes in bounded memory"), printed side by side in one run.

    python benchmarks/bench_scale.py                         # 100, 500, 2000 symbols x 5000 bars
    python benchmarks/bench_scale.py --quick                 # 50, 200, 500 symbols x 2000 bars
    python benchmarks/bench_scale.py --symbols 100,2000 --bars 5000 --steps 80 --workers 0,2
    python benchmarks/bench_scale.py --skip-scale            # sections 2 and 3 only

Three measurements, all on real subprocesses of ``train_indicator_transformer.py``:

1. Memory and throughput against the size of the universe. For each size the feature cache is
   prepared once (``--prepare-only``, one ``--cache-dir`` per size under ``--work-dir``, reused by
   later runs of this script), then a training with ``--epochs 1`` runs with the pause point
   ``INDICATOR_TRANSFORMER_PAUSE_AT=train_step:<steps>`` (see ``indicator_transformer/faults.py``):
   at ``PAUSED train_step <steps>`` it gets a real SIGTERM, saves its interrupted checkpoint and
   exits 143. Meanwhile the whole process tree (the trainer and its DataLoader workers) is sampled
   every ``--interval`` s: RSS, ``RssAnon`` (``/proc/<pid>/status``, what the issue's figures
   count; summed over processes it counts pages a worker shares copy-on-write with its parent
   once per process, so it is an upper bound), ``Pss_Anon`` (``/proc/<pid>/smaps_rollup``: each
   shared anonymous page split between its sharers, so the tree's sum is its true anonymous
   footprint) and USS (``psutil.memory_full_info``, every ``--uss-every`` samples: it reads the
   whole smaps). Peaks of the tree's sums are reported. samples/s is measured over a window that
   excludes start-up: from the first periodic progress line (``epoch 1/1: n/total step``, printed
   every 5 s when not on a terminal) to the ``PAUSED`` line, ``(steps - n) x batch / seconds``.
   The growth from the smallest to the largest size is printed per ``--num-workers`` and compared
   with the issue's target (under 150 MB per process tree).
2. One against two ranks on the default data (16 x 2500): one process, then
   ``python -m torch.distributed.run --standalone --nproc_per_node=2`` with the same command;
   samples/s of the job (global batch, the same window method). torchrun sets
   ``OMP_NUM_THREADS=1`` per rank when it is unset, so on 2 cores the one-process run has 2 threads
   and each rank 1 (``--threads`` fixes it for every child).
3. The per-step cost of the distributed stop check. The trainer has no switch to turn
   ``agree_stop`` off, so a small 2-rank torchrun script (written to the work folder) times
   ``--reduce-calls`` calls of the real ``distributed.agree_stop`` (a MAX all-reduce of one int32
   over gloo) and of a bare ``dist.all_reduce`` of the same tensor, and the cost is compared with
   the time per step of the 2-rank training of section 2: steps/s with the check (measured) and
   without it (the step time minus one call).

Every figure is printed with the load average at the time: the machine may be shared. Results go
to ``--json`` as well. The script never asserts: a failed run is printed as such.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

REPO_ROOT = Path(__file__).resolve().parent.parent
TRAIN_SCRIPT = REPO_ROOT / "train_indicator_transformer.py"
MB = 2 ** 20
TARGET_GROWTH_MB = 150.0
PROGRESS_RE = re.compile(r"epoch \d+/\d+: (\d+)/(\d+) step")
FINAL_RE = re.compile(r"epoch \d+/\d+: (\d+)/(\d+) step \(([\d.]+) step/s, ([\d.]+)s\)")
PAUSED_RE = re.compile(r"PAUSED train_step (\d+)")
PROBE = '''"""2-rank probe of the stop check, written and run by bench_scale.py under torchrun."""
import json, sys, time
import torch
import torch.distributed as dist
from indicator_transformer.training import distributed

d = distributed.init("cpu")
calls = int(sys.argv[1])


def timed(fn):
    for _ in range(min(calls, 100)):  # warm-up: connections, allocator
        fn()
    distributed.barrier()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls


flag = torch.zeros(1, dtype=torch.int32)
bare = timed(lambda: dist.all_reduce(flag, op=dist.ReduceOp.MAX))
agree = timed(lambda: distributed.agree_stop(0))
noop = timed(lambda: None)
if d.rank == 0:
    print("RESULT " + json.dumps({"agree_stop_s": agree, "all_reduce_s": bare, "loop_s": noop,
                                  "world_size": d.world_size, "backend": d.backend}), flush=True)
distributed.destroy()
'''


# --------------------------------------------------------------------------- small helpers
def load_average() -> str:
    """1/5/15-minute load averages, to tell a quiet machine from a busy one."""
    try:
        return "/".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def section(title: str) -> None:
    print(f"\n=== {title} === (load {load_average()})", flush=True)


def fmt(x: float | None, digits: int = 0) -> str:
    return "n/a" if x is None else f"{x:,.{digits}f}"


def _proc_kb(pid: int, file: str, key: str) -> int:
    """A ``kB`` field of /proc/<pid>/<file> (0 when the process is gone or has no such field)."""
    try:
        with open(f"/proc/{pid}/{file}") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _status_kb(pid: int, key: str) -> int:
    return _proc_kb(pid, "status", key)


def _rollup_kb(pid: int, key: str) -> int:
    return _proc_kb(pid, "smaps_rollup", key)


# --------------------------------------------------------------------------- memory sampling
@dataclass
class MemoryPeaks:
    """Peaks (bytes) of the process tree's summed figures, and of the main process alone."""

    rss: int = 0
    rss_anon: int = 0
    pss_anon: int = 0
    uss: int = 0
    main_rss_anon: int = 0
    max_processes: int = 0
    samples: int = 0


class TreeSampler(threading.Thread):
    """Samples the tree rooted at ``root`` every ``interval`` s until :meth:`stop`."""

    def __init__(self, root: int, interval: float, uss_every: int) -> None:
        super().__init__(daemon=True)
        self.root, self.interval, self.uss_every = root, interval, max(uss_every, 1)
        self.peaks = MemoryPeaks()
        self._halt = threading.Event()

    def stop(self) -> MemoryPeaks:
        self._halt.set()
        self.join(timeout=5)
        return self.peaks

    def _tree(self) -> list[psutil.Process]:
        try:
            root = psutil.Process(self.root)
            return [root, *root.children(recursive=True)]
        except psutil.Error:
            return []

    def sample(self) -> None:
        """One sample of every process in the tree; the peaks keep the largest sums."""
        procs, p = self._tree(), self.peaks
        if not procs:
            return
        rss = anon = pss_anon = uss = 0
        with_uss = p.samples % self.uss_every == 0
        for proc in procs:
            try:
                rss += proc.memory_info().rss
                if with_uss:
                    uss += proc.memory_full_info().uss
            except psutil.Error:
                continue
            anon += _status_kb(proc.pid, "RssAnon") * 1024
            pss_anon += _rollup_kb(proc.pid, "Pss_Anon") * 1024
        p.samples += 1
        p.rss, p.rss_anon, p.pss_anon = max(p.rss, rss), max(p.rss_anon, anon), max(p.pss_anon, pss_anon)
        p.uss = max(p.uss, uss)
        p.main_rss_anon = max(p.main_rss_anon, _status_kb(self.root, "RssAnon") * 1024)
        p.max_processes = max(p.max_processes, len(procs))

    def run(self) -> None:
        while not self._halt.is_set():
            self.sample()
            self._halt.wait(self.interval)


# --------------------------------------------------------------------------- one child
@dataclass
class ChildResult:
    """What one paused-and-stopped training reported."""

    label: str
    exit_code: int | None = None
    paused: bool = False
    seconds_to_pause: float | None = None
    samples_per_s: float | None = None
    window_steps: int = 0
    window_s: float | None = None
    steps_per_epoch: int | None = None
    memory: MemoryPeaks = field(default_factory=MemoryPeaks)
    load: str = ""
    threads: str = "default"
    rank_exit_codes: list[int] = field(default_factory=list)
    note: str = ""
    tail: list[str] = field(default_factory=list)


class LineReader(threading.Thread):
    """Reads the child's merged output, keeping each line with its arrival time. ``paused`` is set
    once ``expected`` PAUSED lines came (one per rank: a rank signalled before it reached the pause
    point would pause *after* the signal and wait there for another one)."""

    def __init__(self, stream: object, expected: int = 1) -> None:
        super().__init__(daemon=True)
        self.stream, self.expected, self.pauses = stream, expected, 0
        self.lines: list[tuple[float, str]] = []
        self.paused_at: float | None = None
        self.paused = threading.Event()

    def run(self) -> None:
        for raw in self.stream:  # type: ignore[attr-defined]
            now = time.perf_counter()
            line = raw.rstrip("\n")
            self.lines.append((now, line))
            found = len(PAUSED_RE.findall(line))  # two ranks' lines can arrive run together
            if found:
                self.pauses += found
                self.paused_at = self.paused_at or now  # the window ends at the first rank's pause
                if self.pauses >= self.expected:
                    self.paused.set()


def child_env(pause_step: int, threads: int | None) -> dict[str, str]:
    """The environment of a training child: the pause point, no rank filter, optional threads."""
    env = dict(os.environ)
    env["INDICATOR_TRANSFORMER_PAUSE_AT"] = f"train_step:{pause_step}"
    env.pop("INDICATOR_TRANSFORMER_PAUSE_RANKS", None)  # every rank pauses
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH", "")]))
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def window_rate(lines: list[tuple[float, str]], paused_at: float, pause_step: int,
                global_batch: int) -> tuple[float | None, int, float | None, int | None]:
    """samples/s from the first progress line to the pause: start-up and worker spawn excluded.
    Returns (samples/s, steps in the window, seconds, steps per epoch)."""
    for t, line in lines:
        m = PROGRESS_RE.search(line)
        if m and t < paused_at:
            n, total = int(m.group(1)), int(m.group(2))
            steps, seconds = pause_step - n, paused_at - t
            if steps > 0 and seconds > 0:
                return steps * global_batch / seconds, steps, seconds, total
    return None, 0, None, None


def final_line_rate(lines: list[tuple[float, str]], paused_at: float,
                    global_batch: int) -> tuple[float | None, int, float | None, int | None]:
    """Fallback when the pause came before the first periodic line (a fast run): the trainer's own
    closing line after the stop, ``n/total step (r step/s, Ts)``, timed from the epoch's start
    (loader start-up included; the pause itself lasts only until our SIGTERM, milliseconds)."""
    for t, line in lines:
        m = FINAL_RE.search(line)
        if m and t >= paused_at:
            n, total, seconds = int(m.group(1)), int(m.group(2)), float(m.group(4))
            return float(m.group(3)) * global_batch, n, seconds, total
    return None, 0, None, None


def run_paused_training(label: str, cmd: list[str], pause_step: int, global_batch: int,
                        args: argparse.Namespace, threads: int | None = None, ranks: int = 1) -> ChildResult:
    """Start ``cmd``, sample its tree, SIGTERM it at ``PAUSED train_step <pause_step>``.
    ``threads`` (else ``--threads``) sets OMP_NUM_THREADS in the child."""
    threads = threads or args.threads
    res = ChildResult(label, load=load_average(), threads=str(threads or "default"))
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=args.work_dir, env=child_env(pause_step, threads),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    sampler, reader = TreeSampler(proc.pid, args.interval, args.uss_every), LineReader(proc.stdout, ranks)
    sampler.start()
    reader.start()
    try:
        deadline = start + args.timeout
        while not reader.paused.wait(0.2) and proc.poll() is None and time.perf_counter() < deadline:
            pass
        res.paused = reader.paused.is_set()
        if res.paused:
            res.seconds_to_pause = reader.paused_at - start  # type: ignore[operator]
        proc.send_signal(signal.SIGTERM)  # torchrun forwards it to every rank
        res.exit_code = proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # our own child's session only
        res.exit_code = proc.wait()
        res.note = "did not exit within 60 s of SIGTERM; killed"
    finally:
        res.memory = sampler.stop()
        reader.join(timeout=5)
    if res.paused:
        res.samples_per_s, res.window_steps, res.window_s, res.steps_per_epoch = window_rate(
            reader.lines, reader.paused_at, pause_step, global_batch)  # type: ignore[arg-type]
        if res.samples_per_s is None:
            res.samples_per_s, res.window_steps, res.window_s, res.steps_per_epoch = final_line_rate(
                reader.lines, reader.paused_at, global_batch)  # type: ignore[arg-type]
            res.note = res.note or ("samples/s from the closing line, start-up included: raise --steps"
                                    if res.samples_per_s else "no progress line: raise --steps")
    else:
        res.note = res.note or f"never paused at step {pause_step} (exit {res.exit_code})"
    # under torchrun the launcher itself exits 1 on SIGTERM (its SignalException); the ranks say theirs
    res.rank_exit_codes = [int(m.group(1)) for _, line in reader.lines
                           if (m := re.search(r"stopped.*exit code (\d+)", line))]
    res.tail = [line for _, line in reader.lines[-8:]]
    log = Path(args.work_dir) / (re.sub(r"[^A-Za-z0-9]+", "_", label).strip("_") + ".log")
    log.write_text("".join(f"{t - start:9.3f} {line}\n" for t, line in reader.lines))
    return res


# --------------------------------------------------------------------------- section 1
def prepare_cache(symbols: int, bars: int, args: argparse.Namespace) -> tuple[Path, float, str]:
    """Prepare (or reuse) the cache of one size; (cache dir, seconds, last output line)."""
    cache = Path(args.work_dir) / f"cache_{symbols}x{bars}"
    cmd = [sys.executable, str(TRAIN_SCRIPT), "--symbols", str(symbols), "--bars", str(bars),
           "--cache-dir", str(cache), "--prepare-only", "--no-progress"]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=args.work_dir, env=child_env(0, args.threads), capture_output=True,
                         text=True, timeout=args.timeout)
    seconds = time.perf_counter() - t0
    lines = [ln for ln in (out.stdout + out.stderr).splitlines() if ln.startswith("Prepared")]
    summary = lines[-1] if lines else f"exit {out.returncode}: {(out.stderr or out.stdout)[-300:]}"
    return cache, seconds, summary


def train_cmd(symbols: int, bars: int, cache: Path, workers: int, out: Path,
              args: argparse.Namespace) -> list[str]:
    """The training command of one run, writing its models and runs into ``out`` (fresh)."""
    shutil.rmtree(out, ignore_errors=True)
    return [str(TRAIN_SCRIPT), "--symbols", str(symbols), "--bars", str(bars), "--cache-dir", str(cache),
            "--epochs", "1", "--num-workers", str(workers), "--batch-size", str(args.batch_size),
            "--models-dir", str(out / "models"), "--runs-dir", str(out / "runs")]


def scale_section(args: argparse.Namespace) -> dict[str, object]:
    section(f"1. memory and samples/s vs universe size ({args.bars} bars, pause at step {args.steps})")
    runs: list[ChildResult] = []
    preps: dict[int, dict[str, object]] = {}
    for n in args.symbols:
        cache, seconds, summary = prepare_cache(n, args.bars, args)
        preps[n] = {"seconds": seconds, "summary": summary, "load": load_average()}
        print(f"prepare {n} x {args.bars}: {seconds:.1f} s  {summary}  (load {preps[n]['load']})", flush=True)
        for w in args.workers:
            for ranks in args.scale_ranks:
                out = Path(args.work_dir) / f"run_{n}_{w}_{ranks}"
                launcher = [sys.executable] if ranks == 1 else [sys.executable, "-m", "torch.distributed.run",
                                                                "--standalone", f"--nproc_per_node={ranks}"]
                cmd = [*launcher, *train_cmd(n, args.bars, cache, w, out, args)]
                res = run_paused_training(_scale_label(n, w, ranks), cmd, args.steps, args.batch_size, args,
                                          ranks=ranks)
                runs.append(res)
                print_run(res)
    return {"prepare": preps, "runs": [asdict(r) for r in runs], "growth": growth(runs, args)}


def _scale_label(symbols: int, workers: int, ranks: int) -> str:
    return f"{symbols} sym, {workers} workers" + (f", {ranks} ranks" if ranks > 1 else "")


def print_run(res: ChildResult) -> None:
    m = res.memory
    print(f"  {res.label:<22} exit {res.exit_code}  samples/s {fmt(res.samples_per_s)} "
          f"({res.window_steps} steps in {fmt(res.window_s, 1)} s)  peak tree RSS {m.rss / MB:,.0f} MB  "
          f"RssAnon {m.rss_anon / MB:,.0f} MB  Pss_Anon {m.pss_anon / MB:,.0f} MB  USS {m.uss / MB:,.0f} MB  "
          f"main RssAnon {m.main_rss_anon / MB:,.0f} MB  procs {m.max_processes}  (load {res.load})"
          f"{'  NOTE: ' + res.note if res.note else ''}", flush=True)
    if res.note:
        for line in res.tail:
            print(f"      | {line}")


def growth(runs: list[ChildResult], args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Growth of the anonymous peaks from the smallest to the largest size, per worker count."""
    out: dict[str, dict[str, float]] = {}
    lo, hi = min(args.symbols), max(args.symbols)
    for w in args.workers:
        for ranks in args.scale_ranks:
            a = next((r for r in runs if r.label == _scale_label(lo, w, ranks)), None)
            b = next((r for r in runs if r.label == _scale_label(hi, w, ranks)), None)
            if a and b and a.paused and b.paused:
                key = str(w) if ranks == 1 else f"{w}, {ranks} ranks"
                out[key] = {k: (getattr(b.memory, k) - getattr(a.memory, k)) / MB
                            for k in ("rss", "rss_anon", "pss_anon", "uss", "main_rss_anon")}
    return out


# --------------------------------------------------------------------------- sections 2 and 3
def ranks_section(args: argparse.Namespace) -> dict[str, object]:
    section(f"2. one vs two ranks ({args.rank_symbols} x {args.rank_bars}, pause at step {args.rank_steps})")
    cache, seconds, summary = prepare_cache(args.rank_symbols, args.rank_bars, args)
    print(f"prepare {args.rank_symbols} x {args.rank_bars}: {seconds:.1f} s  {summary}", flush=True)
    results: dict[str, ChildResult] = {}
    # torchrun gives each rank OMP_NUM_THREADS=1 when unset: one process is shown both ways
    plan = [("1", 1, None), ("1 (OMP 1)", 1, 1), ("2", 2, None)] if not args.threads \
        else [("1", 1, None), ("2", 2, None)]
    for key, ranks, threads in plan:
        out = Path(args.work_dir) / f"ranks_{ranks}"
        tail = train_cmd(args.rank_symbols, args.rank_bars, cache, 0, out, args)
        launcher = [sys.executable] if ranks == 1 else [
            sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"]
        res = run_paused_training(f"{key} rank(s)", [*launcher, *tail], args.rank_steps,
                                  args.batch_size, args, threads, ranks)
        print_run(res)
        results[key] = res
    one, two = results["1"].samples_per_s, results["2"].samples_per_s
    return {"runs": {k: asdict(v) for k, v in results.items()},
            "speedup": (two / one) if one and two else None, "rank_results": results}


def stop_check_section(args: argparse.Namespace, two_rank: ChildResult | None) -> dict[str, object]:
    section(f"3. cost of the distributed stop check ({args.reduce_calls} calls, 2 ranks, gloo)")
    probe = Path(args.work_dir) / "stop_check_probe.py"
    probe.write_text(PROBE)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(probe), str(args.reduce_calls)]
    load = load_average()
    out = subprocess.run(cmd, cwd=args.work_dir, env=child_env(0, args.threads), capture_output=True,
                         text=True, timeout=args.timeout)
    found = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    if not found:
        print(f"  probe failed (exit {out.returncode}): {out.stderr[-500:]}")
        return {"error": out.stderr[-500:]}
    probe_res = json.loads(found[-1][len("RESULT "):]) | {"load": load}
    step_s = args.batch_size / two_rank.samples_per_s if two_rank and two_rank.samples_per_s else None
    probe_res["step_s"] = step_s
    if step_s:
        call = probe_res["agree_stop_s"]
        probe_res |= {"steps_per_s_with": 1 / step_s, "steps_per_s_without": 1 / max(step_s - call, 1e-12),
                      "share_of_step": call / step_s}
    print(f"  agree_stop {probe_res['agree_stop_s'] * 1e6:,.1f} us/call, bare all_reduce "
          f"{probe_res['all_reduce_s'] * 1e6:,.1f} us/call, empty loop {probe_res['loop_s'] * 1e6:.2f} us "
          f"(load {load})", flush=True)
    return probe_res


# --------------------------------------------------------------------------- the table
def print_table(result: dict[str, object], args: argparse.Namespace) -> None:
    section("summary")
    scale = result.get("scale")
    if scale:
        print(f"\n1. {args.bars} bars per symbol, batch {args.batch_size}, SIGTERM at step {args.steps}; "
              "peaks of the process tree's sums (MB)\n")
        print("| symbols | workers | samples/s | RSS | RssAnon (sum) | Pss_Anon | USS | main RssAnon "
              "| procs | exit | load 1/5/15 |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for r in scale["runs"]:  # type: ignore[index]
            m = r["memory"]
            n, w = r["label"].split(" sym, ")
            print(f"| {n} | {w.replace(' workers', '')} | {fmt(r['samples_per_s'])} | {m['rss'] / MB:,.0f} | "
                  f"{m['rss_anon'] / MB:,.0f} | {m['pss_anon'] / MB:,.0f} | {m['uss'] / MB:,.0f} | "
                  f"{m['main_rss_anon'] / MB:,.0f} | {m['max_processes']} | {r['exit_code']} | {r['load']} |")
        lo, hi = min(args.symbols), max(args.symbols)
        print(f"\nGrowth {lo} -> {hi} symbols (MB; target: anonymous growth under {TARGET_GROWTH_MB:.0f} "
              "MB per process tree)\n")
        print("| workers | RSS | RssAnon (sum) | Pss_Anon | USS | main RssAnon | Pss_Anon under target |")
        print("|---|---|---|---|---|---|---|")
        for w, g in scale["growth"].items():  # type: ignore[union-attr]
            ok = "yes" if g["pss_anon"] < TARGET_GROWTH_MB else "NO"
            print(f"| {w} | {g['rss']:+,.0f} | {g['rss_anon']:+,.0f} | {g['pss_anon']:+,.0f} | "
                  f"{g['uss']:+,.0f} | {g['main_rss_anon']:+,.0f} | {ok} |")
    ranks = result.get("ranks")
    if ranks:
        print(f"\n2. {args.rank_symbols} x {args.rank_bars}, global batch {args.batch_size}, "
              f"SIGTERM at step {args.rank_steps}\n")
        print("| ranks | OMP threads | samples/s (job) | steps/s | peak tree RSS MB | exit (launcher; ranks) "
              "| load 1/5/15 |")
        print("|---|---|---|---|---|---|---|")
        for k, r in ranks["runs"].items():  # type: ignore[union-attr]
            sps = r["samples_per_s"]
            threads = r["threads"] if not k.startswith("2") or args.threads else "1 (torchrun)"
            print(f"| {k} | {threads} | {fmt(sps)} | {fmt(sps / args.batch_size if sps else None, 2)} | "
                  f"{r['memory']['rss'] / MB:,.0f} | {r['exit_code']}; {r['rank_exit_codes']} | "
                  f"{r['load']} |")
        print(f"\nspeed-up 2 ranks / 1 rank (default threads): {fmt(ranks['speedup'], 2)}x")  # type: ignore[arg-type]
    stop = result.get("stop_check")
    if stop and "agree_stop_s" in stop:
        print("\n3. stop check (2 ranks, gloo)\n")
        print("| agree_stop us/call | bare all_reduce us/call | 2-rank step ms | steps/s with | "
              "steps/s without | share of a step | load 1/5/15 |")
        print("|---|---|---|---|---|---|---|")
        step = stop.get("step_s")  # type: ignore[union-attr]
        print(f"| {stop['agree_stop_s'] * 1e6:,.1f} | {stop['all_reduce_s'] * 1e6:,.1f} | "  # type: ignore[index]
              f"{fmt(step * 1e3 if step else None, 1)} | {fmt(stop.get('steps_per_s_with'), 3)} | "  # type: ignore[union-attr]
              f"{fmt(stop.get('steps_per_s_without'), 3)} | "  # type: ignore[union-attr]
              f"{fmt(stop['share_of_step'] * 100 if 'share_of_step' in stop else None, 2)} % | "  # type: ignore[operator]
              f"{stop['load']} |")  # type: ignore[index]


# --------------------------------------------------------------------------- main
def int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--symbols", type=int_list, default=None, help="sizes, e.g. 100,500,2000 (default)")
    p.add_argument("--bars", type=int, default=None, help="bars per symbol (default 5000; --quick 2000)")
    p.add_argument("--quick", action="store_true", help="50,200,500 symbols x 2000 bars, fewer steps")
    p.add_argument("--workers", type=int_list, default=[0, 2], help="--num-workers values (default 0,2)")
    p.add_argument("--steps", type=int, default=None, help="SIGTERM at this step (default 120; quick 60)")
    p.add_argument("--scale-ranks", type=int_list, default=[1],
                   help="section 1 also under torchrun with these rank counts, e.g. 1,2 (default 1)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--rank-symbols", type=int, default=16)
    p.add_argument("--rank-bars", type=int, default=2500)
    p.add_argument("--rank-steps", type=int, default=100,
                   help="section 2 stop step (default 100: 16 x 2500 has 106 steps per epoch at batch 256)")
    p.add_argument("--reduce-calls", type=int, default=2000)
    p.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for every child")
    p.add_argument("--interval", type=float, default=0.1, help="memory sampling period, s")
    p.add_argument("--uss-every", type=int, default=5, help="USS every k samples (it reads smaps)")
    p.add_argument("--timeout", type=float, default=900.0, help="per child, s")
    default_work = Path(tempfile.gettempdir()) / "indicator_transformer_bench_scale"
    p.add_argument("--work-dir", default=str(default_work),
                   help="caches (kept and reused) and run folders")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--skip-scale", action="store_true")
    p.add_argument("--skip-ranks", action="store_true")
    p.add_argument("--skip-stop-check", action="store_true")
    args = p.parse_args(argv)
    args.symbols = args.symbols or ([50, 200, 500] if args.quick else [100, 500, 2000])
    args.bars = args.bars or (2000 if args.quick else 5000)
    args.steps = args.steps or (60 if args.quick else 120)
    Path(args.work_dir).mkdir(parents=True, exist_ok=True)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    print(f"bench_scale: {os.cpu_count()} CPUs, load {load_average()}, threads "
          f"{args.threads or 'default'}, work dir {args.work_dir}", flush=True)
    result: dict[str, object] = {"args": {k: v for k, v in vars(args).items()}, "load_start": load_average()}
    if not args.skip_scale:
        result["scale"] = scale_section(args)
    two_rank = None
    if not args.skip_ranks:
        ranks = ranks_section(args)
        two_rank = ranks.pop("rank_results")["2"]  # type: ignore[index]
        result["ranks"] = ranks
    if not args.skip_stop_check:
        result["stop_check"] = stop_check_section(args, two_rank)
    result["load_end"], result["wall_s"] = load_average(), time.perf_counter() - t0
    print_table(result, args)
    print(f"\nwall {result['wall_s']:.0f} s, load at start {result['load_start']}, "
          f"at end {result['load_end']}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
