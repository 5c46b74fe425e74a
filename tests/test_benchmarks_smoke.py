"""run_all's page writer on a small fake results dict: every area renders, failures are shown."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import render  # noqa: E402


def s(median: float, lo: float | None = None, hi: float | None = None, n: int = 3) -> dict:
    return {
        "min": lo if lo is not None else median,
        "median": median,
        "max": hi if hi is not None else median,
        "n": n,
    }


MACHINE = {
    "cpu": "Test CPU",
    "cpus": 2,
    "torch_threads": 2,
    "os": "Linux",
    "python": "3.11",
    "torch": "2.13.0",
    "pytorch_lightning": "2.6.6",
    "numpy": "2",
    "talib": "0.6",
    "load_average": "1/1/1",
}
VARIANT = {
    "exit_s": s(1.5, 1.2, 1.9),
    "steps_lost": s(0),
    "exit_codes": [130],
    "processes_left": 0,
    "failures": [],
    "runs": 3,
    "ratio_exit_s": s(0.8),
}
FAKE = {
    "command": "python benchmarks/run_all.py --quick",
    "quick": True,
    "machine": MACHINE,
    "started": "2026-01-01 00:00:00 UTC",
    "wall_s": 61.0,
    "load_end": "1/1/1",
    "areas": {
        "throughput": {
            "setup": {
                "symbols": 16,
                "bars": 2500,
                "train_windows": 27000,
                "batch_size": 256,
                "steps_per_epoch": 106,
                "parameters": 20000,
                "torch_threads": 2,
                "repeats": 3,
            },
            "samples_per_s": {"ours": s(4600, 4500, 4700), "bare": s(4650), "lightning": s(4400)},
            "ratio_vs_bare": s(0.987),
            "ratio_vs_lightning": s(1.04),
            "commands": ["python x"],
            "wall_s": 30,
            "load_after": "1/1/1",
        },
        "options": {
            "reference": "bare fp32",
            "notes": ["a note"],
            "wall_s": 9,
            "load_after": "-",
            "rows": [
                {
                    "name": "bare bf16",
                    "description": "autocast",
                    "samples_per_s": s(5000, 4900, 5100),
                    "ratio": s(1.2, 1.1, 1.3),
                    "same_results": "same meaning",
                }
            ],
        },
        "interrupt": {
            "setup": {"pause_step": 24, "steps_per_epoch": 16, "repeats": 3},
            "workers": {"0": {"ours": VARIANT, "lightning": VARIANT, "lightning_on_exception": VARIANT}},
            "wall_s": 50,
            "load_after": "1/1/1",
        },
        "resume": {
            "setup": {"epochs": 2, "pause_step": 24},
            "ours": {"bit_exact": True, "max_abs_diff": 0.0, "checkpoint": "a.pth"},
            "lightning": {"bit_exact": False, "max_abs_diff": 3e-3, "checkpoint": "on_exception.ckpt"},
            "wall_s": 40,
            "load_after": "1/1/1",
        },
        "checkpoint": {
            "error": "bench_checkpoint.py exited 1:\nTraceback: boom",
            "wall_s": 1,
            "load_after": "-",
        },
        "startup": {
            "setup": {"resume_step": 24, "repeats": 1},
            "seconds": {
                "ours_fresh": s(3.1, n=1),
                "lightning_fresh": s(6.0, n=1),
                "ours_resumed": s(3.3, n=1),
                "lightning_resumed": s(6.4, n=1),
            },
            "ratio_fresh": s(0.52, n=1),
            "ratio_resumed": s(0.51, n=1),
            "wall_s": 20,
            "load_after": "-",
        },
    },
}


def test_every_area_renders_with_its_figures_and_a_failed_area_shows_its_error() -> None:
    page = render.render(FAKE)
    assert "Trial run" in page and "Test CPU" in page
    assert "| ours (Trainer) | 4,600 (4,500-4,700) | 1.00x |" in page
    assert "0.99x" in page  # the headline ratio vs the bare loop
    assert "| bare bf16 | 5,000 (4,900-5,100) | 1.20x (1.10-1.30) | same meaning | autocast |" in page
    assert "| Lightning + OnExceptionCheckpoint | 1.50 (1.20-1.90) |" in page
    assert "| Lightning (resumed mid-epoch) | no | 0.003 |" in page
    assert "**Failed**" in page and "Traceback: boom" in page
    assert "| resumed | 3.30 | 6.40 | 0.51x |" in page


def test_bench_prepare_json_renders_its_rows_against_the_ta_lib_ceiling() -> None:
    def runs(seconds: list[float], rate: float) -> dict:
        return {
            "seconds": seconds,
            "bars_per_s": [rate] * len(seconds),
            **s(sorted(seconds)[1], min(seconds), max(seconds)),
        }

    ratio = {"per_repeat": [1.4], "min": 1.3, "median": 1.4, "max": 1.5}
    prep = {
        "symbols": 500,
        "bars": 5000,
        "repeats": 3,
        "workers": 2,
        "commands": ["python p"],
        "wall_s": 5,
        "load_after": "-",
        "runs": {
            "cold_1": runs([10, 11, 12], 250_000),
            "cold_2": runs([7, 8, 9], 350_000),
            "warm_2": runs([0.3, 0.4, 0.5], 7_000_000),
            "ceiling": runs([1, 1, 1], 2_500_000),
        },
        "ratios": {
            "speedup_2_vs_1": ratio,
            "warm_fraction_of_cold_2": {"min": 0.04, "median": 0.05, "max": 0.06},
            "pipeline_fraction_of_ceiling_1_core": ratio,
            "pipeline_fraction_of_ceiling_2_cores": ratio,
        },
    }
    page = render.render(FAKE | {"areas": {"preparation": prep}})
    assert "| cold, 2 workers | 8.000 (7.000-9.000) | 350,000 | 14.0% |" in page
    assert "warm start 5.0 (4.0-6.0)% of a cold preparation" in page


def test_run_all_refuses_an_out_path_that_is_a_file_before_running_anything(tmp_path) -> None:
    import subprocess

    target = tmp_path / "afile"
    target.write_text("mine")
    cmd = [sys.executable, "benchmarks/run_all.py", "--only", "checkpoint", "--out", str(target)]
    r = subprocess.run(cmd, cwd=Path(__file__).parents[1], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "is a file" in r.stderr, r.stderr
    assert target.read_text() == "mine" and "== checkpoint" not in r.stdout


def _spread(mean: float | None, std: float | None = 0.0) -> dict:
    return {"mean": mean, "std": std, "per_seed": []}


def test_the_walk_forward_areas_render_their_figures() -> None:
    names = ("model", "ridge", "lightgbm")
    market = {
        "command": "indicator-transformer walk-forward --folds 4", "seconds": 400.0, "headline": "CS IC",
        "metric": "cs_ic", "calendar": "common", "verdict": "not distinguishable",
        "predictors": {"model": {"cs_ic": _spread(0.085, 0.0012), "mse_ratio": _spread(0.992, 0.0004)},
                       "zero": {"cs_ic": _spread(None, None), "mse_ratio": _spread(1.0)},
                       "lightgbm": {"cs_ic": _spread(0.0851, 0.003), "mse_ratio": _spread(0.9911, 0.0006)}},
        "model_against": {"lightgbm": {"ahead_in": 1, "clearly_ahead_in": 0, "of": 3}},
        "per_fold": [{"fold": 0, "test_start": "2005-09-30T00:00:00",
                      "predictors": {n: {"ic": _spread(0.08, 0.01)} for n in names}},
                     {"fold": 1, "test_start": "A=2006-01-02T00:00:00,B=2009-01-02T00:00:00",
                      "predictors": {n: {"ic": _spread(0.07, 0.01)} for n in names}}],
    }
    fake = {**FAKE, "merged": True, "areas": {
        "walk_forward": {"runs": 4, "threads_per_run": 1, "cpus": 2,
                         "seconds": {"loop": 100.0, "jobs_1": 102.0, "jobs_2": 60.0},
                         "overhead_jobs_1_vs_loop": 0.02, "speedup_jobs_2_vs_loop": 1.667,
                         "wall_s": 262, "load_after": "-", "started": "2026-12-07 16:00:00 UTC"},
        "walk_forward_report": {"markets": {"built-in": market}, "wall_s": 400, "load_after": "-"}}}
    page = render.render(fake)
    assert "| walk-forward --jobs 1 | 102.0 | 1.020x |" in page
    assert "overhead over a shell loop is +2.0%" in page
    assert "; run 2026-12-07 16:00:00 UTC)" in page
    assert "| model | +0.0850 ± 0.0012 | +0.9920 ± 0.0004 |  |" in page
    assert "| lightgbm | +0.0851 ± 0.0030 | +0.9911 ± 0.0006 | 1 / 0 of 3 |" in page
    assert "| zero | - | +1.0000 ± 0.0000 |  |" in page
    assert "| 1 | per symbol | +0.0700 ± 0.0100 |" in page and "| 0 | 2005-09-30 |" in page
