"""Issue 20, section 4: user text that reaches the file system. Any file or class name a file system
takes (control characters, markup, leading dashes, very long, not UTF-8) survives a scan exactly, and
any labels file gives exactly its rows or a one-line DataError."""

from __future__ import annotations

import csv
import io
import os
import tempfile
import unicodedata
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from featcache.core.errors import DataError
from featcache.core.text import printable
from featcache.extraction.extract import ExtractResult, read_from
from featcache.extraction.scan import SPLIT_ALIASES, scan

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NAME_MAX = 255  # bytes in one file name on Linux file systems
HOSTILE = ["[click me](javascript:alert(1))", "<script>alert(1)</script>", "=cmd|' /C calc'!A0", "-rf", "--help",
           "@SUM(1+1)", "+1", " spaced  name ", "a\nb", "tab\there", "\x1b[2J\x1b]0;owned\x07", "\u202egnp.exe", "caf\u00e9",
           "\u4e2d\u6587", "\U0001f600", "back\\slash", "quote\"s", "semi;colon", "%s%n"]
ANY_CHAR = st.characters(blacklist_characters="/\0", blacklist_categories=("Cs",))


def _fits(name: str, suffix: str = "") -> bool:
    """A name a Linux file system takes, that featcache does not hide or read as a split folder."""
    raw = os.fsencode(name)
    return (name not in (".", "..") and not name.startswith(".") and b"/" not in raw and b"\0" not in raw
            and len(raw) + len(suffix.encode()) <= NAME_MAX and name.lower() not in SPLIT_ALIASES)


def names(suffix: str = ""):
    plain = st.text(ANY_CHAR, min_size=1, max_size=16)
    very_long = st.builds(lambda ch, n: ch * n, ANY_CHAR, st.integers(60, NAME_MAX))
    leading = st.builds(str.__add__, st.sampled_from(["-", "--", "=", "+", "@", " "]), plain)
    not_utf8 = st.binary(min_size=1, max_size=12).map(os.fsdecode)  # surrogate escapes, as os.listdir gives them
    return st.one_of(plain, st.sampled_from(HOSTILE), very_long, leading, not_utf8).filter(lambda n: _fits(n, suffix))


TREES = st.dictionaries(names(), st.lists(names(".png"), min_size=1, max_size=3, unique_by=os.fsencode),
                        min_size=1, max_size=3).filter(lambda d: len({os.fsencode(c) for c in d}) == len(d))


def _make(root: bytes, tree: dict[str, list[str]]) -> dict[bytes, str]:
    """Create the tree; returns {relative path bytes: class}."""
    made = {}
    for cls, files in tree.items():
        folder = os.path.join(root, os.fsencode(cls))
        os.mkdir(folder)
        for name in files:
            with open(os.path.join(folder, os.fsencode(name + ".png")), "wb") as f:
                f.write(b"a scan stats files; it does not decode them")
            made[os.fsencode(cls) + b"/" + os.fsencode(name + ".png")] = cls
    return made


@SETTINGS
@given(TREES)
@example({"[x](javascript:alert(1))": ["\x1b[31mred", "=1+1"], "-class": ["<script>"]})
def test_a_scan_loses_no_row_and_invents_none(tree):
    with tempfile.TemporaryDirectory() as tmp:
        made = _make(os.fsencode(tmp), tree)
        m = scan(tmp)
    assert {os.fsencode(p): m.class_names[k] for p, k in zip(m.paths, m.labels.tolist())} == made
    assert m.class_names == sorted(tree) and m.unreadable == {} and m.left_out == [] and m.ignored == []


@SETTINGS
@given(TREES)
@example({"\x1b]0;owned\x07": ["a"], "\x9b2J": ["b"], "line\nbreak": ["c"]})
def test_extracts_summary_shows_the_classes_without_raw_control_characters(tree):
    with tempfile.TemporaryDirectory() as tmp:
        _make(os.fsencode(tmp), tree)
        m = scan(tmp)
    line = ExtractResult("0123456789abcdef", Path("/cache/0123456789abcdef.h5"), len(m), (8,), **read_from(m)).summary()
    assert [ch for ch in line if unicodedata.category(ch) == "Cc"] == []
    shown = ", ".join(printable(c) for c in m.class_names[:ExtractResult.SHOWN_CLASSES])
    assert f"{len(m.class_names)} class" in line and shown in line


# ------------------------------------------------------------------------------------ labels files
CELL = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
ON_DISK = ["a.png", "sub/b.png", "c d.png"]
MISSING = st.text(ANY_CHAR, min_size=1, max_size=12).filter(lambda n: n == n.strip() and n not in (".", ".."))
PATH_CELL = st.one_of(st.sampled_from(ON_DISK), st.sampled_from(ON_DISK).map(lambda p: "./" + p),
                      st.sampled_from(ON_DISK).map(lambda p: f" {p}\t"), MISSING)
SPLIT_CELL = st.one_of(st.just(""), st.sampled_from(sorted(SPLIT_ALIASES)).map(str.upper), st.sampled_from(sorted(SPLIT_ALIASES)),
                       CELL)
ROWS = st.lists(st.tuples(PATH_CELL, CELL, SPLIT_CELL), min_size=0, max_size=6)


def _data(tmp: str) -> Path:
    root = Path(tmp) / "data"
    for rel in ON_DISK:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"image bytes")
    return root


def _expected(rows) -> dict[str, tuple[str, str]] | None:
    """What the labels file says, or None where it must be refused."""
    out = {}
    for path, label, split in rows:
        path, label, split = path.strip(), label.strip(), split.strip()
        if not (path or label or split):
            continue  # a blank row
        if not label or (split and split.lower() not in SPLIT_ALIASES):
            return None
        rel = path.removeprefix("./")
        value = (label, SPLIT_ALIASES[split.lower()] if split else "")
        if out.setdefault(rel, value) != value:
            return None
    return out or None


@SETTINGS
@given(ROWS)
@example([("a.png", "x\x1cy", ""), ("sub/b.png", "two\nlines", "val"), ("c d.png", "cr\rin", "")])
def test_a_labels_file_gives_exactly_its_rows_or_one_line_error(rows):
    with tempfile.TemporaryDirectory() as tmp:
        root = _data(tmp)
        buffer = io.StringIO(newline="")
        csv.writer(buffer).writerows([("path", "label", "split"), *rows])
        labels = Path(tmp) / "labels.csv"
        labels.write_text(buffer.getvalue(), encoding="utf-8", newline="")
        want = _expected(rows)
        if want is None:
            with pytest.raises(DataError) as err:
                scan(root, labels)
            assert "\n" not in str(err.value) and "\r" not in str(err.value)
            return
        m = scan(root, labels)
    got = {p: (m.class_names[k], s) for p, k, s in zip(m.paths, m.labels.tolist(), m.splits)}
    assert got == want
    missing = {m.paths[i] for i, why in m.unreadable.items() if "not found" in why}
    assert missing == {p for p in want if p not in ON_DISK}
    assert set(m.unlisted) == {p for p in ON_DISK if p not in want}


@SETTINGS
@given(st.one_of(st.text(st.characters(blacklist_categories=("Cs",)), max_size=200),
                 st.builds(str.__add__, st.sampled_from(["path,label\n", "path,label,split\r\n", "label,path\n"]),
                           st.text(st.characters(blacklist_categories=("Cs",)), max_size=200))))
@example('path,label\n"a\nb.png",\n')  # a quoted line break in a cell the message names
@example('"pa\rth",label\na.png,x\n')  # ... and in the header
def test_any_labels_text_gives_rows_or_one_line_error(text):
    with tempfile.TemporaryDirectory() as tmp:
        root = _data(tmp)
        labels = Path(tmp) / "labels.csv"
        labels.write_text(text, encoding="utf-8", newline="")
        try:
            m = scan(root, labels)
        except DataError as err:
            assert "\n" not in str(err) and "\r" not in str(err)
            return
    assert m.labels_file and len(m.paths) == len(set(m.paths)) >= 1
    assert all(not os.path.isabs(p) and not p.startswith("..") for p in m.paths)
    assert set(m.labels.tolist()) <= set(range(len(m.class_names)))
