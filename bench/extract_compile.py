"""``extract --compile`` end to end: when does torch.compile pay for its compile time?

For each model and data set, ``featcache.extract`` runs twice in fresh processes (eager, then
``compile=True``; inductor's on-disk cache is pointed at a fresh folder so every compile is cold),
each into a fresh cache dir, then compiled once more with inductor's cache now warm (what a second
extraction with the same model and batch size pays). Printed side by side: wall time of the whole call (start-up, compile,
extraction, HDF5 write), featcache's reported images/s, the ratio, and the largest difference
between the two feature sets (compiled kernels round differently).

    python bench/extract_compile.py            # hymenoptera (398) and 2,000 synthetic JPEGs
    python bench/extract_compile.py --quick    # hymenoptera only, resnet18 only
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Others, hymenoptera, machine, scratch, subset, synthetic, table, wait_quiet  # noqa: E402

CHILD = """
import json, sys, featcache
r = featcache.extract(sys.argv[1], model=sys.argv[2], weights=sys.argv[3], cache_dir=sys.argv[4],
                      compile=sys.argv[5] == "1", progress_bar=False)
print(json.dumps({"path": str(r.path), "ips": r.images_per_second, "rows": r.n_rows}))
"""


def run(data: Path, model: str, weights: str, cache: Path, compile: bool, inductor: Path) -> dict:
    wait_quiet()
    with Others() as noise:
        start = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", CHILD, str(data), model, weights, str(cache), "1" if compile else "0"],
                             capture_output=True, text=True, env={**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(inductor)})
        wall = time.perf_counter() - start
    if out.returncode:
        sys.exit(f"extract failed ({model}, compile={compile}):\n{out.stderr[-2000:]}")
    return {**json.loads(out.stdout.strip().splitlines()[-1]), "wall": wall, "others": noise.cores}


def max_diff(a: str, b: str) -> float:
    import numpy as np

    import featcache

    with featcache.FeatureSet(a) as fa, featcache.FeatureSet(b) as fb:
        x, y = fa.features[:].astype(np.float32), fb.features[:].astype(np.float32)
    return float(np.abs(x - y).max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print(machine(), flush=True)
    datasets = [("hymenoptera 398", hymenoptera())]
    if not args.quick:
        datasets.append(("synthetic 2000", subset(synthetic(3000), 2000)))
    models = [("resnet18", "none")] + ([] if args.quick else [("efficientnet_lite0", "DEFAULT")])
    rows = []
    for label, data in datasets:
        for model, weights in models:
            with scratch("compile-") as tmp, tempfile.TemporaryDirectory(prefix="inductor-") as inductor:
                eager = run(data, model, weights, tmp / "eager", False, inductor)
                cold = run(data, model, weights, tmp / "cold", True, inductor)
                warm = run(data, model, weights, tmp / "warm", True, inductor)
                diff = max_diff(eager["path"], cold["path"])
            rows.append([label, model, f"{eager['wall']:.1f}", f"{cold['wall']:.1f} / {warm['wall']:.1f}",
                         f"{eager['wall'] / cold['wall']:.2f} / {eager['wall'] / warm['wall']:.2f}",
                         f"{eager['ips']:.1f}", f"{cold['ips']:.1f} / {warm['ips']:.1f}",
                         f"{cold['ips'] / eager['ips']:.2f} / {warm['ips'] / eager['ips']:.2f}",
                         f"{diff:.2g}", f"{max(eager['others'], cold['others'], warm['others']):.2f}"])
            print(" | ".join(rows[-1]), flush=True)
    table(["data", "model", "eager wall s", "compiled wall s (cold / warm)", "wall eager/compiled", "eager img/s",
           "compiled img/s (cold / warm)", "img/s compiled/eager", "max abs feature diff", "others"], rows,
          "featcache.extract, eager vs compile=True (fresh processes; inductor cache cold, then warm)")


if __name__ == "__main__":
    main()
