"""Cache reuse: how long a new head costs once features are cached, against extracting again.

For each backbone: (a) extract into a fresh cache + fit the svm head, (b) the same extract again
(a cache hit: no model is loaded), (c) fit from the cache alone; all as real `featcache`
subprocesses, so start-up cost is included the way a user pays it. Printed side by side:
(a)/(c) is what the cache saves per experiment.

    python bench/cache_reuse.py            # hymenoptera (398 photos), efficientnet_lite0 and resnet18 pooled
    python bench/cache_reuse.py --quick    # efficientnet_lite0 only
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Others, hymenoptera, machine, scratch  # noqa: E402

EXE = Path(sys.executable).with_name("featcache")


def timed(*args) -> float:
    with Others() as noise:
        start = time.perf_counter()
        r = subprocess.run([str(EXE), *map(str, args), "-q"], capture_output=True, text=True,
                           env={**os.environ, "FEATCACHE_OFFLINE": "1"})
        seconds = time.perf_counter() - start
    if r.returncode:
        sys.exit(f"failed: featcache {' '.join(map(str, args))}\n{r.stderr}")
    print(f"  {seconds:7.1f} s  featcache {' '.join(map(str, args))}   (others used {noise.cores:.2f} cores)", flush=True)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print(machine(), flush=True)
    data = hymenoptera()
    configs = [["--model", "efficientnet_lite0"]] + ([] if args.quick else [["--model", "resnet18", "--weights", "none", "--pool", "avg"]])
    rows = []
    for config in configs:
        with scratch("cache-reuse-") as tmp:
            common = ["--cache-dir", tmp / "cache"]
            print(f"\n{' '.join(config)} on {data}", flush=True)
            extract = timed("extract", "--data", data, *config, *common)
            fit_first = timed("fit", "--head", "svm", *common, "--runs-dir", tmp / "runs")
            hit = timed("extract", "--data", data, *config, *common)
            fit_again = timed("fit", "--head", "logreg", *common, "--runs-dir", tmp / "runs")
            rows.append((" ".join(config), extract + fit_first, hit, fit_again))
    print("\n| features | extract + fit svm, s | extract again (cache hit), s | fit logreg from cache, s | saved per new experiment |")
    print("|---|---|---|---|---|")
    for name, full, hit, fit in rows:
        print(f"| {name} | {full:.1f} | {hit:.1f} | {fit:.1f} | {full / fit:.1f}x |")


if __name__ == "__main__":
    main()
