"""Usage mistakes, as a user makes them: the real entry point in a real subprocess, in an empty folder.

Each one must end with exit code 2, one ``error:`` line naming the flag or key (and the file, for a
config file), no traceback, and nothing written anywhere. The cases run concurrently (each child
is a separate interpreter in its own folder) so that the whole file takes a few seconds.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import REPO_ROOT, child_env, default_sigint

ENTRY = str(REPO_ROOT / "train_indicator_transformer.py")
# Small enough that a case which wrongly passes validation still ends quickly (and then fails).
SMALL = ["--symbols", "2", "--bars", "300", "--window", "8", "--epochs", "1", "--d-model", "8",
         "--heads", "2", "--layers", "1", "--no-progress"]


def _folder(d: Path) -> None:
    (d / "a_folder").mkdir()


def _file(d: Path) -> None:
    (d / "a_file").write_text("not a folder\n")


def _toml(text: str) -> Callable[[Path], None]:
    return lambda d: (d / "run.toml").write_text(text)


# id: (setup of the working folder, arguments, what the one error line must contain)
CASES: dict[str, tuple[Callable[[Path], None] | None, list[str], list[str]]] = {
    "seed_beyond_2_63": (None, ["--prepare-only", "--seed", "99999999999999999999"],
                         ["--seed", "'seed'", "2**63"]),
    "negative_seed": (None, ["--prepare-only", "--seed", "-1"], ["--seed", "'seed'"]),
    "negative_data_seed": (None, ["--prepare-only", "--data-seed", "-5"], ["--data-seed", "'data_seed'"]),
    "config_is_a_folder": (_folder, ["--prepare-only", "--config", "a_folder"], ["a_folder", "is a folder"]),
    "config_is_empty": (None, ["--prepare-only", "--config", ""], ["--config"]),
    "empty_cache_dir": (None, ["--prepare-only", "--cache-dir", ""], ["--cache-dir", "'cache_dir'"]),
    "blank_cache_dir": (None, ["--prepare-only", "--cache-dir", "  "], ["--cache-dir", "'cache_dir'"]),
    "empty_models_dir": (None, ["--models-dir", ""], ["--models-dir", "'models_dir'"]),
    "empty_data_dir": (None, ["--prepare-only", "--data-dir", ""], ["--data-dir", "'data_dir'"]),
    "infinite_lr": (None, ["--prepare-only", "--lr", "inf"], ["--lr", "'lr'", "finite"]),
    "nan_dropout": (None, ["--prepare-only", "--dropout", "nan"], ["--dropout", "'dropout'"]),
    "huge_window": (None, ["--prepare-only", "--window", "100000000"], ["--window", "'window'"]),
    "huge_symbols": (None, ["--prepare-only", "--symbols", "1000000"], ["--symbols", "'symbols'"]),
    "bad_cuda_index": (None, ["--prepare-only", "--device", "cuda:x"], ["--device", "'device'"]),
    "cache_dir_is_a_file": (_file, ["--prepare-only", "--cache-dir", "a_file"], ["--cache-dir", "a_file",
                                                                                  "not a folder"]),
    "models_dir_inside_a_file": (_file, ["--models-dir", "a_file/models"], ["--models-dir", "a_file"]),
    "models_dir_is_the_cache_dir": (None, ["--models-dir", "same", "--cache-dir", "same/"],
                                    ["--models-dir", "'models_dir'", "cache_dir"]),
    "toml_nan_lr": (_toml("lr = nan\n"), ["--prepare-only", "--config", "run.toml"], ["run.toml", "'lr'"]),
    "toml_negative_seed": (_toml("[train]\nseed = -3\n"), ["--prepare-only", "--config", "run.toml"],
                           ["run.toml", "'seed'"]),
    "toml_empty_cache_dir": (_toml('cache_dir = ""\n'), ["--prepare-only", "--config", "run.toml"],
                             ["run.toml", "'cache_dir'"]),
    "toml_key_twice": (_toml("epochs = 1\n[train]\nepochs = 2\n"), ["--prepare-only", "--config", "run.toml"],
                       ["run.toml", "'epochs'", "twice"]),
    "toml_section_not_a_table": (_toml("model = 3\n"), ["--prepare-only", "--config", "run.toml"],
                                 ["run.toml", "[model]"]),
    "batch_larger_than_memory": (None, ["--prepare-only", "--window", "4096", "--batch-size", "65536"],
                                 ["--batch-size", "GiB", "--window"]),
    "train_frac_out_of_range": (None, ["--prepare-only", "--train-frac", "1.5"],
                                ["--train-frac", "'train_frac'"]),
    "toml_no_progress_is_a_switch": (_toml("no_progress = true\n"),
                                     ["--prepare-only", "--config", "run.toml"],
                                     ["run.toml", "'no_progress'", "command-line switch", "--no-progress"]),
    "toml_unknown_talib_function": (_toml('custom_features = [{name = "x", fn = "RSX", '
                                          'transform = "pct"}]\n'),
                                    ["--prepare-only", "--config", "run.toml"],
                                    ["run.toml", "'custom_features'", "feature 'x'", "RSI"]),
    "flag_declaration_not_scale_free": (None, ["--prepare-only", "--custom-features",
                                               '{name = "s", fn = "SMA", transform = "none"}'],
                                        ["--custom-features", "'custom_features'", "scale-free"]),
    "unknown_feature_lists_declared": (_toml('custom_features = [{name = "r7", fn = "RSI", '
                                             'transform = "osc100"}]\n'),
                                       ["--prepare-only", "--config", "run.toml", "--features", "r8"],
                                       ["--features", "'features'", "rsi_14", "custom_features: r7"]),
}


def _listing(d: Path) -> list[str]:
    return sorted(str(p.relative_to(d)) for p in d.rglob("*"))


def _run_case(root: Path, name: str) -> tuple[subprocess.CompletedProcess, list[str], list[str]]:
    setup, args, _ = CASES[name]
    work = root / name
    work.mkdir()
    if setup is not None:
        setup(work)
    before = _listing(work)
    try:
        r = subprocess.run([sys.executable, ENTRY, *SMALL, *args], cwd=work, env=child_env(),
                           capture_output=True, text=True, timeout=60, preexec_fn=default_sigint)
    except subprocess.TimeoutExpired as e:  # a mistake that went unnoticed and started working
        r = subprocess.CompletedProcess(e.cmd, -1, "", f"timed out after 60 s: {e.stderr!r}")
    return r, before, _listing(work)


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("usage")
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {name: pool.submit(_run_case, root, name) for name in CASES}
        return {name: f.result() for name, f in futures.items()}


@pytest.mark.parametrize("case", list(CASES))
def test_a_usage_mistake_exits_2_with_one_error_line_naming_it_and_writes_nothing(results: dict,
                                                                                  case: str) -> None:
    r, before, after = results[case]
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for needle in CASES[case][2]:
        assert needle in lines[0], (needle, lines[0])
    assert after == before  # no cache, no models folder, nothing in the working folder
