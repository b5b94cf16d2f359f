"""What ``featcache audit`` leaves behind: ``audit.md``, ``audit.html`` (with thumbnails), ``audit.csv``,
and the one-screen summary the terminal shows.

The page and the Markdown come from the same blocks as the run reports (``report.write``); each
finding is a card with its images side by side, in sections per kind, most severe first.
``audit.csv`` has one line per flagged file with the suggested action, so that a filtered copy of
it can be passed to ``featcache fit --exclude``.
"""

from __future__ import annotations

from pathlib import Path

from featcache.audit.findings import KIND_TITLES, AuditResult, Finding
from featcache.core import progress
from featcache.core.files import output_dir, writable_dir, write_csv
from featcache.core.text import Code, Link, display, printable
from featcache.report import render as report
from featcache.report.gallery import Card, Thumbnails

MAX_CARDS = 200  # per section on the page; audit.csv lists every finding
OUT_FIX = "choose another folder with --out, or make it writable"
COUNT_ROWS = (
    ("exact_duplicate_groups", "exact duplicate groups", "files with the same bytes"),
    ("near_duplicate_groups", "near duplicate groups", "re-encoded, resized or slightly cropped copies (similarity at or above the threshold)"),
    ("test_leaks", "groups across the test split", "a copy in training and one in the test set: inflates test accuracy"),
    ("fold_leaks", "groups across CV folds", "copies in different folds of fit's cross-validation: inflates CV accuracy"),
    ("label_conflicts", "groups with conflicting labels", "the same image under two labels: at most one is right"),
    ("label_errors", "likely label errors", "out-of-fold predictions confidently disagree with the label"),
    ("outliers", "outliers", "far from every other image of their class"),
)
CSV_COLUMNS = ("finding", "kind", "severity", "action", "path", "label", "split", "place", "suggested_label", "similarity",
               "score", "flags", "detail")


def check_out(out: str | Path) -> None:
    """Refuse, before any work, an ``--out`` folder featcache cannot write into."""
    writable_dir(Path(out), "audit folder", OUT_FIX, create=False)


def write(result: AuditResult, out: Path, say: bool = True) -> list[Path]:
    """Write audit.md, audit.html (and its thumbs/) and audit.csv into ``out``."""
    out = output_dir(out, what="audit folder", fix=OUT_FIX)
    csv_path = out / "audit.csv"
    _write_csv(result, csv_path)
    data_root = Path(result.config.data) if result.config.data else Path(result.feature_set.get("data_root") or ".")
    thumbs = Thumbnails(data_root, out)
    shown = sum(min(MAX_CARDS, len(result.ordered(k))) for k in KIND_TITLES)
    bar = progress.bar(shown, "thumbnails", say, unit="finding")
    blocks = _blocks(result, thumbs, bar)
    bar.close()
    title = f"featcache audit: feature set {result.feature_set['id']}"
    md, page = report.write(out, "audit", blocks, title)
    return [md, page, csv_path]


def _write_csv(result: AuditResult, path: Path) -> None:
    e = result.entries
    write_csv(path, CSV_COLUMNS, (
        [number, finding.kind, finding.severity, action, display(e.paths[entry]), e.labels[entry], e.splits[entry],
         e.place[entry], finding.suggested or "", "" if finding.similarity is None else f"{finding.similarity:.4f}",
         f"{finding.score:.4f}", " ".join(finding.flags), finding.detail]
        for number, finding in enumerate(result.ordered(), 1)
        for entry, action in zip(finding.entries, finding.actions)))


def _blocks(result: AuditResult, thumbs: Thumbnails, bar) -> list:
    fs, cfg, counts = result.feature_set, result.config, result.counts()
    shape = "x".join(map(str, fs["feature_shape"]))
    blocks: list = [
        ("p", ["Feature set ", Code(fs["id"]),
               (f": {fs['model']} / {fs['layer']} / pool={fs['pool']} ({shape}), {fs['rows']} images of {fs['files']} files in "
                f"{fs.get('data_root')}. Near duplicates: cosine similarity at least {cfg.threshold:g} between pooled (maps: max "
                f"over positions), L2-normalised features. Leaks: against the test set and {cfg.cv} CV folds that "),
               Code(f"featcache fit --test-size {cfg.test_size:g} --seed {cfg.seed} --cv {cfg.cv}"), " makes."]),
        ("table", ["finding", "count", "what it means"], [[label, counts[key], text] for key, label, text in COUNT_ROWS]),
    ]
    for note in result.notes:
        blocks.append(("p", f"Note: {note}."))
    if not thumbs.available:
        blocks.append(("p", f"Note: the images are not in {thumbs.data_root}: no thumbnails (pass --data)."))
    blocks.append(("p", ["Every flagged file is listed in ", Link("audit.csv", "audit.csv"),
                         " with a suggested action (keep, drop, review); a filtered copy of it can be passed to ",
                         Code("featcache fit --exclude FILE"), "."]))
    sections = (("exact_duplicate", "Exact duplicates"), ("near_duplicate", "Near duplicates"),
                ("label_error", "Likely label errors"), ("outlier", "Outliers"))
    for kind, heading in sections:
        found = result.ordered(kind)
        blocks.append(("h", 2, f"{heading} ({len(found)})"))
        if not found:
            blocks.append(("p", "None found."))
            continue
        if len(found) > MAX_CARDS:
            blocks.append(("p", f"The {MAX_CARDS} most severe of {len(found)} are shown; audit.csv lists them all."))
        blocks.append(("cards", [_card(k, f, result, thumbs, bar) for k, f in enumerate(found[:MAX_CARDS], 1)]))
    return blocks


def _card(number: int, f: Finding, result: AuditResult, thumbs: Thumbnails, bar) -> Card:
    e = result.entries
    flags = "".join(f" · {flag.replace('_', ' ')}" for flag in f.flags)
    images = []
    for entry, action in zip(f.entries, f.actions):
        where = e.place[entry] or e.splits[entry] or "no features"
        caption = [display(e.paths[entry]), f"{e.labels[entry] or 'unlabelled'} · {where}"]
        if action in ("keep", "drop"):
            caption[1] += f" · {action}"
        images.append((thumbs(e.paths[entry]), caption))
    for entry in f.context:
        images.append((thumbs(e.paths[entry]), [f"most similar: {display(e.paths[entry])}", e.labels[entry] or "unlabelled"]))
    bar.update(1)
    return Card(title=f"{number}. {f.severity} · {KIND_TITLES[f.kind]}{flags}", text=f.detail, images=images, tone=f.severity)


def summary(result: AuditResult, written: list[Path] | None = None, worst: int = 5) -> str:
    """The terminal's view: counts per kind, the worst few findings, where the files are."""
    fs, counts, e = result.feature_set, result.counts(), result.entries
    total = sum(result.seconds.values())
    lines = [f"audit of feature set {fs['id']} ({fs['model']} {fs['layer']}, {fs['rows']} images) in {total:.1f} s"]
    width = max(len(label) for _, label, _ in COUNT_ROWS)
    for key, label, _ in COUNT_ROWS:
        lines.append(f"  {label:<{width}}  {counts[key]:>5}")
    for note in result.notes:
        lines.append(f"note: {printable(note)}")
    ordered = result.ordered()
    if ordered:
        lines.append("worst:")
        for f in ordered[:worst]:
            who = " = ".join(printable(e.paths[i]) for i in f.entries[:3]) + (" ..." if len(f.entries) > 3 else "")
            lines.append(f"  {f.severity:<6} {KIND_TITLES[f.kind]:<18} {who}: {printable(f.detail)}")
    if written:
        lines.append("wrote " + ", ".join(str(p) for p in written))
    return "\n".join(lines)
