"""``featcache audit`` at scale: time per step and peak memory at 10,000 and 100,000 rows of 1,280-d features.

Synthetic features stand in for real ones (extracting 100,000 images takes hours on 2 cores): 10 classes,
non-negative like pooled CNN features, distinct rows at cosine 0.4-0.8 of each other; 0.5% of the rows
are near copies of another row (noise added: cosine about 0.99), 0.2% exact copies (same content hash),
1% carry a wrong label. They are written as an ordinary feature set (float16, the default dtype) and
audited by a fresh process per size, so that its peak RSS (``VmHWM``) is the audit's own.

    python bench/audit_scale.py                       # 10,000 and 100,000 rows, default search precision
    python bench/audit_scale.py --rows 10000 --precision fp32 bf16
    python bench/audit_scale.py --quick               # 2,000 and 10,000 rows
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from _common import machine, out_dir, scratch  # noqa: E402

DIM, CLASSES = 1280, 10


class SyntheticRows:
    """A ``write_feature_set`` rows source: deterministic blocks, never all in memory."""

    def __init__(self, n: int, true_labels: np.ndarray, copies: dict[int, int], seed: int = 0):
        self.n, self.labels_true, self.copies, self.seed = n, true_labels, copies, seed
        rng = np.random.default_rng(seed)
        self.centroids = np.maximum(rng.normal(0.0, 1.0, (CLASSES, DIM)), 0).astype(np.float32)

    def n_rows(self) -> int:
        return self.n

    def skipped(self) -> dict:
        return {}

    def row(self, i: int) -> np.ndarray:
        noise = np.random.default_rng([self.seed, i]).normal(0.0, 0.8, DIM).astype(np.float32)
        return np.maximum(0.7 * self.centroids[self.labels_true[i]] + noise, 0)

    def rows_in_order(self, block_rows: int):
        for start in range(0, self.n, block_rows):
            stop = min(self.n, start + block_rows)
            block = np.stack([self.row(i) for i in range(start, stop)])
            for i in range(start, stop):  # a near copy: its source row plus a little noise
                src = self.copies.get(i)
                if src is not None:
                    source = self.row(src)
                    block[i - start] = source + np.random.default_rng(i).normal(0, 0.1, DIM).astype(np.float32) * source.mean()
            yield np.arange(start, stop), block


def make(n: int, cache: Path, seed: int = 0) -> str:
    from featcache.store.featureset import write_feature_set
    from featcache.store.manifest import Manifest

    rng = np.random.default_rng(seed)
    true = rng.integers(0, CLASSES, n)
    labels = true.copy()
    flipped = rng.choice(n, n // 100, replace=False)
    labels[flipped] = (true[flipped] + rng.integers(1, CLASSES, len(flipped))) % CLASSES
    near = rng.choice(np.arange(1, n), n // 200, replace=False)
    copies = {int(r): int(rng.integers(0, r)) for r in near}
    hashes = [f"{i:064x}" for i in range(n)]
    for r in rng.choice(n, n // 500, replace=False):
        hashes[int(r)] = hashes[int(rng.integers(0, n))]
    rows = SyntheticRows(n, true, copies, seed)
    fsid = f"synthetic{n:07d}"
    manifest = Manifest(root=Path("/nonexistent/synthetic"), paths=[f"c{k}/img_{i:07d}.jpg" for i, k in enumerate(labels)],
                        sizes=np.full(n, 50_000, dtype=np.int64), mtimes=np.zeros(n, dtype=np.int64),
                        labels=labels.astype(np.int32), splits=[""] * n, class_names=[f"c{k}" for k in range(CLASSES)],
                        content_hashes=hashes)
    attrs = {"id": fsid, "model": "synthetic", "layer": "pooled", "pool": "avg", "created": "2026-11-26T00:00:00+00:00",
             "data_root": "/nonexistent/synthetic", "feature_shape": [DIM], "dtype": "float16", "manifest_sha256": "-",
             "format": 1, "key": {"synthetic": n}}
    cache.mkdir(parents=True, exist_ok=True)
    write_feature_set(cache / f"{fsid}.h5", attrs, manifest, rows, (DIM,), "float16")
    return fsid


def high_water_mb() -> int:
    """Peak RSS of this process image (VmHWM). Not ``ru_maxrss``: Linux carries it over the exec from the
    forked parent."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) // 1024
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def child(cache: str, fsid: str, precision: str) -> None:
    """Run in a fresh process: one audit, its steps' times and the peak RSS, as JSON on stdout."""
    import sklearn.linear_model  # noqa: F401  (imports counted in the baseline, not the audit)
    import torch  # noqa: F401

    import featcache.audit.findings as audit_mod
    from featcache.audit import search as audit_search
    from featcache.audit.report import write

    baseline = high_water_mb()
    if precision != "auto":  # pin the tile precision for a comparison
        original = audit_search.pick
        audit_search.pick = lambda device="auto", _p="auto": original(device, precision)
    started = time.perf_counter()
    result = audit_mod.audit(features=fsid, cache_dir=cache, progress_bar=False)
    audited = time.perf_counter() - started
    started = time.perf_counter()
    write(result, Path(cache) / f"audit-{fsid}", say=False)
    written = time.perf_counter() - started
    peak = high_water_mb()
    print(json.dumps({"rows": result.feature_set["rows"], "seconds": result.seconds, "audit_s": round(audited, 2),
                      "report_s": round(written, 2), "peak_mb": round(peak), "baseline_mb": round(baseline),
                      "counts": result.counts(), "search": result.search}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--precision", nargs="+", default=["auto"], help="auto, fp32, bf16 (each size x each)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--child", nargs=3, metavar=("CACHE", "ID", "PRECISION"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    sizes = [2_000, 10_000] if args.quick else args.rows
    lines = ["| rows | search | read s | hash s | search s | label check s | audit total s | report s | peak RSS MB "
             "| of which imports MB | pairs found | groups | label errors |", "|" + "---|" * 13]
    print(machine())
    with scratch("audit-scale-") as cache:
        for n in sizes:
            t = time.perf_counter()
            fsid = make(n, cache)
            print(f"wrote {n} rows in {time.perf_counter() - t:.1f} s", file=sys.stderr)
            for precision in args.precision:
                r = subprocess.run([sys.executable, __file__, "--child", str(cache), fsid, precision], capture_output=True,
                                   text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
                if r.returncode:
                    sys.exit(r.stderr)
                d = json.loads(r.stdout.strip().splitlines()[-1])
                s, c = d["seconds"], d["counts"]
                lines.append(f"| {n:,} | {d['search']['precision']} on {d['search']['device']} | {s['read']:.1f} | {s['hash']:.1f} | "
                             f"{s['search']:.1f} | {s['labels']:.1f} | {d['audit_s']:.1f} | {d['report_s']:.1f} | {d['peak_mb']:,} | "
                             f"{d['baseline_mb']:,} | {d['search']['pairs']:,} | "
                             f"{c['exact_duplicate_groups'] + c['near_duplicate_groups']:,} | {c['label_errors']:,} |")
                print(lines[-1], file=sys.stderr)
            (cache / f"{fsid}.h5").unlink()
    table = "\n".join(lines)
    print(table)
    (out_dir() / "audit_scale.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
