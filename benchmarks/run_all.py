"""Every benchmark in one command: writes BENCHMARKS.md and benchmarks/results.json.

    python benchmarks/run_all.py                 # about 10 minutes on 2 quiet cores
    python benchmarks/run_all.py --quick         # smaller markets, one repeat: a trial run
    python benchmarks/run_all.py --out /tmp/b    # write both files there instead of the repository
    python benchmarks/run_all.py --only throughput,resume
    python benchmarks/run_all.py --only walk_forward --merge   # the other areas kept from results.json

Each area is its own script, run here as a subprocess with ``--json``; its exact command is printed
in the table's heading. Every figure in BENCHMARKS.md comes from the JSON of this run (render()
turns results.json into the page; nothing is typed by hand). A failed area is shown as failed,
with the end of its output, and the others still run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import common
from render import render

PY = "python"  # as shown in the tables; run with sys.executable


def prepare_result(quick: bool, tmp: Path) -> dict[str, Any]:
    """bench_prepare.py (owned by the data work), with its own TA-Lib ceiling, through its --json."""
    args = ["--symbols", "40", "--bars", "2000", "--repeats", "1"] if quick else []
    result, cmd = run_script("bench_prepare.py", args, tmp / "prepare.json")
    return result | {"commands": [cmd]}


def run_script(script: str, args: list[str], json_path: Path | None) -> tuple[Any, str]:
    """Run one benchmark script; (its JSON, or its output when ``json_path`` is None; the command)."""
    argv = [str(common.BENCH_DIR / script), *args]
    shown = " ".join([PY, f"benchmarks/{script}", *args])
    extra = ["--json", str(json_path)] if json_path else []
    proc = subprocess.run(
        [sys.executable, *argv, *extra],
        cwd=common.REPO_ROOT,
        capture_output=True,
        text=True,
        env=common.child_env(),
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{shown} exited {proc.returncode}:\n{(proc.stdout + proc.stderr)[-2500:]}")
    return (json.loads(json_path.read_text()) if json_path else proc.stdout), shown


def simple(script: str, quick_args: list[str], full_args: list[str]) -> Callable[[bool, Path], dict]:
    """An area that is one script with ``--json``."""

    def area(quick: bool, tmp: Path) -> dict[str, Any]:
        result, cmd = run_script(script, quick_args if quick else full_args, tmp / f"{script}.json")
        return result | {"commands": [cmd]}

    return area


def memory_result(quick: bool, tmp: Path) -> dict[str, Any]:
    """bench_scale.py's first section only, --num-workers 0; caches kept between runs."""
    work = Path(tempfile.gettempdir()) / "indicator_transformer_run_all_scale"
    sizes = (
        ["--symbols", "20,50,100", "--bars", "1000", "--steps", "20"]
        if quick
        else ["--symbols", "100,500,2000", "--bars", "5000", "--steps", "60"]
    )
    args = [*sizes, "--workers", "0", "--skip-ranks", "--skip-stop-check", "--work-dir", str(work)]
    result, cmd = run_script("bench_scale.py", args, tmp / "scale.json")
    return {"commands": [cmd], "runs": result["scale"]["runs"], "prepare": result["scale"]["prepare"]}


def options_result(quick: bool, tmp: Path) -> dict[str, Any]:
    """HOOK: bench_options.py (the --precision work) when it exists; its rows are shown as given."""
    if not (common.BENCH_DIR / "bench_options.py").exists():
        return {"missing": "benchmarks/bench_options.py does not exist yet"}
    result, cmd = run_script("bench_options.py", ["--quick"] if quick else [], tmp / "options.json")
    return result | {"commands": [cmd]}


AREAS: dict[str, Callable[[bool, Path], dict[str, Any]]] = {
    "throughput": simple("bench_throughput.py", ["--quick"], []),
    "options": options_result,
    "interrupt": simple("bench_interrupt.py", ["--quick"], []),
    "resume": simple("bench_resume.py", [], []),
    "checkpoint": simple("bench_checkpoint.py", ["--quick"], []),
    "preparation": prepare_result,
    "memory": memory_result,
    "startup": simple("bench_startup.py", ["--quick"], []),
    "walk_forward": simple("bench_walk_forward.py", ["--folds", "2", "--seeds", "0", "--epochs", "1"], []),
    # Kept between runs (like memory's caches): a rerun continues the experiments, reports at once.
    "walk_forward_report": simple("bench_walk_forward_report.py", ["--quick"], [
        "--work-dir", str(Path(tempfile.gettempdir()) / "indicator_transformer_run_all_walk_forward")]),
    "sweep": simple("bench_sweep.py", ["--section", "overhead", "--trials", "4"], []),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small markets, one repeat (a trial)")
    p.add_argument(
        "--out",
        default=None,
        help="folder for BENCHMARKS.md and results.json "
        "(default: BENCHMARKS.md at the repository root, benchmarks/results.json)",
    )
    p.add_argument("--only", default=None, help=f"comma-separated areas of {','.join(AREAS)}")
    p.add_argument("--merge", action="store_true", help="keep the other areas' figures from the existing "
                   "results.json (each area says when it ran)")
    args = p.parse_args(argv)
    areas = args.only.split(",") if args.only else list(AREAS)
    unknown = sorted(set(areas) - set(AREAS))
    if unknown:
        p.error(f"--only: unknown area(s) {', '.join(unknown)}; choose from {', '.join(AREAS)}")
    if args.out:  # checked before minutes of benchmarks, not after
        out = Path(args.out)
        if out.exists() and not out.is_dir():
            p.error(f"--out {args.out}: is a file; expected a folder for BENCHMARKS.md and results.json")
        try:
            out.mkdir(parents=True, exist_ok=True)
            probe = out / ".run_all_write_test"
            probe.write_text("")
            probe.unlink()
        except OSError as e:
            p.error(f"--out {args.out}: cannot write there ({e.strerror or e})")
    shown = " ".join(["python benchmarks/run_all.py", *(argv if argv is not None else sys.argv[1:])])
    results: dict[str, Any] = {
        "command": shown,
        "quick": args.quick,
        "machine": common.machine(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "areas": {},
    }
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="run_all_") as tmp:
        for name in areas:
            t0 = time.perf_counter()
            print(f"== {name} (load {common.load_average()})", flush=True)
            try:
                res = AREAS[name](args.quick, Path(tmp))
            except Exception as e:  # noqa: BLE001 - one failed area must not lose the others
                res = {"error": str(e)}
                print(f"   FAILED: {str(e)[:2000]}", flush=True)
            res["quick"] = args.quick  # per area: a merged file mixes full and trial runs
            res["wall_s"], res["load_after"] = time.perf_counter() - t0, common.load_average()
            res["started"] = time.strftime("%Y-%m-%d %H:%M:%S %Z",
                                           time.localtime(time.time() - res["wall_s"]))
            results["areas"][name] = res
            print(f"   {res['wall_s']:.0f} s", flush=True)
    results["wall_s"], results["load_end"] = time.perf_counter() - t_all, common.load_average()
    out = Path(args.out) if args.out else None
    json_path = (out or common.BENCH_DIR) / "results.json"
    md_path = (out or common.REPO_ROOT) / "BENCHMARKS.md"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    if args.merge and json_path.exists():  # the areas not rerun keep their figures, and their dates
        old = json.loads(json_path.read_text())
        for name, area in old.get("areas", {}).items():
            if name not in results["areas"]:
                area.setdefault("started", old.get("started"))
                area.setdefault("quick", bool(old.get("quick")))
                results["areas"][name] = area
        results["areas"] = {k: results["areas"][k] for k in AREAS if k in results["areas"]}
        first = str(old.get("command", "")).split("` and `")[0]  # the full run, then this one
        first_start = str(old.get("started", "")).split(" and ")[0]
        results["command"] = f"{first}` and `{shown}"
        results["started"] = f"{first_start} and {results['started']}"
        results["wall_s"] = sum(float(a.get("wall_s", 0)) for a in results["areas"].values())
        results["merged"] = True
        results["quick"] = any(a.get("quick") for a in results["areas"].values())
    json_path.write_text(json.dumps(results, indent=1, default=str) + "\n")
    md_path.write_text(render(results))
    print(f"wrote {md_path} and {json_path} in {results['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
