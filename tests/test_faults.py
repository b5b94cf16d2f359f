"""Issue 5, faults: kill -9, concurrent writers, changed folders, damaged files, a full disk."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess

import numpy as np
import pytest
from filelock import FileLock
from PIL import Image

import featcache
from featcache.core.errors import CacheError
from tests.conftest import featcache as run_cli
from tests.conftest import make_images

SLOW = ["--model", "resnet18", "--weights", "none", "--batch-size", "4", "--workers", "0", "--json", "-q"]


def _extract(data, cache, *extra, **kw):
    r = run_cli("extract", "--data", data, "--cache-dir", cache, *SLOW, *extra, **kw)
    return r


def _features(cache, fsid):
    with featcache.open_features(fsid, cache) as fs:
        return fs.load(), fs.paths, fs.meta["content_sha256"]


def test_kill_9_then_resume_equals_an_uninterrupted_run(tmp_path, background):
    data = make_images(tmp_path / "data", per_class=20, size=(64, 64))  # 40 images: 10 batches of 4
    reference = json.loads(_extract(data, tmp_path / "ref").stdout)
    cache = tmp_path / "cache"
    # Stopped right after its 3rd committed batch, then killed there: provably mid-extraction.
    proc = background.start("extract", "--data", data, "--cache-dir", cache, *SLOW, pause_after=3, marker=tmp_path / "paused",
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = cache / f"{reference['id']}.partial"
    assert len(list(partial.glob("seg-*.json"))) == 3 and not list(partial.glob("*.tmp"))
    assert not (cache / f"{reference['id']}.h5").exists()

    # An interrupted feature set is never offered as complete.
    with pytest.raises(CacheError, match="interrupted"):
        featcache.open_features(None, cache)
    with pytest.raises(CacheError, match="incomplete"):
        featcache.open_features(reference["id"], cache)
    listed = run_cli("cache", "list", "--cache-dir", cache)
    assert "partial" in listed.stdout

    resumed = _extract(data, cache)
    assert resumed.returncode == 0, resumed.stderr
    out = json.loads(resumed.stdout)
    assert out["id"] == reference["id"] and out["resumed"] == 12 and out["extracted"] == 28
    got, ref = _features(cache, out["id"]), _features(tmp_path / "ref", reference["id"])
    assert np.array_equal(got[0], ref[0]) and got[1] == ref[1]  # bit for bit on the CPU
    assert got[2] == ref[2]
    assert not partial.exists()


def test_second_process_waits_for_the_lock_then_hits_the_cache(tmp_path, background):
    data = make_images(tmp_path / "data", per_class=6, size=(64, 64))
    cache, marker = tmp_path / "cache", tmp_path / "paused"
    args = ["extract", "--data", data, "--cache-dir", cache, *SLOW[:-1]]
    # The first writer holds the lock, stopped after one committed batch until the marker goes.
    first = background.start(*args, pause_after=1, marker=marker, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    err_file = tmp_path / "second.err"
    with open(err_file, "w") as err:
        second = background.start(*args, stdout=subprocess.PIPE, stderr=err, text=True)
        background.wait_for(second, lambda: "waiting for another featcache process" in err_file.read_text(),
                            "the second process waiting for the lock")
        assert first.poll() is None and not list(cache.glob("*.h5"))  # nothing finished while the lock was held
        marker.unlink()  # let the first writer go on
        out2, _ = second.communicate(timeout=300)
    out1, err1 = first.communicate(timeout=300)
    assert first.returncode == 0 and second.returncode == 0, err1 + err_file.read_text()
    a, b = json.loads(out1), json.loads(out2)
    assert a["id"] == b["id"] and b["cache_hit"] and not a["cache_hit"] and a["extracted"] == 12
    assert run_cli("cache", "verify", "--cache-dir", cache).returncode == 0


def test_lock_timeout_stops_with_a_clear_message(images, tmp_path):
    cache = tmp_path / "cache"
    fsid = json.loads(_extract(images, cache).stdout)["id"]
    assert run_cli("cache", "rm", fsid, "--cache-dir", cache).returncode == 0
    with FileLock(str(cache / f"{fsid}.lock")):
        now = _extract(images, cache, "--lock-timeout", "0")
        later = _extract(images, cache, "--lock-timeout", "0.5")
    assert now.returncode == 1 and "another featcache process is extracting" in now.stderr
    assert later.returncode == 1 and "still locked" in later.stderr and "Traceback" not in later.stderr
    assert _extract(images, cache).returncode == 0


def test_changed_folder_is_updated_incrementally(tmp_path):
    data = make_images(tmp_path / "data", per_class=8)
    cache = tmp_path / "cache"
    first = json.loads(_extract(data, cache).stdout)
    old_X, old_paths, _ = _features(cache, first["id"])
    Image.new("RGB", (40, 40), "yellow").save(data / "cats" / "new_1.png")
    Image.new("RGB", (40, 40), "purple").save(data / "dogs" / "new_2.png")
    (data / "dogs" / "dogs_003.png").unlink()
    Image.new("RGB", (40, 40), "white").save(data / "cats" / "cats_002.png")  # modified in place
    os.utime(data / "cats" / "cats_002.png", ns=(1, 10**18))
    second = json.loads(_extract(data, cache).stdout)
    assert second["id"] != first["id"]
    assert second["extracted"] == 3 and second["reused"] == 14 and second["rows"] == 17
    X, paths, _ = _features(cache, second["id"])
    for p in ("cats/cats_000.png", "dogs/dogs_007.png"):
        assert np.array_equal(X[paths.index(p)], old_X[old_paths.index(p)])
    assert not np.array_equal(X[paths.index("cats/cats_002.png")], old_X[old_paths.index("cats/cats_002.png")])
    assert "dogs/dogs_003.png" not in paths
    fresh = json.loads(_extract(data, tmp_path / "fresh").stdout)
    assert fresh["id"] == second["id"]
    np.testing.assert_allclose(_features(tmp_path / "fresh", fresh["id"])[0].astype(np.float32), X.astype(np.float32), rtol=1e-2, atol=1e-2)


def test_verify_reports_truncated_and_altered_files(images, tmp_path):
    cache = tmp_path / "cache"
    fsid = json.loads(_extract(images, cache, "--image-size", "64").stdout)["id"]
    path = cache / f"{fsid}.h5"
    assert run_cli("cache", "verify", "--cache-dir", cache).returncode == 0

    raw = bytearray(path.read_bytes())
    # Flip bytes in the middle of the file, where chunk data lives.
    middle = len(raw) // 2
    raw[middle:middle + 64] = bytes(255 - b for b in raw[middle:middle + 64])
    path.write_bytes(raw)
    r = run_cli("cache", "verify", fsid, "--cache-dir", cache)
    assert r.returncode == 1 and "DAMAGED" in r.stdout and "Traceback" not in r.stderr

    path.write_bytes(bytes(raw[: len(raw) // 3]))
    r = run_cli("cache", "verify", "--cache-dir", cache)
    assert r.returncode == 1 and "DAMAGED" in r.stdout and ("corrupted" in r.stdout or "unreadable" in r.stdout)
    info = run_cli("cache", "info", fsid, "--cache-dir", cache)
    assert info.returncode == 1 and "featcache cache rm" in info.stderr and "Traceback" not in info.stderr


def _file_size_limit(limit: int):
    def apply():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG from write() instead of being killed

    return apply


@pytest.mark.parametrize("limit", [10_000, 100_000], ids=["while-staging", "while-assembling"])
def test_disk_full_is_a_clear_error_and_the_work_is_kept(tmp_path, limit):
    data = make_images(tmp_path / "data", per_class=16, size=(64, 64))
    ref = json.loads(_extract(data, tmp_path / "ref", "--image-size", "96").stdout)
    cache = tmp_path / "cache"
    full = _extract(data, cache, "--image-size", "96", preexec_fn=_file_size_limit(limit))
    assert full.returncode == 1, full.stdout + full.stderr
    assert "disk full" in full.stderr and "run the same command again to resume" in full.stderr
    assert "Traceback" not in full.stderr
    partial = cache / f"{ref['id']}.partial"
    assert partial.is_dir() and not list(cache.glob("*.h5")) and not list(cache.glob(".*.tmp-*"))
    kept = len(list(partial.glob("seg-*.json")))
    again = json.loads(_extract(data, cache, "--image-size", "96").stdout)
    assert again["resumed"] == 4 * kept
    assert np.array_equal(_features(cache, again["id"])[0], _features(tmp_path / "ref", ref["id"])[0])


def test_cache_list_info_rm(images, tmp_path):
    cache = tmp_path / "cache"
    fsid = json.loads(_extract(images, cache).stdout)["id"]
    listed = run_cli("cache", "list", "--cache-dir", cache)
    assert fsid in listed.stdout and "resnet18" in listed.stdout and "complete" in listed.stdout
    info = json.loads(run_cli("cache", "info", fsid[:6], "--cache-dir", cache, "--json").stdout)
    assert info["id"] == fsid and info["class_names"] == ["cats", "dogs"] and info["n_rows"] == 12
    assert run_cli("cache", "rm", fsid[:6], "--cache-dir", cache).returncode == 0
    assert not list(cache.glob("*.h5"))
    gone = run_cli("cache", "info", fsid, "--cache-dir", cache)
    assert gone.returncode == 1 and "no feature set" in gone.stderr
