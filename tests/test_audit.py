"""Issue 15: ``featcache audit`` on a built data set with planted duplicates, leaks and label errors."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

import featcache
from featcache.audit.findings import audit
from featcache.audit.report import write
from featcache.audit.search import search
from featcache.fitting.runs import RunParams, load_run
from tests.conftest import as_written_before_versioning
from tests.conftest import featcache as run_cli

CLASSES = ("circles", "squares", "stripes", "triangles")


def scene(cls: str, rng: np.random.Generator, size: int = 96) -> Image.Image:
    """A random picture whose class is the kind of shape in it: coloured clutter on a coloured ground."""
    image = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(2, 6))):
        draw.line([tuple(rng.integers(0, size, 2).tolist()), tuple(rng.integers(0, size, 2).tolist())],
                  fill=tuple(int(v) for v in rng.integers(0, 256, 3)), width=int(rng.integers(1, 3)))
    for _ in range(int(rng.integers(1, 4))):
        colour, r = tuple(int(v) for v in rng.integers(0, 256, 3)), int(rng.integers(10, 30))
        x, y = (int(v) for v in rng.integers(r, size - r, 2))
        if cls == "circles":
            draw.ellipse([x - r, y - r, x + r, y + r], fill=colour)
        elif cls == "squares":
            draw.rectangle([x - r, y - r, x + r, y + r], fill=colour)
        elif cls == "triangles":
            draw.polygon([(x, y - r), (x - r, y + r), (x + r, y + r)], fill=colour)
        else:
            for k in range(-r, r, 6):
                draw.line([(x + k, y - r), (x + k, y + r)], fill=colour, width=3)
    # Like a photo: soft edges and sensor noise (hard-edged graphics make JPEG re-encoding a large change).
    pixels = np.asarray(image.filter(ImageFilter.GaussianBlur(1.2)), dtype=np.float32)
    pixels += rng.normal(0, 6, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def build_planted(root: Path, per_class: int = 40, test_per_class: int = 10, seed: int = 0) -> dict:
    """train/ and test/ class folders of distinct scenes, then planted problems. Returns what was planted."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", per_class - test_per_class), ("test", test_per_class)):
        for cls in CLASSES:
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                scene(cls, rng).save(root / split / cls / f"{cls}_{split}_{i:03d}.png")
    planted = {"pairs": [], "test_leaks": [], "conflicts": [], "moved": []}

    def copy(src: str, dst: str, how: str, group: str | None = None) -> None:
        s, d = root / src, root / dst
        d.parent.mkdir(parents=True, exist_ok=True)
        image = Image.open(s).convert("RGB")
        if how == "exact":
            shutil.copyfile(s, d)
        elif how == "jpeg":
            image.save(d, "JPEG", quality=95)
        elif how == "resize":
            image.resize((image.width * 3 // 2, image.height * 3 // 2), Image.LANCZOS).save(d)
        elif how == "crop":
            w, h = image.size
            image.crop((w // 25, h // 25, w - w // 25, h - h // 25)).save(d)
        planted["pairs"].append((src, dst, how))
        if group:
            planted[group].append((src, dst))

    copy("train/circles/circles_train_000.png", "train/circles/circles_copy.png", "exact")
    copy("train/squares/squares_train_001.png", "train/squares/squares_reencoded.jpg", "jpeg")
    copy("train/stripes/stripes_train_002.png", "train/stripes/stripes_bigger.png", "resize")
    copy("train/triangles/triangles_train_003.png", "train/triangles/triangles_cropped.png", "crop")
    copy("train/squares/squares_train_004.png", "test/squares/squares_leaked.png", "exact", "test_leaks")
    copy("train/circles/circles_train_005.png", "test/circles/circles_leaked.jpg", "jpeg", "test_leaks")
    copy("train/stripes/stripes_train_006.png", "train/triangles/stripes_as_triangle.png", "exact", "conflicts")
    copy("train/triangles/triangles_train_007.png", "train/circles/triangle_as_circle.jpg", "jpeg", "conflicts")
    for k, (src_cls, dst_cls) in enumerate([("circles", "squares"), ("squares", "stripes"), ("stripes", "triangles"),
                                             ("triangles", "circles"), ("circles", "stripes"), ("squares", "triangles"),
                                             ("stripes", "circles"), ("triangles", "squares")]):
        src = root / "train" / src_cls / f"{src_cls}_train_{20 + k:03d}.png"
        dst = root / "train" / dst_cls / f"moved_{k}.png"
        src.rename(dst)
        planted["moved"].append(str(dst.relative_to(root)))
    return planted


# ---------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def planted(tmp_path_factory):
    """The planted set, extracted once with the bundled pretrained EfficientNet-Lite0 (offline), audited once
    (session-wide: the browser test opens the same audit page)."""
    root = tmp_path_factory.mktemp("audit")
    truth = build_planted(root / "data")
    result = featcache.extract(root / "data", cache_dir=root / "cache", image_size=128, progress_bar=False)
    found = audit(features=result.id, cache_dir=root / "cache", progress_bar=False)
    written = write(found, root / "audit", say=False)
    return {"root": root, "truth": truth, "id": result.id, "audit": found, "written": written}


def _groups(found) -> list[tuple[str, frozenset, list[str], str]]:
    return [(f.kind, frozenset(found.entries.paths[e] for e in f.entries), f.flags, f.severity)
            for f in found.findings if f.kind.endswith("duplicate")]


# ---------------------------------------------------------------------------------------- tests
def test_every_planted_duplicate_is_found_and_nothing_else(planted):
    """Recall and precision on the planted pairs, measured: 8 of 8 pairs found (3 exact copies, 3 JPEG
    re-encodings at quality 95, one 1.5x enlargement, one 4% crop), and no other group among the 168
    distinct pictures at the default threshold 0.92 (the closest distinct pair is at about 0.905).

    The limit, measured on 12 such pictures: at JPEG quality 95 a copy keeps 0.93-0.99 similarity to its
    original (median 0.97); at quality 90, 0.90-0.97 (median 0.94), so some quality-90 copies of these
    hard-edged synthetic pictures fall below 0.92. Real photographs move less (README, audit)."""
    groups = _groups(planted["audit"])
    pairs = planted["truth"]["pairs"]
    for src, dst, how in pairs:
        match = [g for g in groups if {src, dst} <= g[1]]
        assert len(match) == 1, f"planted {how} copy {dst} of {src} not found"
        assert match[0][0] == ("exact_duplicate" if how == "exact" else "near_duplicate")
    assert len(groups) == len(pairs) and all(len(g[1]) == 2 for g in groups)  # precision 1: no group was not planted
    print("planted near-duplicate similarities:", sorted(round(f.similarity, 3) for f in planted["audit"].findings
                                                         if f.kind == "near_duplicate"))


def test_planted_leaks_and_conflicts_are_flagged_as_severe(planted):
    groups = _groups(planted["audit"])
    for key, flag in (("test_leaks", "test_leak"), ("conflicts", "label_conflict")):
        for src, dst in planted["truth"][key]:
            [(_, _, flags, severity)] = [g for g in groups if {src, dst} <= g[1]]
            assert flag in flags and severity == "high"
    leaked = {frozenset(p) for p in planted["truth"]["test_leaks"]}
    conflicting = {frozenset(p) for p in planted["truth"]["conflicts"]}
    for _, members, flags, _ in groups:
        assert ("test_leak" in flags) == (members in leaked)
        assert ("label_conflict" in flags) == (members in conflicting)
    counts = planted["audit"].counts()
    assert counts["test_leaks"] == 2 and counts["label_conflicts"] == 2 and counts["exact_duplicate_groups"] == 3


def test_moved_files_rank_above_the_clean_ones(planted):
    """The 8 moved files and the 2 copies filed under a wrong class are mislabelled. Measured on this set:
    9 of the 10 are the top 10 of 168 (recall 0.9 at a cutoff of 10), all 10 are in the top 11, and the
    confident-learning rule flags 8 files, 7 of them mislabelled (precision 0.88, recall 0.7)."""
    found = planted["audit"]
    mislabelled = set(planted["truth"]["moved"]) | {dst for _, dst in planted["truth"]["conflicts"]}
    ranked = [found.entries.paths[e] for e in found.label_ranking]
    top = ranked[:len(mislabelled)]
    recall_at_10 = len(mislabelled & set(top)) / len(mislabelled)
    positions = sorted(ranked.index(p) for p in mislabelled)
    print(f"mislabelled ranked at {positions} of {len(ranked)}; recall@{len(mislabelled)} = {recall_at_10:.2f}")
    assert recall_at_10 >= 0.8
    assert positions[-1] < 16  # every mislabelled file in the top 10% of the ranking
    flagged = {found.entries.paths[f.entries[0]] for f in found.findings if f.kind == "label_error"}
    print(f"flagged {len(flagged)}, of them mislabelled {len(flagged & mislabelled)}")
    assert len(flagged & mislabelled) >= 0.6 * len(mislabelled) and len(flagged - mislabelled) <= 2
    for f in found.findings:
        if f.kind == "label_error" and found.entries.paths[f.entries[0]] in planted["truth"]["moved"]:
            path = found.entries.paths[f.entries[0]]
            k = planted["truth"]["moved"].index(path)
            assert f.suggested == ("circles", "squares", "stripes", "triangles", "circles", "squares", "stripes", "triangles")[k]


def test_the_audit_folder_holds_a_page_with_every_flagged_image_and_a_csv_for_fit_exclude(planted):
    out = planted["root"] / "audit"
    assert [p.name for p in planted["written"]] == ["audit.md", "audit.html", "audit.csv"]
    page = (out / "audit.html").read_text()
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert sources and all((out / s).is_file() for s in sources)
    assert "image unavailable" not in page
    found = planted["audit"]
    flagged = {found.entries.paths[e] for f in found.findings for e in f.entries}
    shown = {(out / s).resolve() for s in sources}
    assert len(shown) >= len(flagged)  # each flagged file has its thumbnail (plus the 'most similar' ones)
    with open(out / "audit.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["path"] for r in rows} == flagged
    drops = [r for r in rows if r["action"] == "drop"]
    assert len(drops) == 6  # one copy of each of the 6 duplicate pairs whose labels agree
    assert all(r["kind"].endswith("duplicate") for r in drops)
    markdown = (out / "audit.md").read_text()
    assert "## Exact duplicates (3)" in markdown and "groups across the test split | 2 |" in markdown


def test_the_cli_prints_one_screen_and_json_carrying_the_same_counts(planted):
    root = planted["root"]
    r = run_cli("audit", "--cache-dir", root / "cache", "--out", root / "cli-audit", "-q", cwd=root)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""  # --quiet: no progress bars
    assert (root / "cli-audit" / ".featcache-output").is_file()  # a scan never reads its thumbnails as data
    lines = r.stdout.splitlines()
    assert len(lines) <= 25 and lines[0].startswith(f"audit of feature set {planted['id']}")
    assert re.search(r"groups across the test split\s+2$", r.stdout, re.M)
    assert "worst:" in r.stdout and "high" in r.stdout
    j = run_cli("audit", "--cache-dir", root / "cache", "--out", root / "cli-audit", "-q", "--json", cwd=root)
    data = json.loads(j.stdout)
    assert data["counts"] == planted["audit"].counts()
    assert len(data["findings"]) == len(planted["audit"].findings)
    assert {m["path"] for f in data["findings"] for m in f["members"]} >= {p for _, p in planted["truth"]["test_leaks"]}
    bad = run_cli("audit", "--cache-dir", root / "cache", "--threshold", "1.5", cwd=root)
    assert bad.returncode == 1 and "--threshold 1.5" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def _copy_of_the_planted_set(planted, cache: Path) -> Path:
    """The planted feature set copied into a fresh cache folder, for tests that damage or edit it."""
    cache.mkdir()
    path = cache / f"{planted['id']}.h5"
    shutil.copyfile(planted["root"] / "cache" / f"{planted['id']}.h5", path)
    return path


def test_an_old_feature_set_without_content_hashes_gets_them_from_the_folder_and_says_so(planted, tmp_path):
    cache = tmp_path / "cache"
    old = _copy_of_the_planted_set(planted, cache)
    with h5py.File(old, "r+") as f:
        del f["manifest/sha256"]  # as written before content hashes were recorded
    as_written_before_versioning(old)  # which was also before the content hash covered them
    found = audit(features=planted["id"], cache_dir=cache, progress_bar=False)
    assert any("computed from" in n and "made before featcache recorded them" in n for n in found.notes)
    assert found.counts()["exact_duplicate_groups"] == 3
    gone = audit(features=planted["id"], cache_dir=cache, data=str(tmp_path / "moved-away"), progress_bar=False)
    assert any("exact duplicates among them are not checked" in n for n in gone.notes)


def test_a_damaged_feature_set_is_a_one_line_error(planted, tmp_path):
    cache = tmp_path / "cache"
    path = _copy_of_the_planted_set(planted, cache)
    with h5py.File(path, "r") as f:
        at = f["features"].id.get_chunk_info(0).byte_offset
    with open(path, "r+b") as f:  # flip bytes inside the first chunk: its fletcher32 checksum no longer matches
        f.seek(at + 16)
        f.write(b"\xff" * 32)
    r = run_cli("audit", "--features", planted["id"], "--cache-dir", cache, "--out", tmp_path / "out", cwd=tmp_path)
    assert r.returncode == 1 and "is damaged" in r.stderr and "checksum" in r.stderr and "cache rm" in r.stderr
    assert "internal error" not in r.stderr


def test_fit_exclude_drops_the_listed_files_records_them_and_the_report_shows_the_change(planted, tmp_path):
    root = planted["root"]
    with open(root / "audit" / "audit.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    keep = tmp_path / "drop.csv"
    with open(keep, "w", newline="") as f:  # what a user does: keep the suggested drops
        w = csv.DictWriter(f, fieldnames=rows[0].keys())
        w.writeheader()
        w.writerows(r for r in rows if r["action"] == "drop")
    dropped = sorted(r["path"] for r in rows if r["action"] == "drop")
    base = featcache.fit(head="logreg", features=planted["id"], cache_dir=root / "cache", runs_dir=tmp_path / "runs",
                         params={"C": [1.0]}, cv=3, progress_bar=False)
    r = run_cli("fit", "--head", "logreg", "--param", "C=1", "--cv", "3", "--exclude", keep, "--features", planted["id"],
                "--cache-dir", root / "cache", "--runs-dir", tmp_path / "runs", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    run = load_run(json.loads(r.stdout)["run"])
    e = run.params.excluded
    assert e["paths"] == dropped and e["source"] == str(keep.resolve()) and len(e["sha256"]) == 64
    assert e["test"] == sum(1 for p in dropped if p.startswith("test/")) == 2
    assert e["cv"] == len(dropped) - 2
    assert run.metrics.test.n == base.metrics.test.n - 2  # the same test set, less the two leaked copies
    assert run.params.split["assignment_sha256"] == base.params.split["assignment_sha256"]
    report = (run.path / "report.md").read_text()
    assert f"{len(dropped)} files excluded by --exclude `drop.csv`: 2 from the test set" in report
    assert "## Excluded files (6)" in report and dropped[0] in report
    assert "excluded" not in (base.path / "report.md").read_text()
    assert base.params.excluded is None  # nothing excluded
    old_style = json.loads((base.path / "params.json").read_text())
    del old_style["excluded"]  # params.json of a run made before --exclude existed
    assert RunParams.from_dict(old_style).excluded is None

    (tmp_path / "typo.txt").write_text("train/circles/no_such_file.png\n")
    r = run_cli("fit", "--exclude", tmp_path / "typo.txt", "--features", planted["id"], "--cache-dir", root / "cache",
                "--runs-dir", tmp_path / "runs", cwd=tmp_path)
    assert r.returncode == 1 and "not files of this feature set" in r.stderr and "no_such_file.png" in r.stderr


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_the_blocked_search_equals_brute_force(precision):
    """Small blocks so that pairs cross tile edges; the bf16 filter with its margin misses nothing (fp16 is
    the GPU's filter, checked here on the CPU)."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((900, 48)).astype(np.float32) + 0.4
    X[400] = X[3] + 0.02 * rng.standard_normal(48)
    X[899] = X[3]
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    groups = rng.integers(0, 4, len(X))
    S = X @ X.T
    np.fill_diagonal(S, -np.inf)
    got = search(X, groups, 0.55, precision=precision, device="cpu", query_block=128, key_block=300)
    want = {tuple(p) for p in np.argwhere(np.triu(S >= 0.55, 1))}
    assert {tuple(p) for p in got.pairs.tolist()} == want and len(want) > 50
    np.testing.assert_allclose(got.similarity, S[got.pairs[:, 0], got.pairs[:, 1]], atol=1e-6)
    tolerance = {"fp32": 1e-6, "bf16": 0.0125, "fp16": 0.002}[precision]
    assert np.all(np.abs(got.nearest_similarity - S.max(axis=1)) <= tolerance)
    same = np.where(groups[:, None] == groups[None, :], S, -np.inf)
    assert np.all(np.abs(got.nearest_same_similarity - same.max(axis=1)) <= tolerance)
    assert np.all(groups[got.nearest_same] == groups)


def test_a_feature_set_with_views_is_audited_per_image_and_predicted_per_image(planted):
    """An image's augmented views are near-duplicates of each other by design: the audit looks at view 0
    (the plain crop), so a flip-views set gives the plain set's duplicate groups, not one per image; and
    predict --features labels each image once. (Without the view-0 filter every image and its mirror
    form a group, which this test catches.)"""
    root = planted["root"]
    views = featcache.extract(root / "data", cache_dir=root / "cache", image_size=128, views="flip", progress_bar=False)
    found = audit(features=views.id, cache_dir=root / "cache", progress_bar=False)
    assert found.feature_set["rows"] == views.n_rows // 2
    assert sorted(map(sorted, (g[1] for g in _groups(found)))) == sorted(map(sorted, (g[1] for g in _groups(planted["audit"]))))
    assert any("views per image" in n for n in found.notes)

    run = featcache.fit(head="logreg", features=views.id, cache_dir=root / "cache", runs_dir=root / "views-runs",
                        params={"C": [1.0]}, cv=2, progress_bar=False)
    r = run_cli("predict", "--features", views.id, "--run", run.path, "--cache-dir", root / "cache", "--json", cwd=root)
    assert r.returncode == 0, r.stderr
    predicted = json.loads(r.stdout)
    assert len(predicted) == views.n_rows // 2 and len({p["path"] for p in predicted}) == len(predicted)
