"""cache.py: the manifest is the commit record; damaged, hostile or stray files are never used."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest

from indicator_transformer.config import FeatureConfig
from indicator_transformer.data.cache import MANIFEST, CacheWarning, FeatureCache, cache_key
from indicator_transformer.data.features import compute_features
from indicator_transformer.data.prepare import prepare
from indicator_transformer.data.sources import Source, synthetic_sources, synthetic_symbol
from indicator_transformer.errors import UserError

NAMES = list(FeatureConfig().features)


def _entry(symbol_index: int = 0, bars: int = 300, horizon: int = 1):
    src = synthetic_sources(symbol_index + 1, bars, seed=2)[symbol_index]
    fs = compute_features(src.load(), NAMES, horizon)
    return src, cache_key(src.identity(), NAMES, horizon), fs


def _manifest(root: Path) -> dict:
    return json.loads((root / MANIFEST).read_text())


def _data_file(root: Path, key: str, part: str = "features") -> Path:
    return root / _manifest(root)["entries"][key]["files"][part]["name"]


def test_a_committed_entry_is_a_hit_for_a_new_cache_with_identical_memory_mapped_arrays(tmp_path):
    src, key, fs = _entry()
    cache = FeatureCache(tmp_path).open()
    cache.put(key, src.symbol, fs)
    assert cache.pending == 1
    assert cache.commit() == 1
    assert cache.pending == 0

    reopened = FeatureCache(tmp_path).open()
    got = reopened.get(key)
    assert got is not None
    for part, expected in (("features", fs.features), ("label", fs.label), ("time", fs.time)):
        assert isinstance(got[part], np.memmap), part
        assert not got[part].flags.writeable
        np.testing.assert_array_equal(got[part], expected)
    assert reopened.entries[key]["symbol"] == src.symbol


def test_the_data_files_hold_no_pickle_and_the_manifest_records_their_hashes(tmp_path):
    src, key, fs = _entry()
    cache = FeatureCache(tmp_path).open()
    cache.put(key, src.symbol, fs)
    cache.commit()
    entry = _manifest(tmp_path)["entries"][key]
    for part in ("features", "label", "time"):
        meta = entry["files"][part]
        path = tmp_path / meta["name"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == meta["sha256"]
        assert path.stat().st_size == meta["bytes"]
        np.load(path, allow_pickle=False)  # loads without pickle


def test_the_key_changes_with_the_input_bytes_the_features_and_the_horizon(tmp_path):
    x = synthetic_symbol(1, 0, 0, 50)
    a, b = tmp_path / "A.csv", tmp_path / "B.csv"
    text = "date,open,high,low,close,volume\n" + "".join(
        f"2024-01-{i + 1:02d},{o},{h},{lo},{c},{v}\n"
        for i, (o, h, lo, c, v) in enumerate(zip(x.open[:20], x.high[:20], x.low[:20], x.close[:20],
                                                 x.volume[:20], strict=True)))
    a.write_text(text)
    b.write_text(text.replace(f"{x.close[5]}", f"{x.close[5] * 1.0001}", 1))
    ida, idb = Source("A", path=a).identity(), Source("A", path=b).identity()

    base = cache_key(ida, NAMES, 1)
    assert cache_key(ida, NAMES, 1) == base
    assert cache_key(idb, NAMES, 1) != base
    assert cache_key(ida, NAMES[:-1], 1) != base
    assert cache_key(ida, list(reversed(NAMES)), 1) != base
    assert cache_key(ida, NAMES, 5) != base


def test_a_truncated_data_file_is_dropped_on_open_with_a_warning_and_recomputed(tmp_path):
    sources = synthetic_sources(3, 300, seed=2)
    cfg = FeatureConfig(window=8)
    first = prepare(sources, cfg, FeatureCache(tmp_path).open(), show_progress=False)
    victim = first.symbols[1]
    path = _data_file(tmp_path, victim.key)
    good_bytes = path.read_bytes()
    path.write_bytes(good_bytes[: len(good_bytes) // 2])

    with pytest.warns(CacheWarning, match=f"{victim.symbol}.*recomputed"):
        cache = FeatureCache(tmp_path).open()
    assert victim.key not in cache.entries
    assert cache.get(victim.key) is None

    again = prepare(sources, cfg, cache, show_progress=False)
    assert (again.hits, again.misses) == (2, 1)
    assert path.read_bytes() == good_bytes
    report = FeatureCache(tmp_path).validate_full(fix=False)
    assert len(report.valid) == 3 and report.consistent


@pytest.mark.parametrize("garbage", [b"{not json", b"\x00\xff\xfe garbage", b"[1, 2, 3]",
                                     b'{"format_version": 999, "entries": {}}', b""])
def test_a_corrupt_manifest_gives_a_warning_and_an_empty_cache_not_a_crash(tmp_path, garbage):
    src, key, fs = _entry()
    cache = FeatureCache(tmp_path).open()
    cache.put(key, src.symbol, fs)
    cache.commit()
    (tmp_path / MANIFEST).write_bytes(garbage)

    with pytest.warns(CacheWarning, match="manifest"):
        reopened = FeatureCache(tmp_path).open()
    assert reopened.entries == {}
    assert reopened.get(key) is None
    # and it heals: the next commit writes a readable manifest
    reopened.put(key, src.symbol, fs)
    reopened.commit()
    assert key in _manifest(tmp_path)["entries"]


def test_open_removes_temp_files_of_dead_writers_and_keeps_those_of_live_ones(tmp_path, spawn):
    proc = subprocess.Popen(["true"])
    proc.wait()
    live = spawn(["-c", "import time; time.sleep(60)"])
    dead_tmp = tmp_path / f".AAA-abc.features.npy.{proc.pid}.deadbeef.tmp"
    live_tmp = tmp_path / f".BBB-abc.features.npy.{live.pid}.0badf00d.tmp"
    dead_tmp.write_bytes(b"\x93NUMPY partial")
    live_tmp.write_bytes(b"\x93NUMPY partial")

    FeatureCache(tmp_path).open()

    assert not dead_tmp.exists()
    assert live_tmp.exists()


def test_entries_not_listed_in_the_manifest_are_never_used(tmp_path):
    src, key, fs = _entry()
    writer = FeatureCache(tmp_path).open()
    writer.put(key, src.symbol, fs)  # data files in place, but no commit: a crash before the manifest
    assert any(p.name.endswith(".features.npy") for p in tmp_path.iterdir())

    reader = FeatureCache(tmp_path).open()
    assert reader.get(key) is None
    result = prepare([src], FeatureConfig(window=8), reader, show_progress=False)
    assert (result.hits, result.misses) == (0, 1)


def test_commit_merges_entries_that_another_writer_committed_meanwhile(tmp_path):
    one, two = FeatureCache(tmp_path).open(), FeatureCache(tmp_path).open()
    s0, k0, f0 = _entry(0)
    s1, k1, f1 = _entry(1)
    one.put(k0, s0.symbol, f0)
    two.put(k1, s1.symbol, f1)
    one.commit()
    two.commit()  # must not drop one's entry
    assert set(_manifest(tmp_path)["entries"]) == {k0, k1}
    assert set(FeatureCache(tmp_path).open().entries) == {k0, k1}


class _Evil:
    """An object whose unpickling runs code (here: creates a folder named by ``marker``)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def _plant_pickle(root: Path, key: str, marker: Path) -> Path:
    """Replace an entry's features file by an object array and make the manifest agree with it."""
    doc = _manifest(root)
    meta = doc["entries"][key]["files"]["features"]
    path = root / meta["name"]
    np.save(path, np.array([_Evil(str(marker))], dtype=object), allow_pickle=True)
    data = path.read_bytes()
    meta.update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest(), dtype="object", shape=[1])
    (root / MANIFEST).write_text(json.dumps(doc))
    return path


def test_a_pickled_object_array_under_an_entry_name_is_refused_and_never_executed(tmp_path):
    src, key, fs = _entry()
    cache = FeatureCache(tmp_path).open()
    cache.put(key, src.symbol, fs)
    cache.commit()
    marker = tmp_path / "pwned"
    hostile = _plant_pickle(tmp_path, key, marker)
    # The planted file is really hostile: a loader allowing pickle would run its payload.
    proof = tmp_path / "proof"
    np.save(tmp_path / "proof.npy", np.array([_Evil(str(proof))], dtype=object), allow_pickle=True)
    np.load(tmp_path / "proof.npy", allow_pickle=True)
    assert proof.is_dir()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reader = FeatureCache(tmp_path).open()
        assert key in reader.entries  # sizes match: the cheap check cannot tell
        assert reader.get(key) is None
    assert any(issubclass(w.category, CacheWarning) and "unreadable" in str(w.message) for w in caught)
    assert not marker.exists()

    report = FeatureCache(tmp_path).validate_full()
    assert report.corrupt == [key]
    assert not hostile.exists()
    assert not marker.exists()


_CONCURRENT_PREPARER = r"""
import sys, time
from pathlib import Path
from indicator_transformer.config import FeatureConfig
from indicator_transformer.data.cache import FeatureCache
from indicator_transformer.data.prepare import prepare
from indicator_transformer.data.sources import synthetic_sources

root, lo, hi, go = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
sources = synthetic_sources(90, 500, seed=4)[lo:hi]
print("ready", flush=True)
while not go.exists():
    time.sleep(0.005)
cfg = FeatureConfig(window=8)
# Several small preparations, so the two processes commit the manifest many times each.
for i in range(0, len(sources), 6):
    cache = FeatureCache(root).open()
    prepare(sources[i:i + 6], cfg, cache, workers=2, show_progress=False)
print("done", flush=True)
"""


def test_two_processes_preparing_one_cache_at_once_leave_a_consistent_cache_of_both(tmp_path, spawn):
    root, go = tmp_path / "cache", tmp_path / "go"
    procs = [spawn(["-c", _CONCURRENT_PREPARER, str(root), "0", "60", str(go)]),
             spawn(["-c", _CONCURRENT_PREPARER, str(root), "30", "90", str(go)])]
    for p in procs:
        assert p.stdout.readline().strip() == "ready"
    go.touch()
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        assert out.strip() == "done"

    report = FeatureCache(root).validate_full(fix=False)
    assert report.consistent, report
    assert len(report.valid) == 90
    symbols = {e["symbol"] for e in _manifest(root)["entries"].values()}
    assert symbols == {s.symbol for s in synthetic_sources(90, 500, seed=4)}
    assert not [p for p in root.iterdir() if p.name.endswith(".tmp")]


def test_validate_full_finds_corrupt_missing_and_orphaned_files_and_repairs_the_manifest(tmp_path):
    sources = synthetic_sources(4, 300, seed=2)
    result = prepare(sources, FeatureConfig(window=8), FeatureCache(tmp_path).open(), show_progress=False)
    k_corrupt, k_missing = result.symbols[0].key, result.symbols[1].key
    flipped = _data_file(tmp_path, k_corrupt, "label")
    data = bytearray(flipped.read_bytes())
    data[-5] ^= 0xFF  # same size, different bytes: only the hash can tell
    flipped.write_bytes(bytes(data))
    _data_file(tmp_path, k_missing, "time").unlink()
    orphan = tmp_path / f"ZZZ-{'ab' * 32}.features.npy"  # a data-file name the cache writes
    orphan.write_bytes(b"stray")

    dry = FeatureCache(tmp_path).validate_full(fix=False)
    assert (dry.corrupt, dry.missing, dry.orphaned) == ([k_corrupt], [k_missing], [orphan])
    assert flipped.exists() and orphan.exists()

    report = FeatureCache(tmp_path).validate_full()
    assert (report.corrupt, report.missing, report.orphaned) == ([k_corrupt], [k_missing], [orphan])
    assert not flipped.exists() and not orphan.exists()
    assert set(_manifest(tmp_path)["entries"]) == {s.key for s in result.symbols[2:]}
    assert FeatureCache(tmp_path).validate_full().consistent


def test_clear_all_removes_the_whole_cache_folder(tmp_path):
    root = tmp_path / "cache"
    prepare(synthetic_sources(2, 300, seed=2), FeatureConfig(window=8), FeatureCache(root).open(),
            show_progress=False)
    files, nbytes = FeatureCache(root).clear_all()
    assert files >= 7 and nbytes > 0
    assert not root.exists()
    assert FeatureCache(root).clear_all() == (0, 0)


def test_a_warm_start_with_nothing_new_leaves_the_committed_manifest_untouched(tmp_path):
    sources = synthetic_sources(3, 300, seed=2)
    prepare(sources, FeatureConfig(window=8), FeatureCache(tmp_path).open(), show_progress=False)
    before = (tmp_path / MANIFEST).stat()

    warm = prepare(sources, FeatureConfig(window=8), FeatureCache(tmp_path).open(), show_progress=False)

    assert warm.hits == 3
    after = (tmp_path / MANIFEST).stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # not rewritten


def test_clear_all_refuses_a_path_that_is_not_a_cache_folder(tmp_path):
    stray = tmp_path / "file.txt"
    stray.write_text("x")
    with pytest.raises(UserError, match="not a folder"):
        FeatureCache(stray).clear_all()
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "AAA-1.features.npy").write_bytes(b"x")
    (mixed / "sub").mkdir()
    with pytest.raises(UserError, match="does not look like a feature cache"):
        FeatureCache(mixed).clear_all()
    assert (mixed / "AAA-1.features.npy").exists() and stray.exists()


@pytest.mark.parametrize("name", ["../victim.txt", "/ABS/victim.txt", "victim.txt", 7])
def test_a_manifest_naming_a_file_outside_the_cache_never_gets_it_read_or_deleted(tmp_path, name):
    root = tmp_path / "cache"
    src, key, fs = _entry()
    cache = FeatureCache(root).open()
    cache.put(key, src.symbol, fs)
    cache.commit()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    doc = _manifest(root)
    target = str(victim) if name == "/ABS/victim.txt" else name
    doc["entries"][key]["files"]["label"]["name"] = target
    (root / MANIFEST).write_text(json.dumps(doc))

    with pytest.warns(CacheWarning, match="malformed"):
        assert FeatureCache(root).open().get(key) is None
    report = FeatureCache(root).validate_full()
    assert report.corrupt == [key]
    assert victim.read_text() == "precious"


def test_validating_a_folder_that_is_not_a_cache_refuses_and_writes_nothing(tmp_path):
    folder = tmp_path / "userdata"
    folder.mkdir()
    (folder / "embeddings.npy").write_bytes(b"not ours")
    (folder / "notes.md").write_text("x")
    with pytest.raises(UserError, match="does not look like a feature cache"):
        FeatureCache(folder).validate_full()
    with pytest.raises(UserError, match="does not look like a feature cache"):
        FeatureCache(folder).clear_all()
    assert sorted(p.name for p in folder.iterdir()) == ["embeddings.npy", "notes.md"]
