"""Corruption fuzzing of a real cache: random damage to a data file or to the manifest is always
detected - by preparation (a warning naming the file, then the very same arrays, recomputed) and by
``validate_cache`` (exit 1 on a dry run naming the file, then repaired) - never silently used.

The default run makes 30 seeded trials; ``--run-slow`` adds 300 more.
"""

from __future__ import annotations

import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from indicator_transformer.cli.validate_cache import main as validate_main
from indicator_transformer.config import FeatureConfig
from indicator_transformer.data.cache import MANIFEST, CacheWarning, FeatureCache
from indicator_transformer.data.prepare import prepare
from indicator_transformer.data.sources import synthetic_sources

CFG = FeatureConfig(window=8)
SOURCES = synthetic_sources(3, 260, seed=12)
OPERATIONS = ("flip", "zero", "truncate", "append")


@dataclass
class Damage:
    file: str
    operation: str
    positions: list[int]

    def __str__(self) -> str:
        return f"{self.operation} {self.positions} in {self.file}"


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, dict[str, tuple[np.ndarray, ...]]]:
    """A real prepared cache, and every symbol's arrays copied out of it."""
    root = tmp_path_factory.mktemp("fuzz") / "cache"
    result = prepare(SOURCES, CFG, FeatureCache(root).open(), show_progress=False)
    arrays = {s.symbol: (np.array(s.features), np.array(s.label), np.array(s.time)) for s in result.symbols}
    return root, arrays


def _damage(root: Path, rng: np.random.Generator) -> Damage:
    """Flip, zero, cut or add 1-3 bytes of a random data file (or, one time in four, the manifest)."""
    data_files = sorted(p.name for p in root.glob("*.npy"))
    name = MANIFEST if rng.random() < 0.25 else data_files[rng.integers(len(data_files))]
    path = root / name
    data = bytearray(path.read_bytes())
    k = int(rng.integers(1, 4))
    op = OPERATIONS[rng.integers(len(OPERATIONS))]
    if op == "flip":
        positions = sorted(int(i) for i in rng.choice(len(data), size=k, replace=False))
        for i in positions:
            data[i] ^= int(rng.integers(1, 256))
    elif op == "zero":
        nonzero = np.flatnonzero(np.frombuffer(bytes(data), dtype=np.uint8))
        positions = sorted(int(i) for i in rng.choice(nonzero, size=k, replace=False))
        for i in positions:
            data[i] = 0
    elif op == "truncate":
        positions = list(range(len(data) - k, len(data)))
        del data[-k:]
    else:
        positions = list(range(len(data), len(data) + k))
        data += bytes(int(b) for b in rng.integers(0, 256, size=k))
    assert bytes(data) != path.read_bytes()
    path.write_bytes(bytes(data))
    return Damage(name, op, positions)


def _trial(reference, tmp_path: Path, seed: int, capsys) -> list[str]:
    """One damaged copy; returns what went wrong (empty: detected by both, nothing used)."""
    root, expected = reference
    rng = np.random.default_rng([2024, seed])
    work = tmp_path / f"trial{seed}"
    shutil.copytree(root, work / "prepare")
    damage = _damage(work / "prepare", rng)
    shutil.copytree(work / "prepare", work / "validate")  # the same damage, for the validator
    failures = []

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = prepare(SOURCES, CFG, FeatureCache(work / "prepare").open(), show_progress=False)
    named = [str(w.message) for w in caught if issubclass(w.category, CacheWarning)
             and damage.file in str(w.message)]
    if not named:
        failures.append(f"{damage}: no warning named {damage.file}")
    if [s.symbol for s in result.symbols] != sorted(expected):
        failures.append(f"{damage}: prepared {[s.symbol for s in result.symbols]}")
    for s in result.symbols:
        for got, want in zip((s.features, s.label, s.time), expected[s.symbol], strict=True):
            # NaN labels (the last bars have no forward return) are equal to themselves here
            if got.dtype != want.dtype or not np.array_equal(got, want, equal_nan=got.dtype.kind == "f"):
                failures.append(f"{damage}: {s.symbol}'s arrays differ from the undamaged cache's")
    if FeatureCache(work / "prepare").validate_full(fix=False).problems:
        failures.append(f"{damage}: the cache is not consistent after the recompute")

    capsys.readouterr()
    code = validate_main(["--cache-dir", str(work / "validate"), "--dry-run"])
    out = capsys.readouterr().out
    if code != 1 or damage.file not in out:
        failures.append(f"{damage}: validate_cache --dry-run exited {code} without naming it:\n{out}")
    if validate_main(["--cache-dir", str(work / "validate")]) != 0 or \
            validate_main(["--cache-dir", str(work / "validate"), "--dry-run"]) != 0:
        failures.append(f"{damage}: validate_cache did not repair it")
    capsys.readouterr()
    shutil.rmtree(work)
    return failures


def _campaign(reference, tmp_path, capsys, seeds: range) -> None:
    failures = [f for seed in seeds for f in _trial(reference, tmp_path, seed, capsys)]
    detected = len(seeds) - len({f.split(":")[0] for f in failures})
    with capsys.disabled():
        print(f"\ncache corruption fuzz: {detected}/{len(seeds)} damaged caches detected "
              f"({100 * detected / len(seeds):.0f}%)")
    assert not failures, "\n".join(failures)


def test_random_damage_to_a_cache_file_is_always_detected_and_never_used(reference, tmp_path, capsys):
    _campaign(reference, tmp_path, capsys, range(30))


@pytest.mark.slow
def test_random_damage_to_a_cache_file_is_always_detected_and_never_used_long(reference, tmp_path, capsys):
    _campaign(reference, tmp_path, capsys, range(1000, 1300))
