"""Shared fixtures: tiny real image folders on disk and a real ``featcache`` subprocess."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


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
    env = {**os.environ, "FEATCACHE_OFFLINE": "1", "PYTHONWARNINGS": "ignore", **extra}
    env.pop("FEATCACHE_CACHE_DIR", None)
    env.pop("FEATCACHE_RUNS_DIR", None)
    return env


def featcache_command() -> list[str]:
    exe = Path(sys.executable).with_name("featcache")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "cli"]


def featcache(*args, cwd=None, env=None, timeout=600, prefix=(), **popen) -> subprocess.CompletedProcess:
    """Run the installed console script exactly as a user would."""
    cmd = list(prefix) + featcache_command() + [str(a) for a in args]
    return subprocess.run(cmd, cwd=cwd, env=env or cli_env(), capture_output=True, text=True, timeout=timeout, **popen)


def without_root_privileges() -> list[str] | None:
    """A command prefix under which file permissions apply even to root (None: cannot arrange it)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    return [setpriv, "--bounding-set", "-dac_override,-dac_read_search", "--"] if setpriv else None
