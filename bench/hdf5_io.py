"""HDF5 layout bench: write/read throughput and file size of real features, by chunking, filter, dtype.

Features are real: hymenoptera (398 images) through efficientnet_lite0's default cut (1280x7x7),
extracted once with featcache into bench/out/featcache-cache/ (a later run is a cache hit), as
float32; float16 is the same array cast (what featcache stores by default), and "pooled" is the
spatial mean (1280-d). Every dataset is written like featcache writes it (rows in blocks of 8
chunks' worth, fletcher32 on) into a fresh file under bench/out/, then read back in full. Reads
come from the page cache (the file was just written): they measure HDF5 + filter cost, which is
what repeated fits pay; a cold read from disk adds the device's time for the file size.

Variants (each measured ``--repeats`` times, median reported):

* chunk rows: featcache's ``store.chunk_rows`` (~1 MiB), 1 row per chunk, ~8 MiB
* filter: none, lzf + shuffle, gzip level 1 + shuffle, gzip level 4 + shuffle
* dtype: float16, float32; kind: spatial map (1280x7x7) and pooled (1280)
* one CV fold's rows (10%, random, sorted) via h5py fancy indexing vs full read + NumPy indexing

Throughput is in MB of uncompressed feature bytes per second (1 MB = 10^6 bytes).

Run from the repository root::

    python bench/hdf5_io.py            # ~3-5 min
    python bench/hdf5_io.py --quick    # ~1 min (fewer variants, 1 repeat)
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import _common as C
import h5py
import numpy as np

from featcache import store

FILTERS = {
    "none": dict(),
    "lzf+shuffle": dict(compression="lzf", shuffle=True),
    "gzip1+shuffle": dict(compression="gzip", compression_opts=1, shuffle=True),
    "gzip4+shuffle": dict(compression="gzip", compression_opts=4, shuffle=True),
}


def real_features() -> np.ndarray:
    import featcache

    cache = C.out_dir() / "featcache-cache"
    res = featcache.extract(C.hymenoptera(), model="efficientnet_lite0", dtype="float32", cache_dir=cache, progress_bar=False)
    with res.open() as fs:
        return fs.load()


def chunkings(shape: tuple[int, ...], dtype: str, n: int) -> dict[str, int]:
    row = int(np.prod(shape)) * np.dtype(dtype).itemsize
    return {
        f"featcache ~1 MiB ({store.chunk_rows(shape, dtype, n)} rows)": store.chunk_rows(shape, dtype, n),
        "1 row": 1,
        f"~8 MiB ({max(1, min(n, round(8 * 2**20 / row)))} rows)": max(1, min(n, round(8 * 2**20 / row))),
    }


def write(path: Path, data: np.ndarray, rows: int, filt: dict) -> float:
    block = store.chunk_rows(data.shape[1:], data.dtype.name, len(data)) * 8  # featcache's write block
    t0 = time.perf_counter()
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("features", shape=data.shape, dtype=data.dtype, chunks=(rows,) + data.shape[1:],
                              fletcher32=True, **filt)
        for s in range(0, len(data), block):
            ds[s:s + block] = data[s:s + block]
    return time.perf_counter() - t0


def read_full(path: Path) -> tuple[float, np.ndarray]:
    t0 = time.perf_counter()
    with h5py.File(path, "r") as f:
        out = f["features"][()]
    return time.perf_counter() - t0, out


def read_fold_fancy(path: Path, idx: np.ndarray) -> float:
    t0 = time.perf_counter()
    with h5py.File(path, "r") as f:
        f["features"][idx]
    return time.perf_counter() - t0


def read_fold_full(path: Path, idx: np.ndarray) -> float:
    t0 = time.perf_counter()
    with h5py.File(path, "r") as f:
        f["features"][()][idx]
    return time.perf_counter() - t0


def bench_one(path: Path, data: np.ndarray, rows: int, filt: dict, idx: np.ndarray, repeats: int) -> dict:
    mb = data.nbytes / 1e6
    w, r, fa, fb = [], [], [], []
    for _ in range(repeats):
        path.unlink(missing_ok=True)
        w.append(write(path, data, rows, filt))
        t, back = read_full(path)
        r.append(t)
        fa.append(read_fold_fancy(path, idx))
        fb.append(read_fold_full(path, idx))
    assert np.array_equal(back, data)
    size = path.stat().st_size / 1e6
    path.unlink()
    return {"write": mb / C.median(w), "read": mb / C.median(r), "size": size, "ratio": mb / size,
            "fancy_ms": C.median(fa) * 1000, "full_ms": C.median(fb) * 1000}


def main() -> None:
    ap = argparse.ArgumentParser(description="HDF5 layout bench on real features")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int)
    args = ap.parse_args()
    q = args.quick
    repeats = args.repeats or (1 if q else 3)
    report = [f"# hdf5_io {'--quick ' if q else ''}\n\n{C.machine()} | h5py {h5py.__version__}, HDF5 {h5py.version.hdf5_version}"]
    print(report[0], flush=True)
    t_start = time.perf_counter()
    maps32 = real_features()
    n = len(maps32)
    report.append(f"\nfeatures: {maps32.shape} float32, {maps32.nbytes / 1e6:.0f} MB, {np.mean(maps32 == 0):.1%} exact zeros "
                  f"(pooled: {np.mean(maps32.mean((2, 3)) == 0):.1%})")
    print(report[-1], flush=True)
    variants = {
        ("map", "float16"): maps32.astype(np.float16),
        ("map", "float32"): maps32,
        ("pooled", "float16"): maps32.mean((2, 3)).astype(np.float16),
        ("pooled", "float32"): maps32.mean((2, 3)),
    }
    rng = np.random.default_rng(0)
    idx = np.sort(rng.choice(n, size=max(1, n // 10), replace=False))  # h5py needs increasing indices
    path = C.out_dir() / f"hdf5_io-{os.getpid()}.h5"
    rows_out = []
    best_default = {}
    for (kind, dtype), data in variants.items():
        for chunk_name, rows in chunkings(data.shape[1:], dtype, n).items():
            if q and not chunk_name.startswith("featcache") and kind == "pooled":
                continue
            for fname, filt in FILTERS.items():
                if q and fname == "gzip4+shuffle":
                    continue
                (res, others) = C.measured(bench_one, path, data, rows, filt, idx, repeats, retries=0, max_wait=0 if q else 10)
                rows_out.append([kind, dtype, chunk_name, fname, res["size"], res["ratio"], res["write"], res["read"],
                                 res["fancy_ms"], res["full_ms"], f"{others:.2f}"])
                if chunk_name.startswith("featcache"):
                    best_default[(kind, dtype, fname)] = res
            C.say(f"  {kind} {dtype} {chunk_name} done")
    report.append(C.table(
        ["kind", "dtype", "chunks", "filter", "file MB", "compression x", "write MB/s", "full read MB/s",
         "fold 10%: fancy ms", "fold 10%: full read+numpy ms", "others"], rows_out,
        f"{n} rows of real efficientnet_lite0 features (map 1280x7x7, pooled 1280), median of {repeats}, fletcher32 on"))
    # the default-layout comparison of filters, relative to lzf (featcache's COMPRESSION before this bench)
    rows = []
    for (kind, dtype, fname), res in best_default.items():
        ref = best_default.get((kind, dtype, "lzf+shuffle"))
        rows.append([kind, dtype, fname, res["size"] / ref["size"], res["write"] / ref["write"], res["read"] / ref["read"]])
    report.append(C.table(["kind", "dtype", "filter", "size vs lzf", "write speed vs lzf", "read speed vs lzf"], rows,
                          "Filters at featcache's chunking, relative to lzf+shuffle"))
    C.write_report("hdf5_io", report, q, t_start)


if __name__ == "__main__":
    main()
