"""``python validate_cache.py``, run for real from the repository root."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from indicator_transformer.config import FeatureConfig
from indicator_transformer.data.cache import MANIFEST, FeatureCache
from indicator_transformer.data.prepare import prepare
from indicator_transformer.data.sources import synthetic_sources

SYMBOLS = 5


@pytest.fixture
def cache_dir(tmp_path) -> Path:
    """A real cache of five prepared symbols."""
    root = tmp_path / "cache"
    prepare(synthetic_sources(SYMBOLS, 300, seed=6), FeatureConfig(window=8), FeatureCache(root).open(),
            show_progress=False)
    return root


def _validate(run_python, *args: str):
    return run_python(["validate_cache.py", *args], timeout=120)


def _row(stdout: str, status: str) -> list[str]:
    """The table row for ``status``: [status, count, bytes..., action]."""
    for line in stdout.splitlines():
        if line.split()[:1] == [status]:
            return line.split()
    raise AssertionError(f"no '{status}' row in:\n{stdout}")


def _count(stdout: str, status: str) -> int:
    return int(_row(stdout, status)[1])


def _entries(root: Path) -> dict:
    return json.loads((root / MANIFEST).read_text())["entries"]


def test_a_prepared_cache_is_reported_valid_with_exit_code_0(run_python, cache_dir):
    res = _validate(run_python, "--cache-dir", str(cache_dir))
    assert res.returncode == 0, res.stderr
    assert _count(res.stdout, "valid") == SYMBOLS
    assert _row(res.stdout, "valid")[-1] == "kept"
    for status in ("corrupt", "missing", "orphaned", "temporary"):
        assert _count(res.stdout, status) == 0
    assert "Cache is consistent" in res.stdout


def test_a_corrupted_file_is_reported_removed_and_the_manifest_fixed_then_a_rerun_is_clean(
        run_python, cache_dir):
    entries = _entries(cache_dir)
    key, entry = sorted(entries.items())[2]
    victim = cache_dir / entry["files"]["features"]["name"]
    data = bytearray(victim.read_bytes())
    for i in range(200, 264):  # flip bytes inside the array data; the size stays the same
        data[i] ^= 0x5A
    victim.write_bytes(bytes(data))

    res = _validate(run_python, "--cache-dir", str(cache_dir))
    assert res.returncode == 0, res.stderr
    assert _count(res.stdout, "corrupt") == 1
    assert _row(res.stdout, "corrupt")[-1] == "removed"
    assert _count(res.stdout, "valid") == SYMBOLS - 1
    assert not victim.exists()
    assert not list(cache_dir.glob(f"*{key}*"))  # the entry's other files went with it
    assert set(_entries(cache_dir)) == set(entries) - {key}

    rerun = _validate(run_python, "--cache-dir", str(cache_dir))
    assert rerun.returncode == 0
    assert _count(rerun.stdout, "valid") == SYMBOLS - 1
    assert _count(rerun.stdout, "corrupt") == 0
    assert "removed" not in rerun.stdout


def test_a_dry_run_reports_the_damage_changes_nothing_and_exits_1(run_python, cache_dir):
    entry = next(iter(_entries(cache_dir).values()))
    victim = cache_dir / entry["files"]["label"]["name"]
    victim.write_bytes(victim.read_bytes()[:-8])  # truncated
    before = sorted(p.name for p in cache_dir.iterdir())

    res = _validate(run_python, "--cache-dir", str(cache_dir), "--dry-run")
    assert res.returncode == 1
    assert _count(res.stdout, "corrupt") == 1 and "would remove" in res.stdout
    assert sorted(p.name for p in cache_dir.iterdir()) == before


def test_orphaned_data_files_and_stale_temp_files_are_removed(run_python, cache_dir):
    orphan = cache_dir / f"GONE-{'cd' * 32}.features.npy"
    orphan.write_bytes(b"\x93NUMPY not listed anywhere")
    stale = cache_dir / ".manifest.json.999999999.abcdef01.tmp"
    stale.write_text("{half a manifest")
    notes = cache_dir / "NOTES.txt"  # not a cache file: none of our business
    notes.write_text("my notes")

    dry = _validate(run_python, "--cache-dir", str(cache_dir), "--dry-run")
    assert _row(dry.stdout, "temporary")[-2:] == ["would", "remove"] and stale.exists()  # nothing touched
    assert _row(dry.stdout, "orphaned")[-2:] == ["would", "remove"] and orphan.exists()

    res = _validate(run_python, "--cache-dir", str(cache_dir))
    assert res.returncode == 0, res.stderr
    assert _count(res.stdout, "orphaned") == 1 and _row(res.stdout, "orphaned")[-1] == "removed"
    assert _count(res.stdout, "temporary") == 1 and _row(res.stdout, "temporary")[-1] == "removed"
    assert _count(res.stdout, "valid") == SYMBOLS
    assert not orphan.exists() and not stale.exists()
    assert notes.read_text() == "my notes"


def test_a_garbage_manifest_is_reported_and_rewritten(run_python, cache_dir):
    (cache_dir / MANIFEST).write_bytes(b"\x00\x01 not json")
    res = _validate(run_python, "--cache-dir", str(cache_dir))
    assert res.returncode == 0
    assert "manifest:" in res.stdout and "rewritten" in res.stdout
    # Without a readable manifest nothing is committed: every data file is an orphan.
    assert _count(res.stdout, "orphaned") == SYMBOLS  # one data file per entry (cache format 3)
    assert _entries(cache_dir) == {}
    assert not list(cache_dir.glob("*.npy"))


def test_clear_all_removes_the_cache_folder(run_python, cache_dir):
    res = _validate(run_python, "--cache-dir", str(cache_dir), "--clear-all")
    assert res.returncode == 0, res.stderr
    assert not cache_dir.exists()
    assert re.search(r"removed \d+ file\(s\)", res.stdout)


def test_clear_all_refuses_a_folder_that_is_not_a_cache(run_python, tmp_path):
    precious = tmp_path / "thesis"
    precious.mkdir()
    (precious / "chapter1.tex").write_text("years of work")
    res = _validate(run_python, "--cache-dir", str(precious), "--clear-all")
    assert res.returncode == 2
    assert str(precious) in res.stderr and "chapter1.tex" in res.stderr
    assert (precious / "chapter1.tex").read_text() == "years of work"


def test_help_exits_0_and_explains_the_command(run_python):
    res = _validate(run_python, "--help")
    assert res.returncode == 0
    assert "usage: validate_cache.py" in res.stdout
    for word in ("--cache-dir", "--clear-all", "--dry-run", "manifest", "corrupt"):
        assert word in res.stdout


@pytest.mark.parametrize("extra", [[], ["--clear-all"], ["--dry-run"]], ids=["validate", "clear-all",
                                                                              "dry-run"])
def test_a_regular_file_as_cache_dir_exits_2_naming_it(run_python, tmp_path, extra):
    path = tmp_path / "not_a_folder.txt"
    path.write_text("hello")
    res = _validate(run_python, "--cache-dir", str(path), *extra)
    assert res.returncode == 2
    assert str(path) in res.stderr and "not a folder" in res.stderr
    assert "Traceback" not in res.stderr
    assert path.read_text() == "hello"


def test_a_missing_cache_folder_is_nothing_to_validate(run_python, tmp_path):
    res = _validate(run_python, "--cache-dir", str(tmp_path / "nope"))
    assert res.returncode == 0
    assert "nothing to validate" in res.stdout
    assert not (tmp_path / "nope").exists()


def test_an_unknown_flag_is_a_usage_error(run_python):
    res = _validate(run_python, "--frobnicate")
    assert res.returncode == 2
    assert "unrecognized arguments: --frobnicate" in res.stderr


def test_a_record_with_a_nonsense_dtype_and_a_correct_sha256_is_reported_corrupt_not_a_traceback(
        run_python, cache_dir):
    from indicator_transformer.data.cache import manifest_bytes

    doc = json.loads((cache_dir / MANIFEST).read_text())
    key = sorted(doc["entries"])[1]
    doc["entries"][key]["files"]["features"]["dtype"] = "nonsense"
    (cache_dir / MANIFEST).write_bytes(manifest_bytes(doc))  # digest right: only the record is wrong

    dry = _validate(run_python, "--cache-dir", str(cache_dir), "--dry-run")
    assert dry.returncode == 1, dry.stderr
    assert "Traceback" not in dry.stderr
    assert _count(dry.stdout, "corrupt") == 1 and "dtype 'nonsense'" in dry.stdout
    fixed = _validate(run_python, "--cache-dir", str(cache_dir))
    assert fixed.returncode == 0, fixed.stderr
    assert key not in _entries(cache_dir) and len(_entries(cache_dir)) == SYMBOLS - 1


def test_clear_all_on_a_cache_folder_that_is_a_symlink_exits_2_and_says_what_to_do(run_python, cache_dir,
                                                                                 tmp_path):
    link = tmp_path / "cache_link"
    link.symlink_to(cache_dir)
    before = sorted(p.name for p in cache_dir.iterdir())
    res = _validate(run_python, "--cache-dir", str(link), "--clear-all")
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    assert f"is a symbolic link to {cache_dir}" in res.stderr
    assert f"--cache-dir {cache_dir}" in res.stderr and f"rm {link}" in res.stderr
    assert sorted(p.name for p in cache_dir.iterdir()) == before and link.is_symlink()


def test_a_dry_run_right_after_preparing_two_files_with_identical_bytes_is_clean(run_python, tmp_path):
    from conftest import write_symbol_csv

    from indicator_transformer.data.folder import discover_files
    from indicator_transformer.data.synthetic import synthetic_symbol

    data = tmp_path / "data"
    write_symbol_csv(data / "A.csv", synthetic_symbol(1, 3, 0, 300))
    (data / "B.csv").write_bytes((data / "A.csv").read_bytes())
    root = tmp_path / "cache"
    prepare(discover_files(data), FeatureConfig(window=8), FeatureCache(root).open(), show_progress=False)

    res = _validate(run_python, "--cache-dir", str(root), "--dry-run")
    assert res.returncode == 0, res.stdout
    assert _count(res.stdout, "valid") == 2 and _count(res.stdout, "orphaned") == 0
