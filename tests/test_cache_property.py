"""Issue 20, section 4: cache ids and prefixes drawn from arbitrary text.

Whatever the text (empty, blank, '.', '..', '/', '*', control characters, unicode, path-like, very
long), ``cache rm`` removes exactly the one set it names (a full id, a unique prefix of at least
``cache.MIN_PREFIX`` characters, a file name or path of it) or refuses in one line, and removes
nothing then; ``find`` and ``open_features`` return that set's file or refuse; nothing raises
anything but ``FeatcacheError``.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import featcache
from featcache import store
from featcache.core.errors import FeatcacheError
from featcache.store import cache
from featcache.store.manifest import Manifest

COMPLETE = ["aaaa1111bbbb2222", "aaaa1111cccc3333", "dddd4444eeee5555"]  # two share an 8-character prefix
SHARD, PARTIAL = "9999000011112222", "ffff6666aaaa7777"
IDS = COMPLETE + [SHARD, PARTIAL]


class Rows:
    def __init__(self, X):
        self.X = X

    def n_rows(self):
        return len(self.X)

    def skipped(self):
        return {}

    def rows_in_order(self, block_rows):
        yield np.arange(len(self.X)), self.X


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """Real feature-set files written by the store: three complete sets, one shard, one interrupted extraction."""
    root = tmp_path_factory.mktemp("ids") / "cache"
    root.mkdir()
    manifest = Manifest(root=root, paths=["c/0.png", "c/1.png"], sizes=np.ones(2, np.int64), mtimes=np.zeros(2, np.int64),
                        labels=np.zeros(2, np.int32), splits=["", ""], class_names=["c"])
    X = np.arange(8, dtype=np.float32).reshape(2, 4)
    for fsid in COMPLETE:
        store.write_feature_set(root / f"{fsid}.h5", {"id": fsid, "created": "2026-01-01"}, manifest, Rows(X), (4,), "float32")
    shard = {"id": SHARD, "shard_index": 0, "shard_count": 2, "shard_start": 0, "shard_stop": 1}
    store.write_feature_set(root / f"{SHARD}.shard-0-of-2.h5", shard, manifest, Rows(X), (4,), "float32")
    (root / f"{PARTIAL}.partial").mkdir()
    (root / f"{PARTIAL}.partial" / "staging.json").write_text(json.dumps({"id": PARTIAL}))
    return root


def files_of(root: Path) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for p in root.iterdir():
        if not p.name.startswith(".") and not p.name.endswith(".lock"):
            out.setdefault(p.name[:16], set()).add(p.name)
    return out


def named_set(text: str, root: Path) -> str | None:
    """The one set ``text`` names by the documented rule, or None when it names none or several."""
    if not text.strip():
        return None
    by_file = {fsid for fsid, names in files_of(root).items() for name in names if text in (name, str(root / name))}
    if by_file:
        return by_file.pop() if len(by_file) == 1 else None
    by_prefix = {fsid for fsid in IDS if fsid.startswith(text)} if len(text) >= cache.MIN_PREFIX else set()
    return by_prefix.pop() if len(by_prefix) == 1 else None


hostile = st.sampled_from(["", " ", "\t", "\n", ".", "..", "/", "*", "?", "~", "./", "../", "-", "--", "\x00", "\x1b[2J",
                           "aaaa*", "a" * 5000, "../" * 50, "\u202eaaaa", "ａａａａ"])
prefixes = st.builds(lambda fsid, n: fsid[:n], st.sampled_from(IDS), st.integers(0, 16))
decorated = st.builds(lambda fsid, tail: fsid + tail, st.sampled_from(IDS),
                      st.sampled_from([".h5", ".partial", ".shard-0-of-2.h5", "/", " ", "x", ".h5\x00", "\n"]))
as_path = st.builds(lambda fsid, tail: ("ROOT/", fsid + tail), st.sampled_from(IDS), st.sampled_from([".h5", ".shard-0-of-2.h5", ".partial"]))
texts = st.one_of(st.text(max_size=40), hostile, prefixes, decorated, as_path)
PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _resolve(text, root: Path) -> str:
    return str(root / text[1]) if isinstance(text, tuple) else text


@PROPERTY
@given(text=texts)
def test_rm_removes_exactly_the_one_named_set_or_refuses_in_one_line(template, text):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "cache"
        shutil.copytree(template, root)
        text = _resolve(text, root)
        before, intended = files_of(root), named_set(text, root)
        try:
            removed = cache.remove(text, root)
        except FeatcacheError as err:
            assert "\n" not in str(err) and files_of(root) == before
            assert intended is None, f"refused {text!r}, which names {intended} alone: {err}"
            return
        after = files_of(root)
        assert intended is not None and intended not in after and {p.name for p in removed} == before[intended]
        assert after == {fsid: names for fsid, names in before.items() if fsid != intended}


def found_file(text: str, root: Path) -> Path | None:
    """What ``find`` must return: the .h5 file ``text`` names or is the path of (a shard too: a path is
    taken as given), else the complete set a full id or unique prefix names."""
    for name in sorted(n for names in files_of(root).values() for n in names if n.endswith(".h5")):
        if text in (name, str(root / name)):
            return root / name
    intended = named_set(text, root)
    return root / f"{intended}.h5" if intended in COMPLETE else None


@PROPERTY
@given(text=texts)
def test_find_and_info_return_the_named_complete_set_or_refuse_in_one_line(template, text):
    root = template
    text = _resolve(text, root)
    expected = found_file(text, root)
    try:
        found = cache.find(text, root)
    except FeatcacheError as err:
        assert "\n" not in str(err)
        assert expected is None, f"refused {text!r}, which names {expected}: {err}"
    else:
        assert expected is not None and found.resolve() == expected.resolve()
    try:
        with featcache.open_features(text, root, verify=False) as fs:
            assert expected is not None and fs.path.resolve() == expected.resolve()
    except FeatcacheError as err:
        assert "\n" not in str(err) and expected is None
