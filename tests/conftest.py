"""Shared fixtures: tiny real image folders on disk and a real ``featcache`` subprocess.

Every test runs in an empty working directory of its own (``outside_the_repo``), so featcache's
defaults (``./data``, ``./.featcache``, ``./runs``, ``./sweeps``) never resolve to the repository's
own folders, and a test that writes under those folders of the repository fails.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
GUARDED = ("data", ".featcache", "runs", "sweeps")  # the repository's folders that featcache's defaults name
PAUSE_AFTER, PAUSE_FILE = "FEATCACHE_TEST_PAUSE_AFTER", "FEATCACHE_TEST_PAUSE_FILE"  # tests/pause_hook/sitecustomize.py
PAUSE_HOOK = Path(__file__).resolve().parent / "pause_hook"


def pytest_configure(config):
    # scikit-learn's estimator checks include an array-API check (array API dispatch on, NumPy
    # inputs) that skips itself unless SCIPY_ARRAY_API is set; SciPy reads it when it is first
    # imported, which is after this hook. The CLI subprocesses run without it (cli_env), as users do.
    os.environ.setdefault("SCIPY_ARRAY_API", "1")


def _listing(root: Path) -> dict:
    """Every path (with its size and mtime) under the repository's guarded folders."""
    out = {}
    for name in GUARDED:
        folder = root / name
        if folder.exists():
            out[name] = sorted((str(p.relative_to(root)), p.lstat().st_size, p.lstat().st_mtime_ns) for p in folder.rglob("*"))
    return out


@pytest.fixture(scope="session", autouse=True)
def _session_cwd(tmp_path_factory):
    """Module- and session-scoped fixtures run outside the repository too."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path_factory.mktemp("session-cwd"))
        yield


@pytest.fixture(autouse=True)
def outside_the_repo(tmp_path_factory, monkeypatch):
    """Run the test in a fresh empty working directory; fail it if it wrote under the repository's
    data/, .featcache/, runs/ or sweeps/ (it cannot read them: relative defaults resolve here)."""
    before = _listing(ROOT)
    cwd = tmp_path_factory.mktemp("cwd")
    monkeypatch.chdir(cwd)
    yield cwd
    after = _listing(ROOT)
    assert after == before, f"the test wrote under the repository's own {', '.join(n for n in GUARDED if after.get(n) != before.get(n))}"


def make_images(root: Path, classes=("cats", "dogs"), per_class: int = 6, size=(48, 40), split: str | None = None,
                seed: int = 0, fmt: str = "png") -> Path:
    """Class folders of small random images whose colour depends on the class (so heads can learn)."""
    rng = np.random.default_rng(seed)
    base = root / split if split else root
    for k, cls in enumerate(classes):
        folder = base / cls
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 90, (size[1], size[0], 3), dtype=np.uint8)
            pixels[..., k % 3] += 150
            Image.fromarray(pixels).save(folder / f"{cls}_{i:03d}.{fmt}")
    return root


@pytest.fixture
def images(tmp_path) -> Path:
    return make_images(tmp_path / "data")


@pytest.fixture
def cache_dir(tmp_path) -> Path:
    return tmp_path / "cache"


def cli_env(**extra) -> dict:
    env = {**os.environ, "FEATCACHE_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    for name in ("FEATCACHE_CACHE_DIR", "FEATCACHE_RUNS_DIR", "SCIPY_ARRAY_API", PAUSE_AFTER, PAUSE_FILE):
        env.pop(name, None)
    return {**env, **extra}


def featcache_command() -> list[str]:
    exe = Path(sys.executable).with_name("featcache")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "cli"]


def _outside_repo(cwd) -> Path:
    cwd = Path(os.getcwd() if cwd is None else cwd).resolve()
    if cwd == ROOT or ROOT in cwd.parents:
        raise AssertionError(f"a featcache subprocess must not run inside the repository ({cwd}): its ./data, "
                             "./.featcache and ./runs would be the repository's")
    return cwd


def featcache(*args, cwd=None, env=None, timeout=600, prefix=(), **popen) -> subprocess.CompletedProcess:
    """Run the installed console script exactly as a user would, by default in the test's own empty
    working directory (never the repository)."""
    cmd = list(prefix) + featcache_command() + [str(a) for a in args]
    return subprocess.run(cmd, cwd=_outside_repo(cwd), env=env or cli_env(), capture_output=True, text=True,
                          timeout=timeout, **popen)


class Background:
    """``featcache`` subprocesses a test starts and steers; any still running at its end are killed."""

    def __init__(self):
        self.procs: list[subprocess.Popen] = []

    def start(self, *args, pause_after: int | None = None, marker: Path | None = None, env=None, cwd=None,
              **popen) -> subprocess.Popen:
        """Start ``featcache ARGS``. With ``pause_after=N`` (and a ``marker`` path), return only once the
        process has committed exactly N batches and stopped (tests/pause_hook); it goes on when the
        marker is deleted."""
        env = dict(env or cli_env())
        if pause_after is not None:
            env.update({PAUSE_AFTER: str(pause_after), PAUSE_FILE: str(marker),
                        "PYTHONPATH": os.pathsep.join(filter(None, [str(PAUSE_HOOK), env.get("PYTHONPATH")]))})
        proc = subprocess.Popen(featcache_command() + [str(a) for a in args], env=env, cwd=_outside_repo(cwd), **popen)
        self.procs.append(proc)
        if pause_after is not None:
            self.wait_for(proc, marker.exists, f"the pause after {pause_after} committed batches")
        return proc

    @staticmethod
    def wait_for(proc: subprocess.Popen, condition, what: str, timeout: float = 300) -> None:
        """Wait for an event (not for a guessed time): fail if ``proc`` exits first or it never comes."""
        deadline = time.monotonic() + timeout
        while not condition():
            if proc.poll() is not None:
                raise AssertionError(f"featcache exited with code {proc.returncode} before {what}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no sign of {what} within {timeout} s")
            time.sleep(0.01)

    def kill_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            proc.wait()


@pytest.fixture
def background():
    procs = Background()
    yield procs
    procs.kill_all()


def as_written_before_versioning(path: Path) -> None:
    """Make a feature-set file what featcache wrote before the content hash was versioned: the same
    datasets, no ``content_hash_version``, and the old formula (feature bytes, labels, row index)."""
    import hashlib

    import h5py

    with h5py.File(path, "r+") as f:
        del f.attrs["content_hash_version"]
        digest = hashlib.sha256(f["features"][()].tobytes())
        digest.update(f["labels"][()].astype(np.int32).tobytes())
        digest.update(f["index"][()].astype(np.int64).tobytes())
        f.attrs["content_sha256"] = digest.hexdigest()


def without_root_privileges() -> list[str] | None:
    """A command prefix under which file permissions apply even to root (None: cannot arrange it)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    return [setpriv, "--bounding-set", "-dac_override,-dac_read_search", "--"] if setpriv else None
