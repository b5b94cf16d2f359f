"""Issue 20: no silent loss and no silently altered rows.

``cache rm`` never removes more than the one set it names, nor one being extracted; every reader of
rows checks the content hash, which covers everything that changes a result; a damaged file or
partial extraction is one line naming the fix, and the same extract command repairs it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess

import h5py
import numpy as np
import pytest

import featcache
from featcache import store
from featcache.core.errors import CacheError, DamagedError, FeatcacheError
from featcache.store import cache
from tests.conftest import as_written_before_versioning, cli_env, make_images, without_root_privileges
from tests.conftest import featcache as run_cli

FAST = dict(model="resnet18", weights="none", image_size=32, progress_bar=False, batch_size=4)
CLI_FAST = ["--model", "resnet18", "--weights", "none", "--image-size", "32", "--batch-size", "4", "--workers", "0"]


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """One real feature set and a run fitted on it; tests work on copies of the cache."""
    root = tmp_path_factory.mktemp("integrity")
    data = make_images(root / "data", per_class=6, size=(40, 40))
    result = featcache.extract(data, cache_dir=root / "cache", **FAST)
    run = featcache.fit(head="logreg", params={"C": [1.0]}, cv=2, cache_dir=root / "cache", runs_dir=root / "runs",
                        progress_bar=False)
    return {"data": data, "cache": root / "cache", "id": result.id, "run": run.path}


@pytest.fixture(autouse=True)
def own_memo(tmp_path, monkeypatch):
    """Each test remembers verified files in its own user cache dir (subprocesses get it via ``env``)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user-cache"))


def env(tmp_path) -> dict:
    return cli_env(XDG_CACHE_HOME=str(tmp_path / "user-cache"))


def copy(made, tmp_path):
    target = tmp_path / "c"
    shutil.copytree(made["cache"], target)
    return target, target / f"{made['id']}.h5"


def one_line(r) -> str:
    text = r.stderr.strip()
    assert r.returncode == 1 and "\n" not in text and "Traceback" not in text and "internal error" not in text, r.stderr
    return text


# ------------------------------------------------------------------------------------------ cache rm
@pytest.mark.parametrize("ref", ["", " ", "3", "35f", "*", "."])
def test_rm_refuses_empty_and_short_prefixes_and_removes_nothing(made, tmp_path, ref):
    c, path = copy(made, tmp_path)
    short = made["id"][:len(ref)] if ref.strip() and ref not in "*." else ref  # a real prefix, too short
    r = run_cli("cache", "rm", short, "--cache-dir", c, env=env(tmp_path))
    text = one_line(r)
    assert ("empty" in text or "too short" in text or "no feature set" in text) and path.is_file()


def test_rm_takes_a_prefix_of_four_characters_an_id_a_file_name_or_a_path(made, tmp_path):
    for ref in (made["id"][:4], made["id"], f"{made['id']}.h5", None):
        c, path = copy(made, tmp_path)
        r = run_cli("cache", "rm", str(path) if ref is None else ref, "--cache-dir", c, env=env(tmp_path))
        assert r.returncode == 0 and not path.exists(), r.stderr
        shutil.rmtree(c)


def test_rm_refuses_a_set_that_is_being_extracted(tmp_path, background):
    data = make_images(tmp_path / "data", per_class=6, size=(48, 48))
    c, marker = tmp_path / "c", tmp_path / "paused"
    proc = background.start("extract", "--data", data, "--cache-dir", c, *CLI_FAST, "-q", "--json", pause_after=1,
                            marker=marker, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(tmp_path))
    [partial] = c.glob("*.partial")
    fsid = partial.stem
    r = run_cli("cache", "rm", fsid[:6], "--cache-dir", c, env=env(tmp_path))
    text = one_line(r)
    assert f"being extracted by another featcache process (pid {proc.pid})" in text and "wait" in text
    assert partial.is_dir() and len(list(partial.glob("seg-*.json"))) == 1
    marker.unlink()
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert json.loads(out)["id"] == fsid and store.verify(c / f"{fsid}.h5") == []
    assert run_cli("cache", "rm", fsid[:6], "--cache-dir", c, env=env(tmp_path)).returncode == 0  # the lock is gone


@pytest.mark.skipif(without_root_privileges() is None, reason="cannot drop root's file-permission override here")
def test_rm_in_a_read_only_cache_dir_is_one_line(made, tmp_path):
    c, path = copy(made, tmp_path)
    c.chmod(0o555)
    try:
        r = run_cli("cache", "rm", made["id"], "--cache-dir", c, prefix=without_root_privileges(), env=env(tmp_path))
    finally:
        c.chmod(0o755)
    text = one_line(r)
    assert "not writable" in text and str(c) in text and path.is_file()


# ------------------------------------------------------------------------------- one content check
def _overwrite_a_row(path):
    with h5py.File(path, "r+") as f:
        f["features"][3] = f["features"][3] + 1  # a valid chunk with a valid checksum: only the hash can tell


@pytest.mark.parametrize("reader", ["fit", "audit", "predict", "report", "api"])
def test_every_reader_refuses_an_overwritten_row(made, tmp_path, reader):
    c, path = copy(made, tmp_path)
    _overwrite_a_row(path)
    if reader == "api":
        with pytest.raises(DamagedError, match="content hash differs"):
            featcache.open_features(made["id"], c)
        return
    if reader == "report":  # the run's own feature set, at the path it records: a copy of the run that names the copy
        run = tmp_path / "run"
        shutil.copytree(made["run"], run)
        params = run / "params.json"
        params.write_text(params.read_text().replace(str(made["cache"]), str(c)))
        sums = json.loads((run / "checksums.json").read_text())
        sums["params.json"] = hashlib.sha256(params.read_bytes()).hexdigest()
        (run / "checksums.json").write_text(json.dumps(sums))
        r = run_cli("report", run, env=env(tmp_path))
        assert "damaged" in one_line(r) and "featcache cache rm" in r.stderr
        return
    args = {"fit": ["fit", "--head", "logreg", "--cv", "2", "--features", made["id"], "--runs-dir", tmp_path / "runs"],
            "audit": ["audit", "--features", made["id"], "--out", tmp_path / "audit"],
            "predict": ["predict", "--run", made["run"], "--features", made["id"]]}[reader]
    r = run_cli(*args, "--cache-dir", c, "-q", env=env(tmp_path))
    text = one_line(r)
    assert "content hash differs" in text and f"featcache cache rm {made['id']}" in text
    assert not (tmp_path / "audit").exists() and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("edit", ["manifest/split", "manifest/label", "split", "class_names", "paths", "view", "both splits",
                                  "manifest/mtime_ns"])
def test_any_edit_that_changes_a_result_is_caught(made, tmp_path, edit):
    c, path = copy(made, tmp_path)
    with h5py.File(path, "r+") as f:
        if edit == "both splits":  # consistent with each other: only the hash can tell
            f["split"][0] = f["manifest/split"][f["index"][0]] = "test"
        elif edit in ("manifest/split", "split"):
            f[edit][0] = "test"
        elif edit in ("manifest/label", "view"):
            f[edit][0] = 1 - f[edit][0]
        elif edit == "manifest/mtime_ns":
            f[edit][0] = f[edit][0] + 1
        elif edit == "class_names":
            f[edit][0] = "wolves"
        else:
            f[edit][0] = b"dogs/elsewhere.png"
    assert store.verify(path)
    r = run_cli("cache", "verify", "--cache-dir", c, env=env(tmp_path))
    assert r.returncode == 1 and "DAMAGED" in r.stdout
    fit = run_cli("fit", "--head", "logreg", "--cv", "2", "--cache-dir", c, "--runs-dir", tmp_path / "runs", "-q",
                  env=env(tmp_path))
    assert "damaged" in one_line(fit)


def test_a_deleted_manifest_is_one_line_everywhere_and_extract_replaces_the_file(made, tmp_path):
    c, path = copy(made, tmp_path)
    with h5py.File(path, "r+") as f:
        del f["manifest"]
    assert store.verify(path) == ["/manifest/path, /manifest/size, /manifest/mtime_ns, /manifest/label, /manifest/split missing"]
    for args in (["fit", "--head", "logreg", "--cv", "2"], ["audit", "--out", tmp_path / "a"], ["cache", "info", made["id"]],
                 ["predict", "--run", made["run"], "--features", made["id"]]):
        text = one_line(run_cli(*args, "--cache-dir", c, env=env(tmp_path)))
        assert "/manifest" in text and f"featcache cache rm {made['id']}" in text
    again = run_cli("extract", "--data", made["data"], "--cache-dir", c, *CLI_FAST, "--json", env=env(tmp_path))
    assert again.returncode == 0, again.stderr
    assert "is damaged (/manifest/path" in again.stderr and "extracting it again to replace it" in again.stderr
    out = json.loads(again.stdout)
    assert out["id"] == made["id"] and not out["cache_hit"] and out["extracted"] == 12
    assert store.verify(path) == []


def test_a_corrupt_json_attribute_is_one_line_and_extract_replaces_the_file(made, tmp_path):
    c, path = copy(made, tmp_path)
    with h5py.File(path, "r+") as f:
        f.attrs["key"] = "{not json"
    r = run_cli("cache", "verify", made["id"], "--cache-dir", c, env=env(tmp_path))
    assert r.returncode == 1 and "attribute 'key' is not valid JSON" in r.stdout and "Traceback" not in r.stderr
    again = run_cli("extract", "--data", made["data"], "--cache-dir", c, *CLI_FAST, "--json", env=env(tmp_path))
    assert again.returncode == 0 and "not valid JSON" in again.stderr, again.stderr
    assert json.loads(again.stdout)["id"] == made["id"] and store.verify(path) == []


def test_predict_features_on_a_bit_flipped_set_is_one_line(made, tmp_path):
    c, path = copy(made, tmp_path)
    with h5py.File(path, "r") as f:
        offset = f["features"].id.get_chunk_info(0).byte_offset
    raw = bytearray(path.read_bytes())
    raw[offset + 40] ^= 0xFF
    path.write_bytes(raw)
    r = run_cli("predict", "--run", made["run"], "--features", made["id"], "--cache-dir", c, "-q", env=env(tmp_path))
    text = one_line(r)
    assert "damaged" in text and f"featcache cache rm {made['id']}" in text


def test_files_written_before_the_hash_was_versioned_keep_their_id_and_are_checked(made, tmp_path):
    c, path = copy(made, tmp_path)
    as_written_before_versioning(path)
    recorded = h5py.File(path, "r").attrs["content_sha256"]
    assert store.verify(path) == []
    again = featcache.extract(made["data"], cache_dir=c, **FAST)
    assert again.cache_hit and again.id == made["id"]
    assert h5py.File(path, "r").attrs["content_sha256"] == recorded  # not rewritten
    with featcache.open_features(made["id"], c) as fs:
        assert len(fs.load()) == 12
    # The old formula does not cover the manifest; the cross checks do.
    with h5py.File(path, "r+") as f:
        f["manifest/split"][0] = "test"
    assert store.verify(path) == ["/split disagree with /manifest/split"]


def test_a_checked_file_is_remembered_until_it_changes_and_a_failure_never_is(made, tmp_path):
    c, path = copy(made, tmp_path)
    memo = tmp_path / "user-cache" / "featcache" / "verified-v1.json"
    with featcache.open_features(made["id"], c):
        pass
    recorded = json.loads(memo.read_text())[os.path.realpath(path)]
    assert recorded[1] == os.stat(path).st_ino and recorded[-1] == h5py.File(path, "r").attrs["content_sha256"]
    before = os.stat(path)
    _overwrite_a_row(path)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # same size and mtime: the ctime still moved
    for _ in range(2):
        with pytest.raises(DamagedError, match="content hash differs"):
            featcache.open_features(made["id"], c)
        assert os.path.realpath(path) not in json.loads(memo.read_text())


def test_an_altered_set_is_never_a_donor_of_rows(made, tmp_path):
    c, path = copy(made, tmp_path)
    with featcache.open_features(made["id"], c) as fs:
        clean, paths = fs.load(), fs.paths
    _overwrite_a_row(path)
    data = tmp_path / "data"
    shutil.copytree(made["data"], data, copy_function=shutil.copy2)  # same sizes and mtimes
    make_images(data, classes=("birds",), per_class=2, size=(40, 40))
    with h5py.File(path, "r+") as f:  # the same folder, as far as the donor search can tell
        f.attrs["data_root"] = json.dumps(str(data))
    result = featcache.extract(data, cache_dir=c, **FAST)
    assert result.reused == 0 and result.extracted == 14
    with featcache.open_features(result.id, c) as fs:
        np.testing.assert_array_equal(fs.load()[fs.paths.index(paths[3])], clean[3])


# --------------------------------------------------------------------------------------- messages
def test_fit_features_empty_or_a_folder_says_so(made, tmp_path):
    c, _ = copy(made, tmp_path)
    empty = one_line(run_cli("fit", "--features", "", "--cache-dir", c, env=env(tmp_path)))
    assert "empty feature-set id" in empty and "cache rm" not in empty
    folder = one_line(run_cli("fit", "--features", c, "--cache-dir", c, env=env(tmp_path)))
    assert "is a folder, not a feature set" in folder and "cache rm" not in folder


def test_a_damaged_partial_extraction_is_repaired_by_running_the_command_again(tmp_path, background):
    data = make_images(tmp_path / "data", per_class=12, size=(48, 48))  # 24 images: 6 batches of 4
    args = ["extract", "--data", data, *CLI_FAST, "--json"]
    reference = json.loads(run_cli(*args, "--cache-dir", tmp_path / "ref", "-q", env=env(tmp_path)).stdout)
    c = tmp_path / "c"
    proc = background.start(*args, "--cache-dir", c, "-q", pause_after=3, marker=tmp_path / "paused",
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env(tmp_path))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = c / f"{reference['id']}.partial"
    (partial / "seg-0000000.json").write_text('{"indices": [0, 1')  # cut short
    npy = partial / "seg-0000001.npy"
    npy.write_bytes(npy.read_bytes()[:200])  # truncated
    again = run_cli(*args, "--cache-dir", c, env=env(tmp_path))
    assert again.returncode == 0, again.stderr
    assert "dropped 2 damaged batch(es)" in again.stderr and "extracting their images again" in again.stderr
    out = json.loads(again.stdout)
    assert out["id"] == reference["id"] and out["resumed"] == 4 and out["extracted"] == 20
    with featcache.open_features(out["id"], c) as got, featcache.open_features(out["id"], tmp_path / "ref") as ref:
        assert np.array_equal(got.load(), ref.load()) and got.paths == ref.paths


def test_runs_dir_and_audit_out_that_cannot_be_folders_are_one_line_before_any_work(made, tmp_path):
    c, _ = copy(made, tmp_path)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    fit = one_line(run_cli("fit", "--head", "logreg", "--cv", "2", "--cache-dir", c, "--runs-dir", blocker / "runs",
                           env=env(tmp_path)))
    assert f"runs dir {blocker / 'runs'} is not writable" in fit and "--runs-dir" in fit
    audit = one_line(run_cli("audit", "--cache-dir", c, "--out", blocker / "audit", env=env(tmp_path)))
    assert f"audit folder {blocker / 'audit'} is not writable" in audit and "--out" in audit


@pytest.mark.skipif(without_root_privileges() is None, reason="cannot drop root's file-permission override here")
def test_a_read_only_runs_dir_is_one_line(made, tmp_path):
    c, _ = copy(made, tmp_path)
    runs = tmp_path / "runs"
    runs.mkdir(mode=0o555)
    r = run_cli("fit", "--head", "logreg", "--cv", "2", "--cache-dir", c, "--runs-dir", runs, "-q",
                prefix=without_root_privileges(), env=env(tmp_path))
    text = one_line(r)
    assert f"runs dir {runs} is not writable" in text and not list(runs.iterdir())


def test_find_and_remove_raise_only_featcache_errors_on_odd_text(made, tmp_path):
    c, path = copy(made, tmp_path)
    for ref in ("\x00", "a" * 5000, "../" * 40, "/", "..", "\x1b[2J"):
        for call in (cache.find, cache.remove):
            with pytest.raises(FeatcacheError):
                call(ref, c)
    assert path.is_file()
    with pytest.raises(CacheError, match="too short"):
        cache.find(made["id"][:3], c)
