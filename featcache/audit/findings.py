"""``audit``: duplicates, leaks, conflicting labels, likely label errors and outliers, from the cache.

Everything here reads a feature set and (for exact duplicates of old sets, and thumbnails) the image
files; the backbone is never run again. The steps:

- **exact duplicates**: files with the same SHA-256 (recorded at extraction; computed from the data
  folder for sets made before that, and said so);
- **near duplicates**: pairs whose pooled (maps: max over positions), L2-normalised features have
  cosine similarity at least ``threshold`` (``audit_search``: an exact blocked search in bounded memory);
- duplicates are joined into **groups**; a group whose members fall on both sides of the test split
  ``fit`` would make is a **test leak**, one spread over several of its CV folds a **fold leak**,
  one whose members carry different labels a **label conflict**;
- **likely label errors**: out-of-fold probabilities of a quick linear head (standardised pooled
  features, multinomial logistic regression), flagged where another class reaches its own average
  self-confidence and beats the given label (the confident-learning rule of Northcutt et al. 2021),
  ranked by how much more likely the other class is;
- **outliers**: images whose most similar image of the same class is far less similar than is usual
  for that class (a robust z-score of that similarity within the class).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from threadpoolctl import threadpool_limits

from featcache.audit.search import search
from featcache.config.fit import DEFAULT_HEAD, SEED, TEST_SIZE, check_split_options, default_cv
from featcache.core import paths, progress
from featcache.core.errors import FeatcacheError
from featcache.core.text import display
from featcache.extraction.scan import hash_files
from featcache.fitting.splits import assign
from featcache.store import cache
from featcache.store.integrity import open_verified
from featcache.store.manifest import UNLABELLED, Manifest
from featcache.store.pooling import pooled

KINDS = ("exact_duplicate", "near_duplicate", "label_error", "outlier")
KIND_TITLES = {"exact_duplicate": "exact duplicate", "near_duplicate": "near duplicate", "label_error": "likely label error",
               "outlier": "outlier"}
SEVERITIES = ("high", "medium", "low")
# Fixed for every set: standardised features, so one C suits most (ENGINEERING-NOTES: logistic
# regression peaks near C = 3e-3 on standardised 1,280-d pooled features; 1e-2 is a little softer
# on small sets and converges in a few hundred iterations).
LABEL_HEAD_C = 0.01
OUTLIER_Z = 4.0
MIN_CLASS_FOR_OUTLIERS = 8


@dataclass(frozen=True)
class AuditConfig:
    """What ``featcache audit`` can be told; defaults are the CLI's."""

    features: str | None = None  # id, id prefix or path; None: the newest complete set
    cache_dir: str | None = None
    data: str | None = None  # where the images are, if not in the folder recorded at extraction
    threshold: float = 0.92  # cosine similarity of a near-duplicate pair
    cv: int = default_cv(DEFAULT_HEAD)  # the CV folds `fit` would use with its default head
    test_size: float = TEST_SIZE
    seed: int = SEED
    label_folds: int = 5  # out-of-fold predictions for label errors
    device: str = "auto"  # where the similarity tiles run

    def __post_init__(self):
        if not 0 < self.threshold <= 1:
            raise FeatcacheError(f"--threshold {self.threshold} must be in (0, 1]: a cosine similarity, e.g. 0.92")
        check_split_options(self.cv, self.test_size)
        if self.label_folds < 2:
            raise FeatcacheError(f"--label-folds {self.label_folds} is too small: use 2 or more")


@dataclass
class Finding:
    """One thing a person should look at: a duplicate group, a likely label error or an outlier.

    ``entries`` are manifest entries (files); ``actions`` says, per entry, what the audit suggests:
    ``keep`` and ``drop`` for duplicates that agree on their label (drop the extra copies), ``review``
    where a person must decide (conflicting labels, label errors, outliers).
    """

    kind: str
    severity: str
    score: float  # orders findings within a severity, larger first
    entries: list[int]
    actions: list[str]
    detail: str
    flags: list[str] = field(default_factory=list)  # label_conflict, test_leak, fold_leak
    similarity: float | None = None  # lowest similarity within a duplicate group
    suggested: str | None = None  # the label the rest of the data suggests
    context: list[int] = field(default_factory=list)  # entries shown beside it for comparison (not flagged)


@dataclass
class Entries:
    """What the findings refer to, per manifest entry."""

    paths: list[str]
    labels: list[str]  # class name, or "" for an unlabelled row
    splits: list[str]  # stored split ("train", "val", "test", "")
    place: list[str]  # where `fit` would put it: "test", "fold k", or "" (no features / no split)
    rows: np.ndarray  # feature-set row of each entry, -1 if it has none (skipped at extraction)


@dataclass
class AuditResult:
    feature_set: dict
    config: AuditConfig
    findings: list[Finding]
    entries: Entries
    notes: list[str]
    seconds: dict[str, float]
    label_ranking: np.ndarray | None = None  # entries of every labelled row, most likely mislabelled first
    search: dict = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        groups = [f for f in self.findings if f.kind in ("exact_duplicate", "near_duplicate")]
        return {
            "exact_duplicate_groups": sum(f.kind == "exact_duplicate" for f in self.findings),
            "near_duplicate_groups": sum(f.kind == "near_duplicate" for f in self.findings),
            "images_in_duplicate_groups": sum(len(f.entries) for f in groups),
            "test_leaks": sum("test_leak" in f.flags for f in groups),
            "fold_leaks": sum("fold_leak" in f.flags for f in groups),
            "label_conflicts": sum("label_conflict" in f.flags for f in groups),
            "label_errors": sum(f.kind == "label_error" for f in self.findings),
            "outliers": sum(f.kind == "outlier" for f in self.findings),
        }

    def ordered(self, kind: str | None = None) -> list[Finding]:
        chosen = [f for f in self.findings if kind is None or f.kind == kind]
        return sorted(chosen, key=lambda f: (SEVERITIES.index(f.severity), -f.score))

    def to_dict(self) -> dict:
        e = self.entries
        return {
            "feature_set": self.feature_set,
            "config": asdict(self.config),
            "counts": self.counts(),
            "notes": self.notes,
            "seconds": self.seconds,
            "search": self.search,
            "findings": [
                {"kind": f.kind, "severity": f.severity, "score": round(float(f.score), 6), "flags": f.flags,
                 "detail": f.detail, "similarity": None if f.similarity is None else round(float(f.similarity), 6),
                 "suggested_label": f.suggested,
                 "members": [{"path": display(e.paths[i]), "label": e.labels[i], "split": e.splits[i], "place": e.place[i],
                              "action": a} for i, a in zip(f.entries, f.actions)]}
                for f in self.ordered()
            ],
        }


# ---------------------------------------------------------------------------------------- steps
def content_hashes(manifest: Manifest, root: Path, say: bool, notes: list[str]) -> list[str]:
    """The recorded hashes, completed from the data folder where they are missing."""
    recorded = manifest.content_hashes or [""] * len(manifest)
    missing = [i for i, h in enumerate(recorded) if not h and manifest.sizes[i] > 0]
    if not missing:
        return recorded
    if not root.is_dir():
        notes.append(f"{len(missing)} file(s) have no content hash recorded and the data folder {root} is not here: "
                     "exact duplicates among them are not checked (pass --data)")
        return recorded
    started = time.perf_counter()
    bar = progress.bar(len(missing), "hash files", say)
    try:
        computed = hash_files(replace(manifest, root=root), missing, progress=bar)
    finally:
        bar.close()
    out = [recorded[i] or computed[i] for i in range(len(recorded))]
    changed = sum(1 for i in missing if not computed[i])
    why = ("this feature set was made before featcache recorded them" if not any(recorded)
           else "they were not recorded for these files")
    notes.append(f"content hashes of {len(missing) - changed} file(s) computed from {root} ({why}; "
                 f"{time.perf_counter() - started:.1f} s)"
                 + (f"; {changed} file(s) changed since extraction or are unreadable: not compared" if changed else ""))
    return out


def fit_places(manifest: Manifest, cfg: AuditConfig, notes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per entry: in `fit`'s test set, and its CV fold (-1: test or unknown), exactly as `fit` assigns them."""
    n = len(manifest)
    stored_test = np.array([s == "test" for s in manifest.splits], dtype=bool)
    if not manifest.labelled:
        if not stored_test.any():
            notes.append("unlabelled rows: there is no test split or CV fold to leak across")
        return stored_test, np.full(n, -1, dtype=np.int64)
    try:
        return assign(manifest.paths, manifest.labels, manifest.splits, cfg.test_size, cfg.seed, cfg.cv)
    except FeatcacheError as err:
        notes.append(f"fit's split cannot be made ({err}): leaks are not checked")
        return np.zeros(n, dtype=bool), np.full(n, -1, dtype=np.int64)


class _Union:
    def __init__(self, n: int):
        self.parent = np.arange(n)

    def find(self, a: int) -> int:
        root = a
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[a] != root:
            self.parent[a], a = root, self.parent[a]
        return int(root)

    def join(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def exact_sets(hashes: list[str], sizes: np.ndarray) -> list[list[int]]:
    """Entries with the same bytes, two or more per set."""
    by_hash: dict[str, list[int]] = {}
    for i, h in enumerate(hashes):
        if h and sizes[i] > 0:
            by_hash.setdefault(h, []).append(i)
    return [members for members in by_hash.values() if len(members) > 1]


def duplicate_groups(hashes: list[str], same: list[list[int]], entry_pairs: np.ndarray, similarity: np.ndarray):
    """Connected groups of entries joined by equal bytes (``same``: ``exact_sets(hashes, sizes)``) or a
    near-duplicate pair: [(entries, exact, lowest similarity, highest similarity on an edge)]."""
    union = _Union(len(hashes))
    for members in same:
        for other in members[1:]:
            union.join(members[0], other)
    for (a, b) in entry_pairs.tolist():
        union.join(a, b)
    members: dict[int, list[int]] = {}
    touched = {i for m in same for i in m} | set(entry_pairs.ravel().tolist())
    for i in sorted(touched):
        members.setdefault(union.find(i), []).append(i)
    lowest: dict[int, float] = {}
    highest: dict[int, float] = {}
    for (a, b), s in zip(entry_pairs.tolist(), similarity.tolist()):
        root = union.find(a)
        lowest[root] = min(lowest.get(root, 1.0), s)
        highest[root] = max(highest.get(root, -1.0), s)
    groups = []
    for root, group in members.items():
        exact = len({hashes[i] for i in group}) == 1 and bool(hashes[group[0]])
        groups.append((group, exact, 1.0 if exact else lowest.get(root, 1.0), 1.0 if exact else highest.get(root, 1.0)))
    return groups


def out_of_fold_probabilities(X: np.ndarray, y: np.ndarray, folds: int, seed: int, bar=None) -> tuple[np.ndarray, np.ndarray]:
    """(rows that got an estimate, their (rows, classes) probabilities) from a k-fold linear head."""

    classes, counts = np.unique(y[y >= 0], return_counts=True)
    rows = np.flatnonzero(np.isin(y, classes[counts >= 2]))  # a class of one image cannot be held out
    if len(classes[counts >= 2]) < 2:
        return np.empty(0, dtype=np.int64), np.empty((0, 0))
    k = max(2, min(folds, int(counts[counts >= 2].min())))
    n_classes = int(y.max()) + 1
    P = np.zeros((len(rows), n_classes))
    splitter = StratifiedKFold(k, shuffle=True, random_state=seed)
    for train, valid in splitter.split(rows, y[rows]):
        X_train = X[rows[train]]  # one copy, standardised in place
        mean, scale = _moments(X_train)
        X_train -= mean
        X_train /= scale
        model = LogisticRegression(C=LABEL_HEAD_C, max_iter=300)
        # One BLAS/OpenMP thread: L-BFGS makes many small calls, and two threads fighting over them on
        # 2 busy cores made the fit 5-13x slower (1,600 x 1,280 x 10 classes: 2.7 s vs 0.2 s; 64,000: 15 s vs 1.5 s).
        with warnings.catch_warnings(), threadpool_limits(1):
            warnings.simplefilter("ignore", ConvergenceWarning)  # a quick head: 300 iterations is enough to rank
            model.fit(X_train, y[rows[train]])
        del X_train
        X_valid = X[rows[valid]]
        X_valid -= mean
        X_valid /= scale
        P[np.ix_(valid, model.classes_)] = model.predict_proba(X_valid)
        if bar is not None:
            bar.update(1)
    return rows, P


def _moments(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and standard deviation (1 where constant) as float32, accumulated in float64
    without a float64 copy of X (scikit-learn's StandardScaler makes two: 1.6 GB at 80,000 x 1,280)."""
    n = max(len(X), 1)
    mean = np.einsum("ij->j", X, dtype=np.float64) / n
    var = np.einsum("ij,ij->j", X, X, dtype=np.float64) / n - mean * mean
    scale = np.sqrt(np.maximum(var, 0))
    scale[scale < 1e-12] = 1.0
    return mean.astype(np.float32), scale.astype(np.float32)


def confident_errors(P: np.ndarray, given: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(flagged, suggested class, margin) per row. A row is flagged when some other class j reaches
    its threshold t_j (the mean probability of j among rows labelled j) and is more probable than
    the given label; the margin (best other class minus given) ranks how confidently the rest of the
    data disagrees."""
    n, k = P.shape
    idx = np.arange(n)
    t = np.array([P[given == j, j].mean() if np.any(given == j) else 1.0 for j in range(k)])
    p_given = P[idx, given]
    other = P.copy()
    other[idx, given] = -np.inf
    margin = other.max(axis=1) - p_given
    confident = np.where(P >= t[None, :], P, -np.inf)
    confident[idx, given] = -np.inf
    suggested = confident.argmax(axis=1)
    flagged = np.isfinite(confident[idx, suggested]) & (confident[idx, suggested] > p_given)
    return flagged, suggested, margin


def outlier_scores(nearest_same: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Robust z-score per row: how much less similar its nearest same-class image is than the class's
    median (in units of 1.4826 x MAD); 0 for rows of classes too small to judge."""
    z = np.zeros(len(groups))
    for g in np.unique(groups):
        rows = np.flatnonzero((groups == g) & np.isfinite(nearest_same))
        if len(rows) < MIN_CLASS_FOR_OUTLIERS:
            continue
        values = nearest_same[rows].astype(np.float64)
        median = np.median(values)
        mad = np.median(np.abs(values - median)) * 1.4826
        z[rows] = (median - values) / max(mad, 1e-3)
    return z


# ---------------------------------------------------------------------------------------- audit
@dataclass
class _Rows:
    """The audited rows (view 0 of each image), pooled, with their manifest entries."""

    X: np.ndarray
    row_entry: np.ndarray
    y: np.ndarray
    manifest: Manifest
    feature_set: dict
    data_root: Path


def audit(cfg: AuditConfig | None = None, progress_bar: bool = True, **settings) -> AuditResult:
    """Audit a cached feature set; ``audit(features="ab12", threshold=0.9)`` or ``audit(AuditConfig(...))``."""
    cfg = cfg or AuditConfig(**settings)
    say = progress_bar
    seconds: dict[str, float] = {}
    notes: list[str] = []
    clock = time.perf_counter()
    rows = _read(cfg, say, notes)
    manifest, row_entry = rows.manifest, rows.row_entry
    seconds["read"] = time.perf_counter() - clock

    clock = time.perf_counter()
    hashes = content_hashes(manifest, rows.data_root, say, notes)
    seconds["hash"] = time.perf_counter() - clock

    clock = time.perf_counter()
    bar = progress.bar(len(rows.X), "search neighbours", say)
    try:
        found = search(rows.X, rows.y, cfg.threshold, device=cfg.device, progress=bar)
    finally:
        bar.close()
    seconds["search"] = time.perf_counter() - clock

    is_test, fold = fit_places(manifest, cfg, notes)
    entries = _entries(manifest, row_entry, is_test, fold)
    findings: list[Finding] = []
    entry_pairs = row_entry[found.pairs] if len(found.pairs) else np.empty((0, 2), dtype=np.int64)
    same = exact_sets(hashes, manifest.sizes)
    identical = {i for m in same for i in m}
    for group, exact, lowest, highest in duplicate_groups(hashes, same, entry_pairs, found.similarity):
        findings.append(_group_finding(group, exact, lowest, highest, identical, manifest, is_test, fold, entries.rows,
                                       entries.labels))

    clock = time.perf_counter()
    ranking = _label_errors(rows, entries.labels, found, cfg, say, findings, notes)
    seconds["labels"] = time.perf_counter() - clock
    findings += _outliers(rows, entries.labels, found)

    search_info = {"precision": found.precision, "device": found.device, "candidates": int(found.candidates),
                   "pairs": int(len(found.pairs)), "threshold": cfg.threshold}
    return AuditResult(feature_set=rows.feature_set, config=cfg, findings=findings, entries=entries, notes=notes,
                       seconds={k: round(v, 3) for k, v in seconds.items()}, label_ranking=ranking, search=search_info)


def _read(cfg: AuditConfig, say: bool, notes: list[str]) -> _Rows:
    """The feature set's rows pooled to unit vectors; with views, view 0 of each image (an image's views are
    near duplicates of each other by design: the plain crop is audited)."""
    root_dir = paths.cache_dir(cfg.cache_dir)
    path = cache.latest(root_dir) if cfg.features is None else cache.find(cfg.features, root_dir)
    with open_verified(path) as fs:
        info = fs.info
        if cfg.features is None:
            progress.say(f"auditing feature set {fs.id} ({info.extractor.label}, {len(fs)} rows), the most recent in {root_dir}",
                         say)
        manifest = fs.manifest()
        row_entry, y = fs.index, fs.labels.astype(np.int64)
        bar = progress.bar(len(fs), "read features", say)
        try:
            X = pooled(fs, bar)
        finally:
            bar.close()
        if fs.n_views > 1:
            first = np.asarray(fs.view) == 0
            X, row_entry, y = X[first], np.asarray(row_entry)[first], y[first]
            notes.append(f"the feature set holds {fs.n_views} views per image ({info.views}): audited on view 0, the plain crop")
    feature_set = {"id": info.id, "path": str(path), "model": info.model, "layer": info.layer, "pool": info.pool,
                   "feature_shape": list(info.feature_shape), "rows": len(X), "files": len(manifest),
                   "data_root": info.data_root or None, "classes": manifest.class_names}
    data_root = Path(cfg.data) if cfg.data else Path(info.data_root or ".")
    return _Rows(X, np.asarray(row_entry), y, manifest, feature_set, data_root)


def _entries(manifest: Manifest, row_entry: np.ndarray, is_test: np.ndarray, fold: np.ndarray) -> Entries:
    """Each input file's label name and place in the fit (test, its CV fold, or no features)."""
    entry_row = np.full(len(manifest), -1, dtype=np.int64)
    entry_row[row_entry] = np.arange(len(row_entry))
    names = manifest.class_names
    label_name = [names[k] if k != UNLABELLED else "" for k in manifest.labels.tolist()]
    place = ["" if entry_row[i] < 0 else "test" if is_test[i] else f"fold {int(fold[i])}" if fold[i] >= 0
             else manifest.splits[i] or "" for i in range(len(manifest))]
    return Entries(paths=manifest.paths, labels=label_name, splits=manifest.splits, place=place, rows=entry_row)


def _label_errors(rows: _Rows, label_name: list[str], found, cfg: AuditConfig, say: bool, findings: list[Finding],
                  notes: list[str]) -> np.ndarray | None:
    """Likely label errors (out-of-fold confident learning) added to ``findings``; the entries ranked by how
    unlikely their label is (None for unlabelled sets)."""
    if not rows.manifest.labelled:
        notes.append("unlabelled rows: label conflicts, label errors and per-class outliers are not checked "
                     "(outliers are judged against all images)")
        return None
    names, y, row_entry = rows.manifest.class_names, rows.y, rows.row_entry
    bar = progress.bar(cfg.label_folds, "label check (out-of-fold)", say, unit="fold")
    try:
        checked, P = out_of_fold_probabilities(rows.X, y, cfg.label_folds, cfg.seed, bar)
    finally:
        bar.close()
    if not len(checked):
        notes.append("label errors not checked: fewer than two classes with two or more images")
        return None
    flagged, suggested, margin = confident_errors(P, y[checked])
    for at in np.flatnonzero(flagged):
        r, s = int(checked[at]), int(suggested[at])
        e, near = int(row_entry[r]), int(found.nearest[r])
        findings.append(Finding(
            kind="label_error", severity="medium", score=float(margin[at]), entries=[e], actions=["review"],
            suggested=names[s], context=[int(row_entry[near])] if near >= 0 else [],
            detail=f"labelled {label_name[e]}, but the rest of the data says {names[s]} (out-of-fold probability "
                   f"{P[at, s]:.2f} vs {P[at, y[r]]:.2f} for {label_name[e]}); its most similar image is shown beside it"))
    return row_entry[checked[np.argsort(-margin, kind="stable")]]


def _outliers(rows: _Rows, label_name: list[str], found) -> list[Finding]:
    """Images far from every other image of their class (robust z of the nearest same-class similarity)."""
    out = []
    z = outlier_scores(found.nearest_same_similarity, rows.y)
    for r in np.flatnonzero(z > OUTLIER_Z):
        e, near = int(rows.row_entry[r]), int(found.nearest_same[r])
        where = f"the class {label_name[e]}" if label_name[e] else "the set"
        out.append(Finding(
            kind="outlier", severity="low", score=float(z[r]), entries=[e], actions=["review"],
            context=[int(rows.row_entry[near])] if near >= 0 else [],
            detail=f"far from every other image of {where}: the most similar one is at {found.nearest_same_similarity[r]:.2f} "
                   f"(robust z = {z[r]:.1f}; shown beside it)"))
    return out


def _group_finding(group, exact, lowest, highest, identical, manifest, is_test, fold, entry_row, label_name) -> Finding:
    labels = {label_name[i] for i in group if label_name[i]}
    conflict = len(labels) > 1
    with_rows = [i for i in group if entry_row[i] >= 0]
    test_leak = any(is_test[i] for i in with_rows) and not all(is_test[i] for i in with_rows)
    folds = {int(fold[i]) for i in with_rows if not is_test[i] and fold[i] >= 0}
    fold_leak = len(folds) > 1
    flags = [name for name, on in (("label_conflict", conflict), ("test_leak", test_leak), ("fold_leak", fold_leak)) if on]
    severity = "high" if conflict or test_leak else "medium" if fold_leak else "low"
    if conflict:
        actions = ["review"] * len(group)
    else:  # keep one copy, preferably one on the training side, drop the rest
        # the copy on the training side, with features, the oldest file (likely the original)
        keep = min(group, key=lambda i: (bool(is_test[i]), entry_row[i] < 0, int(manifest.mtimes[i]), manifest.paths[i]))
        actions = ["keep" if i == keep else "drop" for i in group]
    kind = "exact_duplicate" if exact else "near_duplicate"
    if exact:
        what = "same bytes"
    else:
        what = f"similarity {lowest:.3f}" if len(group) == 2 or highest - lowest < 5e-4 else f"similarity {lowest:.3f} to {highest:.3f}"
        copies = sum(1 for i in group if i in identical)
        if copies:
            what += f" ({copies} of them with identical bytes)"
    parts = [f"{len(group)} files, {what}"]
    if conflict:
        parts.append("labelled " + " and ".join(sorted(labels)))
    if test_leak:
        parts.append("on both sides of the test split")
    elif fold_leak:
        parts.append(f"in {len(folds)} different CV folds")
    score = (1.0 if exact else lowest) + 0.5 * conflict + 0.25 * test_leak
    return Finding(kind=kind, severity=severity, score=score, entries=list(group), actions=actions, flags=flags,
                   similarity=lowest, detail="; ".join(parts))
