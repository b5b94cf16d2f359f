"""Peak memory of extraction over N and 4N images: featcache must stay flat, the naive loop grows.

Every run is a fresh Python process (``--child``) that extracts one synthetic set with resnet18
(weights none, default cut layer4: 512x7x7 per image) and reports ``getrusage().ru_maxrss``:

* ``self``      the extracting process (model, batches, features in flight)
* ``children``  the largest of its reaped children: the DataLoader worker, and featcache's forked
                HDF5 writer (``store.write_isolated``). A forked child's RSS includes pages it
                shares copy-on-write with the parent, so self+children over-counts; it is shown
                as an upper bound on the total.
* ``baseline``  VmHWM of the child after imports and building the model, before any image: the
                part that does not depend on the data.

Run from the repository root::

    python bench/extract_memory.py            # N=500 and 2000, ~4-6 min on 2 cores
    python bench/extract_memory.py --quick    # N=100 and 400, ~1 min
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import _common as C

MODEL, WEIGHTS = "resnet18", "none"


def vm_hwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(kind: str, data: str) -> None:
    import numpy as np  # noqa: F401  (counted in the baseline like in real use)
    import torch

    from featcache import backbones
    from featcache.extraction import engine

    torch.set_num_threads(engine.usable_cores())
    backbones.build(backbones.resolve(MODEL, weights=WEIGHTS))  # warm imports + one model, then drop it
    baseline = vm_hwm_mb()
    t0 = time.perf_counter()
    if kind == "featcache":
        import featcache

        with C.scratch("mem-cache-") as cache_dir:
            res = featcache.extract(data, model=MODEL, weights=WEIGHTS, cache_dir=cache_dir, progress_bar=False)
            rows = res.n_rows
            file_mb = res.path.stat().st_size / 2**20
    else:
        from naive_loop import naive_extract

        feats, _ = naive_extract(data, MODEL, WEIGHTS)
        rows, file_mb = len(feats), float("nan")
    seconds = time.perf_counter() - t0
    me = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print("CHILD " + json.dumps({"rows": rows, "self": me, "children": kids, "baseline": baseline,
                                  "seconds": seconds, "file_mb": file_mb}), flush=True)


def run_child(kind: str, data: Path) -> dict:
    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", kind, str(data)],
                         capture_output=True, text=True, timeout=900)
    line = next((l for l in out.stdout.splitlines() if l.startswith("CHILD ")), None)
    if line is None:
        raise RuntimeError(f"{kind} child failed: {out.stderr.strip()[-800:]}")
    return json.loads(line[6:])


def main() -> None:
    ap = argparse.ArgumentParser(description="peak RSS of extraction vs number of images")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("-n", type=int, help="N (default 500; quick 100); runs N and 4N")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(*args.child)
    n = args.n or (100 if args.quick else 500)
    report = [f"# extract_memory {'--quick ' if args.quick else ''}\n\n{C.machine()}"]
    print(report[0], flush=True)
    t_start = time.perf_counter()
    full = C.synthetic(3000 if 4 * n <= 3000 else 4 * n)
    sets = {n: C.subset(full, n), 4 * n: C.subset(full, 4 * n)}
    got: dict[tuple[str, int], dict] = {}
    for kind in ("featcache", "naive"):
        for size, data in sets.items():
            got[(kind, size)] = r = run_child(kind, data)
            C.say(f"  {kind} {size}: self {r['self']:.0f} MB, children {r['children']:.0f} MB, {r['seconds']:.0f} s")
    rows = []
    for kind in ("featcache", "naive"):
        a, b = got[(kind, n)], got[(kind, 4 * n)]
        for size, r in ((n, a), (4 * n, b)):
            rows.append([kind, size, r["baseline"], r["self"], r["children"], max(r["self"], r["children"]),
                         r["self"] + r["children"], r["file_mb"], r["seconds"]])
        rows.append([kind, "ratio 4N/N", "", b["self"] / a["self"], (b["children"] / a["children"]) if a["children"] else "-",
                     max(b["self"], b["children"]) / max(a["self"], a["children"]),
                     (b["self"] + b["children"]) / (a["self"] + a["children"]), "", ""])
    report.append(C.table(
        ["loop", "images", "baseline MB", "self peak MB", "children peak MB", "max(self, children) MB",
         "self+children MB (upper bound)", "HDF5 file MB", "seconds"], rows,
        f"Peak RSS, {MODEL} ({WEIGHTS} weights), 512x7x7 features (float16 in featcache, float32 in the naive loop)"))
    fa, fb = got[("featcache", n)], got[("featcache", 4 * n)]
    na, nb = got[("naive", n)], got[("naive", 4 * n)]
    verdict = (f"\nfeatcache peak (max of self, children) {max(fa['self'], fa['children']):.0f} -> "
               f"{max(fb['self'], fb['children']):.0f} MB for {n} -> {4 * n} images "
               f"(ratio {max(fb['self'], fb['children']) / max(fa['self'], fa['children']):.2f}); naive loop "
               f"{na['self']:.0f} -> {nb['self']:.0f} MB (ratio {nb['self'] / na['self']:.2f}); "
               f"naive features alone: {4 * n * 512 * 49 * 4 / 2**20:.0f} MB at {4 * n} images, x2 while np.concatenate copies.")
    report.append(verdict)
    print(verdict)
    C.write_report("extract_memory", report, args.quick, t_start)


if __name__ == "__main__":
    main()
