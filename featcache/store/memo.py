"""Which feature-set files passed the integrity check, remembered by the state of the file.

The memo lives in featcache's user cache dir (``verified-v1.json``), not in the cache dir: a cache
dir may be read-only or shared, and a record there could vouch for files to other users. Its key is
the file's real path; its value the file's device, inode, size, mtime_ns and ctime_ns (ctime cannot
be set back by a user, so an in-place edit that restores the mtime is still seen) and the recorded
content hash. Any change to the file means a fresh check.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from featcache.core.files import atomic_write
from featcache.core.paths import user_cache_dir

_MEMO = "verified-v1.json"
_MEMO_MAX = 2000


def memo_file() -> Path:
    return user_cache_dir() / _MEMO


def stamp(path: Path) -> list | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def read() -> dict:
    try:
        memo = json.loads(memo_file().read_text())
    except (OSError, ValueError):
        return {}
    return memo if isinstance(memo, dict) else {}


def update(key: str, value: list | None) -> None:
    """Best effort: a memo that cannot be written only costs a check next time."""
    memo = read()
    if memo.pop(key, None) is None and value is None:
        return
    if value is not None:
        memo[key] = value
    memo = dict(list(memo.items())[-_MEMO_MAX:])
    try:
        memo_file().parent.mkdir(parents=True, exist_ok=True)
        atomic_write(memo_file(), json.dumps(memo))
    except OSError:
        pass


def remember(path: Path, state: list | None, content: str | None) -> None:
    """Record a file as verified if it is still exactly as it was when the check began."""
    if state is not None and content and stamp(path) == state:
        update(os.path.realpath(path), state + [content])
