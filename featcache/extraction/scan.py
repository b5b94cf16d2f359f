"""Walking an image folder into a ``Manifest``: class folders, split folders, a labels file or no labels.

Labels come from one of three layouts: class folders (``root/<class>/*.jpg``, optionally under
split folders ``train|val|test/`` and their common aliases), a labels file (``--labels FILE.csv``
with columns ``path,label[,split]``, paths relative to the root), or none at all (a folder of
images without class subfolders: every row is unlabelled). Layouts that read two ways are refused.
Each folder is read once; directory links are followed only out of the tree; featcache's own
output folders are passed over. ``hash_files`` adds the content hashes ``audit`` uses.
"""

from __future__ import annotations

import csv
import errno
import io
import os
import stat as stat_mod
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from featcache.core.errors import DataError
from featcache.core.files import output_kind, sha256_file
from featcache.core.text import display
from featcache.store.manifest import UNLABELLED, Manifest

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".pbm", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
)
# Split folder names and --labels split values, matched case-insensitively. Only "test" changes what
# fit does (its test set); train and val are pooled for the cross-validation.
SPLIT_ALIASES = {"train": "train", "training": "train",
                 "val": "val", "valid": "val", "validation": "val", "dev": "val",
                 "test": "test", "testing": "test", "eval": "test"}
SPLITS = ("train", "val", "test")




def scan(root: str | os.PathLike, labels: str | os.PathLike | None = None) -> Manifest:
    """Walk an ImageFolder tree (``root/class/*.jpg``) or a split one (``root/train/class/*.jpg``);
    with ``labels``, every image under ``root`` labelled by that CSV file; a folder of images without
    class subfolders gives unlabelled rows.

    A layout that could mean two things is refused rather than guessed: top-level folders that all
    hold only subfolders (``part1/cats/..``) would otherwise become classes named after the parts,
    and split folders beside other folders (``train/``, ``cats/``) mix two layouts."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"data directory {root} does not exist: pass your image folder with --data (default ./data)")
    if not root.is_dir():
        raise DataError(f"data path {root} is not a directory: pass a folder with one subfolder per class")
    walk = Walk(root)
    listing = walk.listing_or_fail(root, "data folder")  # a marker in it is no reason to refuse: --data names it
    if labels is not None:
        return _scan_labels_file(root, Path(labels))
    top = walk.folders(root, listing)
    if not top:
        return _scan_unlabelled(root)
    layout = _layout(root, top)

    class_dirs: list[tuple[str, str, str, str, Listing]] = []  # (split, class, dir, real path, listing)
    groups = [(SPLIT_ALIASES[f.name.lower()], f.path, f.listing) for f in top] if layout == "split" else [("", root, listing)]
    if layout == "split":
        _leave_loose_images(walk, listing)
    for split, parent, parent_listing in groups:
        children = walk.folders(parent, parent_listing) if split else top
        _leave_loose_images(walk, parent_listing)
        if not children:
            where = f"{display(str(parent))} (split {split})" if split else display(str(parent))
            raise DataError(
                f"no class folders in {where}: put each class's images in its own subfolder, e.g. {display(str(parent))}/cats/1.jpg"
            )
        class_dirs += [(split, c.name, c.path, c.real, c.listing) for c in children]
    class_names = sorted({c for _, c, _, _, _ in class_dirs})
    label_of = {c: i for i, c in enumerate(class_names)}

    rows: list[tuple[bytes, str, int, int, int, str, str | None]] = []
    ignored: list[str] = []
    for split, cls, folder, real, class_listing in class_dirs:
        found = 0
        for path in walk.files(folder, real, class_listing):
            rel = os.path.relpath(path, root)
            if Path(path).suffix.lower() not in IMAGE_EXTENSIONS:
                ignored.append(rel)
                continue
            size, mtime, problem = _stat(path)
            rows.append((os.fsencode(rel), rel, size, mtime, label_of[cls], split, problem))
            found += 1
        if not found:
            raise DataError(
                f"class folder {display(folder)} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS)[:5])}, ...): "
                "add images or remove the folder"
            )
    return _build(root, rows, class_names, ignored, left_out=walk.left_out)


def _leave_loose_images(walk: "Walk", listing: "Listing") -> None:
    """Images beside the class folders (in the root or a split folder) have no class: listed, not read."""
    for entry in listing.files:
        if Path(entry.name).suffix.lower() in IMAGE_EXTENSIONS:
            walk.leave(entry.path, "an image outside any class folder, so without a label: move it into a class folder")


def _layout(root: Path, top: list["Folder"]) -> str:
    """"split" (``train/<class>/..``) or "class" (``<class>/..``) for the top-level folders ``top``."""
    named = [f for f in top if f.name.lower() in SPLIT_ALIASES]
    if len(named) == len(top):
        return "split"
    names = lambda folders: ", ".join(display(f.name) + "/" for f in folders[:4]) + (", ..." if len(folders) > 4 else "")  # noqa: E731
    splits = [f for f in named if f.listing.dirs]
    if splits:
        others = [f for f in top if f not in named]
        raise DataError(
            f"{display(str(root))} mixes split folders ({names(splits)}) with other folders ({names(others)}): move the "
            "others into a split folder or out of --data, or give the labels in a CSV with --labels"
        )
    if all(f.listing.dirs and not f.holds_images for f in top):
        if len(top) == 1:
            raise DataError(f"{display(str(root))} holds a single folder, {names(top)}, with only subfolders in it: "
                            f"pass --data {display(str(top[0].path))}")
        raise DataError(
            f"every folder in {display(str(root))} ({names(top)}) holds only subfolders, which reads neither as class folders "
            "nor as split folders: name split folders train, val or test (also training, valid, validation, dev, testing, "
            "eval), or give the labels in a CSV with --labels"
        )
    return "class"


def _build(root: Path, rows: list[tuple[bytes, str, int, int, int, str, str | None]], class_names: list[str],
           ignored: list[str], left_out: list[tuple[str, str]] = (), **extra) -> Manifest:
    """Rows ``(path bytes, path, size, mtime_ns, label, split, problem)`` -> a Manifest in byte order of
    the paths (the same order on every platform and locale: part of the manifest hash)."""
    rows.sort(key=lambda r: r[0])
    return Manifest(
        root=root.resolve(), paths=[r[1] for r in rows], sizes=np.array([r[2] for r in rows], dtype=np.int64),
        mtimes=np.array([r[3] for r in rows], dtype=np.int64), labels=np.array([r[4] for r in rows], dtype=np.int32),
        splits=[r[5] for r in rows], class_names=class_names, unreadable={i: r[6] for i, r in enumerate(rows) if r[6]},
        ignored=sorted(ignored), left_out=sorted(left_out, key=lambda e: os.fsencode(e[0])), **extra,
    )


def _row(root: Path, path: str) -> tuple[bytes, str, int, int, str | None]:
    rel = os.path.relpath(path, root)
    size, mtime, problem = _stat(path)
    return os.fsencode(rel), rel, size, mtime, problem


def _scan_unlabelled(root: Path) -> Manifest:
    """A folder of images with no class subfolders: rows without labels (audit and predict use them)."""
    rows, ignored = [], []
    walk = Walk(root)
    for path in walk.files(str(root), walk.root_real):
        if Path(path).suffix.lower() in IMAGE_EXTENSIONS:
            path_bytes, rel, size, mtime, problem = _row(root, path)
            rows.append((path_bytes, rel, size, mtime, UNLABELLED, "", problem))
        else:
            ignored.append(os.path.relpath(path, root))
    if not rows:
        raise DataError(
            f"no class folders and no images in {root}: put each class's images in its own subfolder, e.g. {root}/cats/1.jpg, "
            "or images directly in it for an unlabelled set"
        )
    return _build(root, rows, [], ignored, walk.left_out)


def read_labels_file(path: Path, root: Path) -> dict[str, tuple[str, str]]:
    """``{relative path: (label, split)}`` from a CSV with a header ``path,label[,split]``."""
    try:
        # newline="": the csv module handles line ends itself, also inside quoted cells (read_text would
        # turn a quoted "\r" into "\n", and str.splitlines splits at \x1c, \x85, \u2028 ... inside a cell).
        with open(path, encoding="utf-8-sig", newline="") as f:
            text = f.read()
    except FileNotFoundError:
        raise DataError(f"labels file {path} does not exist: pass a CSV with columns path,label[,split] to --labels") from None
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read labels file {path} ({err}): pass a UTF-8 CSV with columns path,label[,split]") from None
    # Cells are user text and may hold line breaks or escapes: messages quote them with repr(), one line.
    reader = csv.reader(io.StringIO(text, newline=""))
    header = [h.strip().lower() for h in next(reader, [])]
    for column in ("path", "label"):
        if column not in header:
            shown = repr(",".join(header)) if header else "empty"
            raise DataError(f"labels file {path} has no '{column}' column (header: {shown}): "
                            "its first line must be path,label or path,label,split")
    at = {name: header.index(name) for name in ("path", "label", "split") if name in header}
    out: dict[str, tuple[str, str]] = {}
    line_of: dict[str, int] = {}
    for row in reader:
        line = reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        cell = lambda name: row[at[name]].strip() if name in at and at[name] < len(row) else ""  # noqa: E731
        raw, label, split = cell("path"), cell("label"), cell("split")
        where = f"labels file {path}, line {line}"
        if not raw:
            raise DataError(f"{where}: empty path: give each image's path relative to --data")
        if "\0" in raw:
            raise DataError(f"{where}: the path {raw!r} holds a NUL character, which no file name can: correct the path")
        if not label:
            raise DataError(f"{where}: {raw!r} has no label: fill it in or drop the row")
        if split and split.lower() not in SPLIT_ALIASES:
            raise DataError(f"{where}: unknown split {split!r}: use train, val, test or leave it empty "
                            f"(also {', '.join(a for a in SPLIT_ALIASES if a not in SPLITS)})")
        rel = os.path.relpath(os.path.abspath(raw if os.path.isabs(raw) else root / raw), os.path.abspath(root))
        if rel == os.curdir or rel == os.pardir or rel.startswith(os.pardir + os.sep):
            raise DataError(f"{where}: {raw!r} is outside the data folder {root}: paths are relative to --data")
        value = (label, SPLIT_ALIASES[split.lower()] if split else "")
        if rel in out and out[rel] != value:
            raise DataError(f"{where}: {raw!r} is listed again with another label or split "
                            f"({out[rel][0]!r} on line {line_of[rel]}, {label!r} here): keep one row per image")
        out[rel], line_of[rel] = value, line
    if not out:
        raise DataError(f"labels file {path} lists no images: add rows path,label[,split] below the header")
    return out


def _scan_labels_file(root: Path, labels: Path) -> Manifest:
    """Every row the CSV lists (missing files become skipped rows with a reason); images under the
    root that it does not list are reported as ``unlisted``, not silently dropped."""
    listed = read_labels_file(labels, root)
    class_names = sorted({label for label, _ in listed.values()})
    label_of = {c: i for i, c in enumerate(class_names)}
    on_disk = {}
    ignored = []
    walk = Walk(root)
    for path in walk.files(str(root), walk.root_real):
        rel = os.path.relpath(path, root)
        if Path(path).suffix.lower() in IMAGE_EXTENSIONS:
            on_disk[rel] = path
        elif rel not in listed and os.path.abspath(path) != os.path.abspath(labels):
            ignored.append(rel)
    rows = []
    for rel, (label, split) in listed.items():
        if rel in on_disk or os.path.lexists(root / rel):
            _, _, size, mtime, problem = _row(root, str(root / rel))
        else:
            size, mtime, problem = -1, 0, f"listed in {labels.name} but not found under the data folder"
        rows.append((os.fsencode(rel), rel, size, mtime, label_of[label], split, problem))
    return _build(root, rows, class_names, ignored, walk.left_out, labels_file=str(labels.resolve()),
                  unlisted=sorted((rel for rel in on_disk if rel not in listed), key=os.fsencode))


def hash_file(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, hex ("" when it cannot be read). hashlib releases the GIL on large
    buffers, so ``hash_files``' threads overlap."""
    try:
        return sha256_file(path)
    except OSError:
        return ""


def hash_files(manifest: Manifest, entries, known: dict[str, tuple[int, int, str]] | None = None, progress=None,
               threads: int = 4) -> list[str]:
    """Content hashes of ``entries`` of ``manifest``, others "".

    ``known``: ``{path: (size, mtime_ns, sha256)}`` from earlier feature sets of the folder: a file
    whose size and mtime still match is not read again. A file that changed since the manifest was
    taken gets "" rather than a hash of bytes the features were not made from.
    """
    out = [""] * len(manifest)
    known = known or {}
    todo = []
    for i in entries:
        path, size, mtime = manifest.paths[i], int(manifest.sizes[i]), int(manifest.mtimes[i])
        old = known.get(path)
        if size > 0 and old and (old[0], old[1]) == (size, mtime) and old[2]:
            out[i] = old[2]
        elif size > 0:
            todo.append(i)
            continue
        if progress is not None:
            progress.update(1)

    def one(i: int) -> tuple[int, str]:
        full = manifest.root / manifest.paths[i]
        value = hash_file(full)
        return i, value if _stat(str(full))[:2] == (int(manifest.sizes[i]), int(manifest.mtimes[i])) else ""

    with ThreadPoolExecutor(max(1, threads)) as pool:
        for i, value in pool.map(one, todo):
            out[i] = value
            if progress is not None:
                progress.update(1)
    return out


@dataclass
class Listing:
    """One folder's entries, hidden ones left out, each kind in byte order of the names."""

    files: list[os.DirEntry]  # everything that is not a folder (broken links and FIFOs included)
    dirs: list[os.DirEntry]  # folders, and links to folders
    output: str | None  # why the folder is featcache's own output (then it is never read), else None


@dataclass
class Folder:
    """A folder a walk entered: where it was reached, its real path, what it holds."""

    path: str
    real: str
    listing: Listing

    @property
    def name(self) -> str:
        return os.path.basename(self.path)

    @property
    def holds_images(self) -> bool:
        return any(Path(e.name).suffix.lower() in IMAGE_EXTENSIONS for e in self.listing.files)


class Walk:
    """One pass over a data folder, reading each folder at most once, so no file becomes two rows.

    A symbolic link to a folder is followed only when its target lies outside the data folder, does
    not hold the data folder, and was not read already (by real path); a link into the data folder
    is not followed, since the files it points to are read where they are. featcache's own output
    folders, folders that cannot be listed and links not followed are passed over and listed in
    ``left_out`` with why, never dropped in silence. Links to files are files: each is a row.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = os.fspath(root)
        self.root_real = os.path.realpath(root)
        self.read: set[str] = {self.root_real}
        self.left_out: list[tuple[str, str]] = []  # (path relative to the root, why)

    def leave(self, path: str, why: str) -> None:
        self.left_out.append((os.path.relpath(path, self.root), why))

    @staticmethod
    def listing(path: str | os.PathLike) -> Listing:
        """Raises OSError when the folder cannot be listed."""
        with os.scandir(path) as it:
            entries = sorted(it, key=lambda e: os.fsencode(e.name))
        files, dirs = [], []
        for e in entries:
            if not e.name.startswith("."):
                (dirs if _is_dir(e) else files).append(e)
        return Listing(files, dirs, output_kind(path, {e.name for e in entries}))

    def listing_or_fail(self, path: str | os.PathLike, what: str) -> Listing:
        try:
            return self.listing(path)
        except OSError as err:
            raise DataError(f"cannot list {what} {display(os.fspath(path))}: {_reason(err)}; make it readable "
                            f"(chmod +rx) or move it out of --data") from None

    def enter(self, entry: os.DirEntry, parent_real: str) -> str | None:
        """The real path of the folder ``entry``, or None where it is passed over (and listed)."""
        if entry.is_symlink():
            real = os.path.realpath(entry.path)
            target = display(os.readlink(entry.path))
            if _within(real, self.root_real):
                why = f"symbolic link to {target}, inside the data folder: not followed (its files are read where they are)"
            elif _within(self.root_real, real):
                why = f"symbolic link to {target}, which holds the data folder: not followed (a loop)"
            elif real in self.read:
                why = f"symbolic link to {target}, a folder already read: not followed (its files would be read twice)"
            else:
                why = None
        else:
            real = os.path.join(parent_real, entry.name)
            why = "a folder already read through a symbolic link" if real in self.read else None
        if why:
            self.leave(entry.path, why)
            return None
        self.read.add(real)
        return real

    def folders(self, path: str | os.PathLike, listing: Listing) -> list[Folder]:
        """The subfolders of ``path`` a scan reads as split or class folders: each must be listable
        (a class folder that cannot be is an error, not an empty class)."""
        parent_real = os.path.realpath(path)
        out = []
        for entry in listing.dirs:
            real = self.enter(entry, parent_real)
            if real is None:
                continue
            folder = Folder(entry.path, real, self.listing_or_fail(entry.path, "folder"))
            why = folder.listing.output or self._holds_only_outputs(folder)
            if why:
                self.leave(entry.path, why)
                continue
            out.append(folder)
        return out

    def _holds_only_outputs(self, folder: Folder) -> str | None:
        """An unmarked folder of nothing but featcache outputs (``runs/`` of an older version, whose runs
        are recognised by their files) is an output folder too, not an empty class."""
        if folder.holds_images or not folder.listing.dirs:
            return None
        for entry in folder.listing.dirs:
            try:
                if self.listing(entry.path).output is None:
                    return None
            except OSError:
                return None
        return "a folder of featcache outputs only (made by an older version)"

    def files(self, folder: str, real: str, listing: Listing | None = None):
        """Paths of the files under ``folder`` (already entered, with real path ``real``), depth first.
        ``folder`` itself is read even if it holds an output marker: the caller chose it."""
        stack = [(folder, real, listing, True)]
        while stack:
            path, real, listing, start = stack.pop()
            if listing is None:
                try:
                    listing = self.listing(path)
                except OSError as err:
                    self.leave(path, f"cannot list folder: {_reason(err)}")
                    continue
                if listing.output and not start:
                    self.leave(path, listing.output)
                    continue
            for entry in listing.files:
                yield entry.path
            entered = [(e.path, self.enter(e, real)) for e in listing.dirs]
            stack.extend((p, r, None, False) for p, r in reversed(entered) if r is not None)


def files_under(folder: str | os.PathLike) -> tuple[list[str], list[tuple[str, str]]]:
    """Every file under ``folder`` by the rules of a scan, and what was passed over (relative path, why)."""
    walk = Walk(folder)
    if not os.path.isdir(folder):
        return [], []
    files = list(walk.files(os.fspath(folder), walk.root_real))
    return files, walk.left_out


def _within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()  # follows symlinks
    except OSError:
        return False


def _reason(err: OSError) -> str:
    return "symlink loop" if err.errno == errno.ELOOP else (err.strerror or type(err).__name__).lower()


def problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be an input row before it is opened (None: a non-empty regular file).

    ``extract`` and ``predict`` both ask, so a FIFO named ``x.jpg`` is never opened (it would block)."""
    return _stat(os.fspath(path))[2]


def _stat(path: str) -> tuple[int, int, str | None]:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            return -1, 0, f"broken symbolic link: it points to {display(os.readlink(path))}, which does not exist"
        return -1, 0, "cannot stat file: no such file or directory"
    except OSError as err:
        return -1, 0, f"cannot stat file: {_reason(err)}"
    if not stat_mod.S_ISREG(st.st_mode):
        return -1, 0, "not a regular file"
    if st.st_size == 0:
        return 0, int(st.st_mtime_ns), "empty file (0 bytes)"
    return int(st.st_size), int(st.st_mtime_ns), None
