"""Where featcache reads and writes by default, and the environment variables that move it."""

from __future__ import annotations

import os
import socket
from pathlib import Path

CACHE_DIR_ENV = "FEATCACHE_CACHE_DIR"
RUNS_DIR_ENV = "FEATCACHE_RUNS_DIR"
# Forbid any download attempt (like HF_HUB_OFFLINE): missing weights fail at once with the
# offline message instead of waiting for a network timeout.
OFFLINE_ENV = "FEATCACHE_OFFLINE"

DEFAULT_DATA_DIR = Path("data")
DEFAULT_CACHE_DIR = Path(".featcache")
DEFAULT_RUNS_DIR = Path("runs")
DEFAULT_MODEL = "efficientnet_lite0"


def cache_dir(value: str | os.PathLike | None = None) -> Path:
    return Path(value or os.environ.get(CACHE_DIR_ENV) or DEFAULT_CACHE_DIR)


def runs_dir(value: str | os.PathLike | None = None) -> Path:
    return Path(value or os.environ.get(RUNS_DIR_ENV) or DEFAULT_RUNS_DIR)


def user_cache_dir() -> Path:
    """featcache's own memo files (weights hashes, model descriptions): ``$XDG_CACHE_HOME/featcache``."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "featcache"


def offline() -> bool:
    return any(
        os.environ.get(name, "").strip().lower() in {"1", "true", "yes"}
        for name in (OFFLINE_ENV, "HF_HUB_OFFLINE")
    )


def resolvable(host: str) -> bool:
    """Whether ``host`` resolves: a cheap test for a machine with no network at all."""
    try:
        socket.getaddrinfo(host, 443)
        return True
    except OSError:
        return False
