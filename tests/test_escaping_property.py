"""Issue 20, security: user text (class, file and label names) is text wherever featcache shows it.

Names drawn from arbitrary unicode, control characters and markup included, go through the report
renderers (HTML, and Markdown read by a CommonMark renderer as a viewer would), the CSV writer and
its readers, and the terminal escaping; then one real folder with hostile names goes through
``featcache extract``, ``audit``, ``fit`` and ``report`` as subprocesses.
"""

from __future__ import annotations

import csv
import html
import json
import os
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from featcache.core.errors import RunError
from featcache.core.files import FORMULA_START, read_csv, write_csv
from featcache.core.text import Code, Link, printable, terminal
from featcache.fitting.gallery import MAP_FILE, read_map
from featcache.fitting.pipeline import read_exclusions
from featcache.report.gallery import Card
from featcache.report.render import to_html, to_markdown
from tests.conftest import featcache as run_cli
from tests.conftest import make_images

HOSTILE = ["[click me](javascript:alert(1))", "<script>alert(1)</script>", "<img src=x onerror=alert(1)>", '"', "'", "|",
           "\\|", "`", "``", "*", "**", "_", "~~", "&amp;", "&#60;", "&", "\\", "#", "1.", "- ", "> ", "!", "[", "]", "(",
           ")", "\n", "\r", "\t", "\x00", "\x07", "\x1b[2J", "\x1b]0;pwned\x07", "\x9b31m", "\x85", "\x7f", "\u202e",
           "\u2066", "\u2028", "=1+2", "+1", "-1", "@SUM(A1)", "'=", "''", "javascript:alert(1)", " ", "é", "日本", "$\\foo$"]
# Names: hostile pieces and arbitrary unicode (Hypothesis' default alphabet holds every control character).
NAMES = st.lists(st.one_of(st.sampled_from(HOSTILE), st.text(max_size=4)), min_size=1, max_size=6).map("".join).filter(bool)
# As a name from the file system can be: bytes that are not UTF-8 arrive as surrogate escapes.
FS_NAMES = st.lists(st.one_of(NAMES, st.sampled_from(["\udce9", "\udc85", "\udcff"])), min_size=1, max_size=3).map("".join)
BUDGET = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029\ud800-\udfff]")
OUR_TAGS = {"html", "head", "meta", "title", "style", "body", "h2", "p", "a", "code", "strong", "table", "thead", "tbody", "tr",
            "th", "td", "img", "div", "figure", "figcaption", "br"}
OUR_LINK = "runs/run 1/report.html"  # a link featcache makes itself (a run's report); the space is percent-encoded
NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def unescape(shown: str) -> str:
    """The inverse of ``printable`` for names without a backslash (the test's own decoder)."""
    def one(m: re.Match) -> str:
        code = m.group()
        if code[1] in "nrt":
            return {"n": "\n", "r": "\r", "t": "\t"}[code[1]]
        value = int(code[2:], 16)
        return chr(0xDC00 + value) if code[1] == "x" and value >= 0x80 else chr(value)
    return re.sub(r"\\(x[0-9a-f]{2}|u[0-9a-f]{4}|[nrt])", one, shown)


def blocks_of(names: list[str]) -> list:
    """Every place a report puts user text: a heading, a paragraph (beside featcache's own link and a
    code span), table cells, an image's alt text, a card's title, text and captions."""
    first, second = names[0], names[-1]
    return [
        ("h", 2, first),
        ("p", ["Runs of ", first, ": ", Link("the report", OUR_LINK), " on ", Code(second)]),
        ("table", ["class", "support"], [[name, k] for k, name in enumerate(names)]),
        ("img", "plots/map.png", second),
        ("cards", [Card(title=["1. predicted ", first, " (0.91)"], text=["true label: ", second],
                        images=[("thumbs/0123456789abcdef.jpg", [first, second]), (None, second)])]),
    ]


class Page(HTMLParser):
    """Tags with their attributes, and the text of each table cell and heading, as a browser reads them."""

    def __init__(self, page: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.cells: list[str] = []
        self.headings: list[str] = []
        self._into: list | None = None
        self.feed(page)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag in ("td", "th", "h2"):
            self._into = self.cells if tag != "h2" else self.headings
            self._into.append("")

    def handle_endtag(self, tag):
        if tag in ("td", "th", "h2"):
            self._into = None

    def handle_data(self, data):
        if self._into is not None:
            self._into[-1] += data


@BUDGET
@given(names=st.lists(FS_NAMES, min_size=1, max_size=4))
def test_user_text_on_a_page_is_text_and_the_only_link_is_featcaches_own(names):
    page = to_html(blocks_of(names), title=names[0])
    seen = Page(page)
    links = [attrs for tag, attrs in seen.tags if tag == "a"]
    assert links == [{"href": "runs/run%201/report.html"}]
    assert {tag for tag, _ in seen.tags} <= OUR_TAGS
    assert not any(name.startswith("on") for _, attrs in seen.tags for name in attrs)  # no event handler attribute
    assert {attrs["src"] for tag, attrs in seen.tags if tag == "img"} == {"plots/map.png", "thumbs/0123456789abcdef.jpg"}
    assert not re.search("<script", page, re.IGNORECASE) and not UNSAFE.search(page.rstrip("\n"))
    assert "<meta http-equiv='Content-Security-Policy' content=\"script-src 'none'; object-src 'none'\">" in page  # and none runs
    shown = [printable(n) for n in names]
    assert seen.cells == ["class", "support"] + [c for k, s in enumerate(shown) for c in (s, str(k))]  # text round-trips
    assert seen.headings == [shown[0]]
    alts = [attrs["alt"] for tag, attrs in seen.tags if tag == "img"]
    assert alts == [shown[-1], f"{shown[0]} {shown[-1]}"]


def _text_of(token) -> str:
    """The text a Markdown renderer shows for an inline token (text and code, not markup)."""
    return "".join(child.content if child.type in ("text", "code_inline") else _text_of(child) if child.children else ""
                   for child in token.children or [])


@BUDGET
@given(names=st.lists(FS_NAMES, min_size=1, max_size=4))
def test_user_text_in_markdown_renders_as_itself_and_keeps_the_table_shape(names):
    markdown_it = pytest.importorskip("markdown_it")
    source = to_markdown(blocks_of(names))
    tokens = markdown_it.MarkdownIt("commonmark").enable("table").parse(source)  # raw HTML on, as many viewers
    inline = [t for t in tokens if t.type == "inline"]
    children = [c for t in inline for c in t.children or []]
    assert [c.attrs.get("href") for c in children if c.type == "link_open"] == ["runs/run%201/report.html"]
    assert sorted(c.attrs["src"] for c in children if c.type == "image") == ["plots/map.png", "thumbs/0123456789abcdef.jpg"]
    assert not [t for t in tokens + children if t.type in ("html_inline", "html_block")]  # no raw HTML got through
    assert not [t for t in tokens if t.type in ("heading_open", "bullet_list_open", "ordered_list_open", "blockquote_open",
                                                 "code_block", "fence", "hr")][1:]  # only the block's own heading
    # the table: a header and one row per name, two cells each, each cell the name as printable() shows it
    rows, cells = [], None
    for t in tokens:
        if t.type == "tr_open":
            cells = []
            rows.append(cells)
        elif t.type == "inline" and cells is not None:
            cells.append(_text_of(t))
        elif t.type == "tr_close":
            cells = None
    shown = [printable(n) for n in names]
    assert rows == [["class", "support"]] + [[s.strip(), str(k)] for k, s in enumerate(shown)]
    heading = next(t for t in inline if t.map and t.map[0] == 0)
    assert _text_of(heading) == shown[0].strip()
    paragraph = next(t for t in inline if _text_of(t).startswith("Runs of"))
    assert _text_of(paragraph) == f"Runs of {shown[0]}: the report on {shown[-1]}"


@BUDGET
@given(rows=st.lists(st.lists(st.one_of(NAMES, st.floats(allow_nan=False).map(repr)), min_size=3, max_size=3), max_size=6))
def test_the_csv_writer_never_writes_a_formula_and_featcache_reads_back_what_it_wrote(tmp_path, rows):
    path = write_csv(tmp_path / "out.csv", ["path", "label", "score"], rows)
    with open(path, newline="", encoding="utf-8") as f:
        raw = [cell for row in csv.reader(f) for cell in row]
    assert not [c for c in raw if c.startswith(FORMULA_START) and not NUMBER.fullmatch(c)]
    assert read_csv(path) == [["path", "label", "score"]] + rows


@BUDGET
@given(paths=st.lists(NAMES.filter(lambda p: "\x00" not in p and os.path.normpath(p) == p and not os.path.isabs(p)
                                   and p not in (".", "..") and not p.startswith("../")), min_size=1, max_size=5))
def test_fit_exclude_reads_back_exactly_the_paths_audit_csv_wrote(tmp_path, paths):
    audit_csv = write_csv(tmp_path / "audit.csv", ["finding", "kind", "path", "label"],
                          [[k, "exact_duplicate", p, "=cmd"] for k, p in enumerate(paths, 1)])
    assert read_exclusions(audit_csv, paths + ["other.png"], data_root=None) == sorted(set(paths))


@settings(max_examples=60, deadline=None)
@given(name=FS_NAMES)
def test_printable_shows_every_control_character_and_keeps_names_apart(name):
    shown = printable(name)
    assert not UNSAFE.search(shown)
    shown.encode("utf-8")  # printable: even a byte that is not UTF-8
    if "\\" not in name:
        assert unescape(shown) == name  # injective: two names never look alike
    elif UNSAFE.search(name):
        assert shown != name  # visible
    lines = terminal(name)
    assert not UNSAFE.search(lines.replace("\n", "").replace("\t", ""))
    assert lines.count("\n") == name.count("\n") and lines.count("\t") == name.count("\t")


GOOD_MAP = "path,x,y,label,role,predicted,\"explained=0.500000,0.200000\"\n'=1+2.png,-0.5,0.25,cats,test,dogs,\n"


@pytest.mark.parametrize("tampered", [
    "", "path,x,y\n", GOOD_MAP.replace("explained=0.500000,0.200000", "explained=half"), GOOD_MAP.replace("-0.5", "left"),
    GOOD_MAP.replace("-0.5", "inf"), GOOD_MAP.replace(",test,", ",train,"), GOOD_MAP + "b.png,0.1\n",
], ids=["empty", "header", "explained", "x", "infinite", "role", "short-line"])
def test_map_csv_reads_what_fit_wrote_and_names_the_fix_for_anything_else(tmp_path, tampered):
    path = tmp_path / MAP_FILE
    path.write_text(GOOD_MAP, encoding="utf-8")
    rows, explained = read_map(path)
    assert explained == (0.5, 0.2) and rows == [{"path": "=1+2.png", "x": -0.5, "y": 0.25, "label": "cats", "role": "test",
                                                 "predicted": "dogs"}]
    path.write_text(tampered, encoding="utf-8")
    with pytest.raises(RunError, match=r"map\.csv is damaged .*: delete it to render the report without the feature map, "
                                       r"or fit again"):
        read_map(path)


# ------------------------------------------------------------------------------------------------ end to end
LINK_CLASS = "[click me](javascript:alert(1))"
FORMULA_CLASS = '=HYPERLINK("evil.example","x")$\\foo{$\x1b]0;pwned\x07'  # $..$: TeX to matplotlib, unless told not
FORMULA_FILE = "=1+2\x1b[2J.png"
BAD_FILE = "\x1b[2J\x1b]0;pwned\x07\u202egnp.png"
RAW = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")  # \t, \n: layout; \r: tqdm's bars


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """A folder whose class and file names carry a script link, formulas and escape sequences, extracted,
    audited and fitted through the real CLI. The commands' outputs and folders."""
    root = tmp_path_factory.mktemp("hostile")
    data = make_images(root / "data", classes=("cats", LINK_CLASS, FORMULA_CLASS), per_class=5, size=(32, 32))
    shutil.copyfile(data / "cats" / "cats_000.png", data / LINK_CLASS / FORMULA_FILE)  # a duplicate across two labels
    (data / FORMULA_CLASS / "+SUM(A1).png").write_bytes((data / FORMULA_CLASS / f"{FORMULA_CLASS}_000.png").read_bytes())
    (data / "cats" / BAD_FILE).write_bytes(b"not an image at all")  # skipped at extraction: its name is printed
    cache, runs = root / "cache", root / "runs"
    out = {}
    out["extract"] = run_cli("extract", "--data", data, "--model", "resnet18", "--weights", "none", "--image-size", "32",
                             "--cache-dir", cache, cwd=root)
    out["audit"] = run_cli("audit", "--cache-dir", cache, "--out", root / "audit", "--cv", "2", "--threshold", "0.9999", cwd=root)
    out["fit"] = run_cli("fit", "--head", "logreg", "--param", "C=0.01", "--cv", "2", "--cache-dir", cache, "--runs-dir", runs,
                         cwd=root)
    # a filtered copy of audit.csv, as a user makes one: its exact-duplicate rows, cells as they are
    with open(root / "audit" / "audit.csv", newline="", encoding="utf-8") as f:
        header, *rows = list(csv.reader(f))
    with open(root / "duplicates.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([header] + [row for row in rows if row[header.index("kind")] == "exact_duplicate"])
    out["exclude"] = run_cli("fit", "--head", "logreg", "--param", "C=0.01", "--cv", "2", "--cache-dir", cache, "--runs-dir",
                             runs, "--exclude", root / "duplicates.csv", "--json", cwd=root)
    out["predict"] = run_cli("predict", data / LINK_CLASS, "--runs-dir", runs, "--cache-dir", cache, cwd=root)
    out["compare"] = run_cli("report", *sorted(runs.glob("*-logreg-*")), "--out", root / "compare", cwd=root)
    return root, out


def test_hostile_names_go_through_extract_audit_and_fit(hostile):
    _, out = hostile
    for name, r in out.items():
        assert r.returncode == 0, f"{name}: {r.stderr[-2000:]}"
        assert "Traceback" not in r.stderr


def test_the_terminal_never_gets_a_raw_escape_sequence(hostile):
    _, out = hostile
    for name, r in out.items():
        for stream in (r.stdout, r.stderr):
            assert not RAW.search(stream), f"{name} printed {RAW.search(stream).group()!r}"
    assert f"{printable(BAD_FILE)}: " in out["extract"].stderr  # the skip list shows the name, escaped
    assert f"{printable(LINK_CLASS + '/' + FORMULA_FILE)}\t" in out["predict"].stdout


def test_the_pages_hold_no_script_link_and_no_raw_control_character(hostile):
    root, _ = hostile
    pages = [*root.glob("runs/*/report.html"), *root.glob("runs/*/report.md"), root / "audit" / "audit.html",
             root / "audit" / "audit.md", root / "compare" / "comparison.html", root / "compare" / "comparison.md"]
    assert len(pages) == 8
    for page in pages:
        text = page.read_text(encoding="utf-8")
        assert "javascript:" not in " ".join(re.findall(r'href="([^"]*)"', text)), page
        assert not re.search("<script", text, re.IGNORECASE) and not RAW.search(text) and "\r" not in text, page
        if page.suffix == ".html":
            for tag, attrs in Page(text).tags:
                if tag == "a":
                    assert re.fullmatch(r"[\w./%-]+", attrs["href"]), (page, attrs)  # a relative path of ours
            assert html.escape(LINK_CLASS) in text or page.stem == "comparison", page  # the class is shown, as text
    report = next(root.glob("runs/*/report.html")).read_text(encoding="utf-8")
    assert html.escape(printable(FORMULA_CLASS)) in report


def test_audit_csv_holds_no_formula_and_fit_exclude_reads_its_exact_paths(hostile):
    root, out = hostile
    audit_csv = root / "audit" / "audit.csv"
    with open(audit_csv, newline="", encoding="utf-8") as f:
        raw = [cell for row in csv.reader(f) for cell in row]
    assert not [c for c in raw if c.startswith(FORMULA_START) and not NUMBER.fullmatch(c)]
    header, *rows = read_csv(audit_csv)
    duplicates = {row[header.index("path")] for row in rows if row[header.index("kind")] == "exact_duplicate"}
    assert duplicates == {"cats/cats_000.png", f"{LINK_CLASS}/{FORMULA_FILE}", f"{FORMULA_CLASS}/{FORMULA_CLASS}_000.png",
                          f"{FORMULA_CLASS}/+SUM(A1).png"}
    assert FORMULA_CLASS in {row[header.index("label")] for row in rows}
    run = Path(json.loads(out["exclude"].stdout)["run"])
    excluded = json.loads((run / "params.json").read_text())["excluded"]["paths"]
    assert set(excluded) == duplicates


@pytest.mark.slow
def test_the_hostile_pages_render_in_a_browser_with_the_names_as_text(hostile, tmp_path):
    from tests import chromium
    from tests.test_browser import look

    executable = chromium.find()
    if executable is None:
        pytest.skip("Chromium is not installed (apt-get install chromium): pages not checked in a browser")
    root, _ = hostile
    with chromium.Browser(executable, width=1280, height=900) as browser:
        for name, page in (("hostile-report", min(root.glob("runs/*/report.html"))), ("hostile-audit", root / "audit" / "audit.html")):
            seen = look(browser, page, name, tmp_path)  # every image decodes; every link is a file next to the page
            assert LINK_CLASS in seen["text"] and printable(FORMULA_CLASS) in seen["text"], name


def test_a_tampered_map_csv_is_a_one_line_error_naming_the_file_and_the_fix(hostile):
    root, _ = hostile
    run = min(root.glob("runs/*/map.csv")).parent
    good = (run / "map.csv").read_bytes()
    try:
        (run / "map.csv").write_text("path,x,y,label,role,predicted,explained=0.5,0.2\ncats/a.png,left,0.1,cats,cv,\n")
        r = run_cli("report", run, cwd=root)
        assert r.returncode == 1 and "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert "map.csv" in r.stderr and "delete it" in r.stderr and "fit again" in r.stderr
        (run / "map.csv").unlink()  # the fix the message names
        r = run_cli("report", run, cwd=root)
        assert r.returncode == 0, r.stderr
        assert "## Feature map" not in (run / "report.md").read_text(encoding="utf-8")
    finally:
        (run / "map.csv").write_bytes(good)
