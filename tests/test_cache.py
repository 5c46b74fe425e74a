"""cache.py: the manifest is the commit record; damaged, hostile or stray files are never used."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest

from indicator_transformer.config import FeatureConfig
from indicator_transformer.data.cache import MANIFEST, CacheWarning, FeatureCache, cache_key, manifest_bytes
from indicator_transformer.data.features import compute_features
from indicator_transformer.data.prepare import feature_settings, prepare
from indicator_transformer.data.sources import Source, synthetic_sources
from indicator_transformer.data.synthetic import synthetic_symbol
from indicator_transformer.errors import UserError

NAMES = list(FeatureConfig().features)


def _settings(names: list[str] = NAMES, horizon: int = 1, use_adj_close: bool = False) -> dict:
    return feature_settings(FeatureConfig(features=list(names), horizon=horizon), use_adj_close)


def _entry(symbol_index: int = 0, bars: int = 300, horizon: int = 1):
    src = synthetic_sources(symbol_index + 1, bars, seed=2)[symbol_index]
    fs = compute_features(src.load(), NAMES, horizon)
    return src, cache_key(src.identity(), src.symbol, _settings(horizon=horizon)), fs


def _manifest(root: Path) -> dict:
    return json.loads((root / MANIFEST).read_text())


def _write_manifest(root: Path, doc: dict) -> None:
    """Write a changed manifest as the cache would (digest and canonical form included): a
    deliberately forged record, which only the record checks can refuse."""
    (root / MANIFEST).write_bytes(manifest_bytes(doc))


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


def test_an_entry_is_one_file_of_three_npy_arrays_without_pickle_whose_hash_the_manifest_records(tmp_path):
    src, key, fs = _entry()
    cache = FeatureCache(tmp_path).open()
    cache.put(key, src.symbol, fs)
    cache.commit()
    entry = _manifest(tmp_path)["entries"][key]
    (path,) = {tmp_path / meta["name"] for meta in entry["files"].values()}
    assert [p.name for p in tmp_path.glob("*.npy")] == [path.name]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["data"]["sha256"]
    assert path.stat().st_size == entry["data"]["bytes"]
    with open(path, "rb") as fh:  # the arrays load one after the other, without pickle
        for part, expected in (("time", fs.time), ("features", fs.features), ("label", fs.label)):
            np.testing.assert_array_equal(np.load(fh, allow_pickle=False), expected)
            # each array's data starts aligned to its item size: views of one map need no copy
            assert entry["files"][part]["offset"] % expected.dtype.itemsize == 0
        assert fh.read() == b""
    got = FeatureCache(tmp_path).open().get(key)
    assert all(got[p].flags.aligned and got[p].flags.c_contiguous for p in got)


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

    base = cache_key(ida, "A", _settings())
    assert cache_key(ida, "A", _settings()) == base
    assert cache_key(idb, "A", _settings()) != base
    assert cache_key(ida, "B", _settings()) != base
    assert cache_key(ida, "A", _settings(NAMES[:-1])) != base
    assert cache_key(ida, "A", _settings(list(reversed(NAMES)))) != base
    assert cache_key(ida, "A", _settings(horizon=5)) != base
    assert cache_key(ida, "A", _settings(use_adj_close=True)) != base


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
    assert any(p.name.endswith(".entry.npy") for p in tmp_path.iterdir())

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
    """Replace an entry's file by an object array and make the manifest agree with it."""
    doc = _manifest(root)
    entry = doc["entries"][key]
    meta = entry["files"]["time"]  # the file's first array
    path = root / meta["name"]
    np.save(path, np.array([_Evil(str(marker))], dtype=object), allow_pickle=True)
    data = path.read_bytes()
    entry["data"].update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    entry["data"]["sig"]["size"] = len(data)
    meta.update(dtype="object", shape=[1])
    _write_manifest(root, doc)
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
        assert key not in reader.entries  # the record's dtype is not the one the cache writes
        assert reader.get(key) is None
    assert any(issubclass(w.category, CacheWarning) and "dtype 'object'" in str(w.message) for w in caught)
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
from indicator_transformer.data.prepare import feature_settings, prepare
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
    assert files >= 4 and nbytes > 0  # a data file per symbol, the manifest, the lock
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
    _write_manifest(root, doc)

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


# --------------------------------------------------------------------------- malformed records
def _prepared(root: Path, symbols: int = 3) -> tuple[list, dict]:
    """A real cache of a few synthetic symbols; returns (sources, symbol -> arrays copied out)."""
    sources = synthetic_sources(symbols, 300, seed=2)
    result = prepare(sources, FeatureConfig(window=8), FeatureCache(root).open(), show_progress=False)
    return sources, {s.symbol: (s.key, np.array(s.features), np.array(s.label), np.array(s.time))
                     for s in result.symbols}


def _assert_same_arrays(result, expected: dict) -> None:
    assert {s.symbol for s in result.symbols} == set(expected)
    for s in result.symbols:
        _, features, label, time = expected[s.symbol]
        np.testing.assert_array_equal(s.features, features)
        np.testing.assert_array_equal(s.label, label)
        np.testing.assert_array_equal(s.time, time)


def _set(path: list, value):
    """A record change: set entry[path...] = value (None as the last key deletes it)."""
    def change(key: str, entry: dict) -> None:
        target = entry
        for k in path[:-1]:
            target = target[k]
        if value is _DELETE:
            del target[path[-1]]
        else:
            target[path[-1]] = value(key, entry) if callable(value) else value
    return change


_DELETE = object()
MALFORMED = {
    "dtype nonsense": _set(["files", "features", "dtype"], "nonsense"),
    "dtype object": _set(["files", "features", "dtype"], "object"),
    "dtype float64 (not what the cache writes)": _set(["files", "label", "dtype"], "float64"),
    "dtype not a string": _set(["files", "time", "dtype"], 8),
    "absurd shape": _set(["files", "features", "shape"], [10**30, 25]),
    "negative shape": _set(["files", "features", "shape"], [-1, 25]),
    "shape not a list": _set(["files", "label", "shape"], "(5,)"),
    "shape of booleans": _set(["files", "label", "shape"], [True]),
    "shape of the wrong rank": _set(["files", "features", "shape"], [10]),
    "negative bytes": _set(["data", "bytes"], -1),
    "bytes not a number": _set(["data", "bytes"], "1 MB"),
    "bytes that do not fit the shape": _set(["data", "bytes"], 10**9),
    "bytes a little more than the file": _set(["data", "bytes"], lambda k, e: e["data"]["bytes"] + 64),
    "data not an object": _set(["data"], "sha256"),
    "name not a string": _set(["files", "label", "name"], 7),
    "name with ../": _set(["files", "label", "name"], lambda k, e: "../" + e["files"]["label"]["name"]),
    "name of another entry": _set(["files", "label", "name"],
                                  lambda k, e: e["files"]["time"]["name"].replace(k, "0" * 64)),
    "offset missing": _set(["files", "features", "offset"], _DELETE),
    "offset inside the previous array": _set(["files", "features", "offset"],
                                             lambda k, e: e["files"]["time"]["offset"] + 8),
    "offset not aligned": _set(["files", "label", "offset"], lambda k, e: e["files"]["label"]["offset"] + 2),
    "offset past the header limit": _set(["files", "label", "offset"], 10**9),
    "sha256 not hex": _set(["data", "sha256"], "z" * 64),
    "sha256 missing": _set(["data", "sha256"], _DELETE),
    "stat signature malformed": _set(["data", "sig"], {"size": "big"}),
    "rows negative": _set(["rows"], -1),
    "rows a string": _set(["rows"], "300"),
    "input_rows below rows": _set(["input_rows"], 3),
    "symbol not a string": _set(["symbol"], ["S"]),
    "a file part missing": _set(["files", "time"], _DELETE),
    "an extra file part": _set(["files", "extra"], lambda k, e: dict(e["files"]["time"])),
    "files not an object": _set(["files"], "features,label,time"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_manifest_record_is_reported_corrupt_and_recomputed_never_a_traceback(
        tmp_path, capsys, case):
    from indicator_transformer.cli.validate_cache import main as validate_main

    root = tmp_path / "cache"
    sources, expected = _prepared(root)
    victim_key = expected["SYN001"][0]
    doc = _manifest(root)
    MALFORMED[case](victim_key, doc["entries"][victim_key])
    _write_manifest(root, doc)  # a self-consistent manifest (right digest) with one bad record

    with pytest.warns(CacheWarning, match=victim_key[:12] + ".*recomputed"):
        cache = FeatureCache(root).open()
    result = prepare(sources, FeatureConfig(window=8), cache, show_progress=False)
    _assert_same_arrays(result, expected)
    assert (result.hits, result.misses) == (2, 1)

    _write_manifest(root, doc)  # damage it again for the validator
    assert validate_main(["--cache-dir", str(root), "--dry-run"]) == 1
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    assert re.search(rf"corrupt: entry .* \({victim_key[:12]}\)", out), out
    assert validate_main(["--cache-dir", str(root)]) == 0
    assert validate_main(["--cache-dir", str(root), "--dry-run"]) == 0
    assert set(_manifest(root)["entries"]) == {expected["SYN000"][0], expected["SYN002"][0]}


@pytest.mark.parametrize("garbage", [[1, 2], "entry", None, 5])
def test_an_entry_that_is_not_an_object_or_a_key_that_is_not_a_digest_is_corrupt(tmp_path, garbage):
    root = tmp_path / "cache"
    _, expected = _prepared(root)
    doc = _manifest(root)
    doc["entries"]["not-a-key"] = garbage
    doc["entries"]["a" * 64] = garbage
    _write_manifest(root, doc)
    with pytest.warns(CacheWarning):
        cache = FeatureCache(root).open()
    assert set(cache.entries) == {k for k, *_ in expected.values()}
    report = FeatureCache(root).validate_full(fix=False)
    assert sorted(report.corrupt) == sorted(["not-a-key", "a" * 64])
    assert FeatureCache(root).validate_full().corrupt and FeatureCache(root).validate_full().consistent


# --------------------------------------------------------------------------- verified on a warm start
def test_a_byte_flipped_in_a_data_file_after_commit_is_detected_on_a_warm_start_and_recomputed(tmp_path):
    root = tmp_path / "cache"
    sources, expected = _prepared(root)
    victim = _data_file(root, expected["SYN002"][0], "features")
    data = bytearray(victim.read_bytes())
    data[-7] ^= 0x01  # one bit of one feature value: same size, a valid .npy
    victim.write_bytes(bytes(data))

    with pytest.warns(CacheWarning, match=re.escape(str(victim)) + r".*damaged"):
        result = prepare(sources, FeatureConfig(window=8), FeatureCache(root).open(), show_progress=False)
    assert (result.hits, result.misses) == (2, 1)
    _assert_same_arrays(result, expected)
    assert FeatureCache(root).validate_full(fix=False).consistent


def test_an_intact_file_with_a_new_stat_signature_is_hashed_once_and_its_signature_refreshed(tmp_path):
    root = tmp_path / "cache"
    sources, expected = _prepared(root)
    copy = tmp_path / "copied"
    shutil.copytree(root, copy)  # new inodes and times: every signature differs, every byte is intact

    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)
        first = prepare(sources, FeatureConfig(window=8), FeatureCache(copy).open(), show_progress=False)
    assert (first.hits, first.misses) == (3, 0)
    _assert_same_arrays(first, expected)
    for entry in _manifest(copy)["entries"].values():
        st = os.lstat(copy / entry["files"]["features"]["name"])
        assert entry["data"]["sig"] == {"size": st.st_size, "mtime_ns": st.st_mtime_ns,
                                        "ctime_ns": st.st_ctime_ns, "ino": st.st_ino}
    before = (copy / MANIFEST).stat()
    cache = FeatureCache(copy).open()
    assert set(cache._verified) == set(cache.entries)  # signatures match now: nothing to hash
    second = prepare(sources, FeatureConfig(window=8), cache, show_progress=False)
    assert second.hits == 3
    assert (copy / MANIFEST).stat().st_mtime_ns == before.st_mtime_ns


@pytest.mark.parametrize("edit", ["a number changed", "a space added", "the digest changed",
                                  "the trailing newline removed"])
def test_a_manifest_edited_into_other_valid_json_is_detected_and_everything_recomputed(tmp_path, edit):
    root = tmp_path / "cache"
    sources, expected = _prepared(root)
    text = (root / MANIFEST).read_text()
    if edit == "a number changed":
        doc = _manifest(root)
        next(iter(doc["entries"].values()))["input_rows"] += 1
        text = json.dumps(doc, indent=2, sort_keys=True) + "\n"
    elif edit == "a space added":
        text = text.replace('"entries":{', '"entries": {', 1)
    elif edit == "the digest changed":
        doc = _manifest(root)
        doc["digest"] = "0" * 64
        text = json.dumps(doc, indent=2, sort_keys=True) + "\n"
    else:
        text = text.rstrip("\n")
    json.loads(text)  # still valid JSON
    (root / MANIFEST).write_text(text)

    with pytest.warns(CacheWarning, match=re.escape(str(root / MANIFEST)) + ".*digest"):
        result = prepare(sources, FeatureConfig(window=8), FeatureCache(root).open(), show_progress=False)
    assert (result.hits, result.misses) == (0, 3)
    _assert_same_arrays(result, expected)
    assert FeatureCache(root).validate_full(fix=False).consistent


def test_validate_reports_a_manifest_whose_digest_does_not_match(tmp_path):
    root = tmp_path / "cache"
    _prepared(root)
    (root / MANIFEST).write_text((root / MANIFEST).read_text().replace('"rows":', '"rows": ', 1))
    report = FeatureCache(root).validate_full(fix=False)
    assert not report.consistent and "digest" in report.manifest_problem
    assert any(str(root / MANIFEST) in line for line in report.problems)


def test_an_old_format_manifest_is_a_clean_recompute_with_a_warning_and_its_files_are_removed(tmp_path):
    root = tmp_path / "cache"
    sources, expected = _prepared(root)
    old_names = []
    doc = _manifest(root)
    for key, entry in doc["entries"].items():  # what version 2 wrote: one file per array
        old_key = hashlib.sha256(key.encode()).hexdigest()
        arrays = expected[entry["symbol"]][1:]
        for part, arr in zip(("features", "label", "time"), arrays, strict=True):
            name = f"{entry['symbol']}-{old_key}.{part}.npy"
            np.save(root / name, arr, allow_pickle=False)
            entry["files"][part]["name"] = name
            old_names.append(name)
    for p in root.glob("*.npy"):
        if p.name not in old_names:
            p.unlink()
    (root / MANIFEST).write_text(json.dumps({"format_version": 2, "entries": doc["entries"], "inputs": {}}))

    with pytest.warns(CacheWarning, match="format_version 2 is not 3.*older version"):
        result = prepare(sources, FeatureConfig(window=8), FeatureCache(root).open(), show_progress=False)
    assert (result.hits, result.misses) == (0, 3)
    _assert_same_arrays(result, expected)
    assert not [n for n in old_names if (root / n).exists()]
    assert FeatureCache(root).validate_full(fix=False).consistent


# --------------------------------------------------------------------------- symbolic links
def test_a_data_file_replaced_by_a_link_to_identical_bytes_elsewhere_is_not_trusted_nor_written_through(
        tmp_path):
    root = tmp_path / "cache"
    sources, expected = _prepared(root)
    victim = _data_file(root, expected["SYN000"][0], "label")
    outside = tmp_path / "outside.npy"
    outside_bytes = victim.read_bytes()
    outside.write_bytes(outside_bytes)  # the very same bytes: only the link is wrong
    victim.unlink()
    victim.symlink_to(outside)

    with pytest.warns(CacheWarning, match=re.escape(str(victim)) + ".*symbolic link"):
        result = prepare(sources, FeatureConfig(window=8), FeatureCache(root).open(), show_progress=False)
    assert result.misses == 1
    _assert_same_arrays(result, expected)
    assert not victim.is_symlink()  # replaced by a real file, by rename
    assert outside.read_bytes() == outside_bytes  # never written through the link


def test_validate_never_follows_links_inside_the_cache_and_removes_only_the_links(tmp_path):
    root = tmp_path / "cache"
    _, expected = _prepared(root)
    precious = tmp_path / "precious.bin"
    precious.write_bytes(b"keep me")
    listed = _data_file(root, expected["SYN000"][0], "time")
    listed.unlink()
    listed.symlink_to(precious)
    orphan = root / f"ZZZ-{'ef' * 32}.label.npy"
    orphan.symlink_to(precious)
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "inside.txt").write_text("keep me too")
    dir_link = root / f"YYY-{'ab' * 32}.features.npy"
    dir_link.symlink_to(folder)

    dry = FeatureCache(root).validate_full(fix=False)
    assert dry.corrupt == [expected["SYN000"][0]]
    assert sorted(dry.orphaned) == sorted([orphan, dir_link])
    report = FeatureCache(root).validate_full()
    assert report.corrupt == [expected["SYN000"][0]]
    assert not listed.is_symlink() and not orphan.is_symlink() and not dir_link.is_symlink()
    assert precious.read_bytes() == b"keep me"
    assert (folder / "inside.txt").read_text() == "keep me too"
    assert FeatureCache(root).validate_full(fix=False).consistent


def test_a_manifest_or_lock_file_that_is_a_link_is_neither_read_nor_written_through(tmp_path):
    root = tmp_path / "cache"
    sources, expected = _prepared(root)
    outside_manifest = tmp_path / "their_manifest.json"
    outside_manifest.write_bytes((root / MANIFEST).read_bytes())  # even a valid one is not trusted
    (root / MANIFEST).unlink()
    (root / MANIFEST).symlink_to(outside_manifest)
    outside_lock = tmp_path / "their.lock"
    outside_lock.write_text("not yours")
    (root / ".lock").unlink(missing_ok=True)
    (root / ".lock").symlink_to(outside_lock)
    manifest_before = outside_manifest.read_bytes()

    with pytest.warns(CacheWarning, match="symbolic link"):
        result = prepare(sources, FeatureConfig(window=8), FeatureCache(root).open(), show_progress=False)
    _assert_same_arrays(result, expected)
    assert not (root / MANIFEST).is_symlink() and not (root / ".lock").is_symlink()
    assert outside_manifest.read_bytes() == manifest_before
    assert outside_lock.read_text() == "not yours"
    assert FeatureCache(root).validate_full(fix=False).consistent


def test_clear_all_refuses_a_cache_folder_that_is_a_symlink_and_deletes_nothing(tmp_path):
    real = tmp_path / "big_disk" / "cache"
    _prepared(real)
    link = tmp_path / "cache"
    link.symlink_to(real)
    before = sorted(p.name for p in real.iterdir())
    with pytest.raises(UserError, match=f"is a symbolic link to {re.escape(str(real))}.*--cache-dir"):
        FeatureCache(link).clear_all()
    assert sorted(p.name for p in real.iterdir()) == before and link.is_symlink()


def test_clear_all_removes_links_inside_the_cache_but_never_what_they_point_to(tmp_path):
    root = tmp_path / "cache"
    _prepared(root)
    precious = tmp_path / "precious.bin"
    precious.write_bytes(b"keep me")
    (root / f"ZZZ-{'ef' * 32}.label.npy").symlink_to(precious)
    FeatureCache(root).clear_all()
    assert not root.exists() and precious.read_bytes() == b"keep me"


def test_opening_a_cache_path_that_is_a_regular_file_is_a_user_error_not_a_traceback(tmp_path):
    path = tmp_path / "cache"
    path.write_text("not a folder")
    with pytest.raises(UserError, match="is not a folder"):
        FeatureCache(path).open()
    assert path.read_text() == "not a folder"


@pytest.mark.parametrize(("part", "shift"), [("time", 8), ("label", -64), ("features", 16)])
def test_a_resealed_manifest_whose_array_offset_was_moved_is_never_read_at_the_shifted_place(
        tmp_path, part, shift):
    # The manifest's digest detects damage, not a deliberate edit that recomputes it: the warm
    # path must still not read an array where the file does not have one.
    root = tmp_path / "cache"
    sources, expected = _prepared(root)
    doc = _manifest(root)
    key = expected["SYN002"][0]
    doc["entries"][key]["files"][part]["offset"] += shift
    _write_manifest(root, doc)
    with pytest.warns(CacheWarning, match="SYN002"):
        result = prepare(sources, FeatureConfig(window=8), FeatureCache(root).open(), show_progress=False)
    assert result.misses == 1  # recomputed, not used
    _assert_same_arrays(result, expected)
    assert FeatureCache(root).validate_full(fix=False).consistent


def test_a_disk_that_fills_up_during_preparation_leaves_no_data_file_that_no_manifest_names(tmp_path):
    from indicator_transformer.errors import StorageFull

    probe = tmp_path / "probe"
    _prepared(probe, symbols=1)
    entry_bytes = sum(p.stat().st_size for p in probe.glob("*.entry.npy"))
    fs = tmp_path / "fs"
    fs.mkdir()
    size = -(-entry_bytes // 4096) * 4096  # room for one entry, none for a second or the manifest
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(fs)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        root = fs / "cache"
        with pytest.raises(StorageFull, match="No space left on device"):
            prepare(synthetic_sources(3, 300, seed=2), FeatureConfig(window=8), FeatureCache(root).open(),
                    show_progress=False, workers=1)
        # The entry that was written could not be committed: its file is gone, freeing its space.
        assert not list(root.glob("*.entry.npy")) and not list(root.glob(".*.tmp"))
    finally:
        subprocess.run(["umount", "-l", str(fs)], capture_output=True)
