"""Extraction speed: featcache vs the seed's naive loop vs the backbone's forward-only ceiling.

Everything compared is measured side by side in one run, in interleaved rounds, and the median
over rounds is reported. The machine is shared: each measurement first waits (briefly) for other
processes to go quiet, is repeated once if they were busy during it, and is reported with the
number of cores other processes used meanwhile (column "others"). Sections:

* ``forward``   forward-only images/s of each backbone on random tensors, batch sizes 1..64,
                channels_last vs contiguous, all cores' torch threads; the best is the ceiling.
* ``headline``  per model and data set: (a) bench/naive_loop.py, (b) ``featcache.extract`` with
                its defaults (fresh cache_dir, progress_bar=False), (c) forward-only at the best
                setting from ``forward``, measured right before and after (b). Ratios
                featcache/naive (target >= 1.4) and featcache/forward-only (target >= 0.8).
* ``vgg16``     forward-only batch sweep for vgg16 (weights none) to pick its CPU batch size.

The levers (threads vs workers, channels_last, batch size, draft, torch.compile, ...) are in
bench/extract_levers.py, which reuses the helpers here.

Run from the repository root::

    python bench/extract_speed.py            # full, ~11 min on 2 cores (600 synthetic images)
    python bench/extract_speed.py --quick    # ~1-2 min smoke version
    python bench/extract_speed.py --sections forward,vgg16
    python bench/extract_speed.py --models timm:vit_small_patch16_224@none --sections forward,headline   # a ViT
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import _common as C
import torch
from naive_loop import image_files, naive_extract

import featcache
from featcache import backbones
from featcache.config.decode import Decode
from featcache.extraction import engine as E
from featcache.extraction.decode import ImageRows, Transform, collate

MODELS = {"efficientnet_lite0": "DEFAULT", "resnet18": "none"}
QUIET = dict(retries=1, max_wait=15.0)  # see _common.measured
CORES = E.usable_cores()  # the engine's own count, so streams split cores the same way here


# ------------------------------------------------------------------------------------------------
# forward-only
# ------------------------------------------------------------------------------------------------
class Nets:
    """One contiguous and one channels_last copy per model (``Module.to(memory_format)`` is in place)."""

    def __init__(self):
        self._nets: dict[tuple[str, bool], torch.nn.Module] = {}

    def get(self, model: str, channels_last: bool) -> torch.nn.Module:
        key = (model, channels_last)
        if key not in self._nets:
            net = backbones.build(backbones.resolve(model, weights=weights_of(model)))
            if channels_last:
                net = net.to(memory_format=torch.channels_last)
            self._nets[key] = net
        return self._nets[key]


def weights_of(model: str) -> str:
    return MODELS.get(model, "none")


def forward_rate(net: torch.nn.Module, bs: int, channels_last: bool, seconds: float, min_iters: int = 2,
                 streams: int = 1) -> float:
    """Images/s of the backbone alone; ``streams`` threads each run whole batches on CORES/streams torch threads."""
    x = torch.randn(bs, 3, 224, 224)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)

    @torch.inference_mode()
    def loop(t0: float) -> int:
        k = 0
        while k < min_iters or time.perf_counter() - t0 < seconds:
            net(x)
            k += 1
        return k

    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, CORES // streams))
    try:
        with torch.inference_mode():
            net(x)  # warm-up: oneDNN primitive creation, allocator
        t0 = time.perf_counter()
        with ThreadPoolExecutor(streams) as pool:
            done = sum(pool.map(loop, [t0] * streams))
        return bs * done / (time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)


SETTINGS = ((True, 1), (False, 1), (True, 2))  # (channels_last, streams): 2 streams only channels_last, the faster format


def forward_sweep(nets: Nets, model: str, sizes: list[int], rounds: int, seconds: float) -> dict:
    """{(bs, channels_last, streams): median img/s}; configurations interleaved within each round."""
    torch.set_num_threads(CORES)
    got: dict[tuple[int, bool, int], list[float]] = {}
    noise: dict[tuple[int, bool, int], list[float]] = {}
    for r in range(rounds):
        for bs in sizes:
            for cl, streams in SETTINGS:
                rate, others = C.measured(forward_rate, nets.get(model, cl), bs, cl, seconds, streams=streams, **QUIET)
                got.setdefault((bs, cl, streams), []).append(rate)
                noise.setdefault((bs, cl, streams), []).append(others)
        C.say(f"  forward sweep {model} round {r + 1}/{rounds} done")
    return {k: C.median(v) for k, v in got.items()}, {k: max(v) for k, v in noise.items()}


# ------------------------------------------------------------------------------------------------
# featcache's engine into a null sink (levers)
# ------------------------------------------------------------------------------------------------
class NullSink:
    def __init__(self):
        self.rows = 0

    def commit(self, indices, features, bad):
        self.rows += len(indices)


class NoProgress:
    def update(self, n):
        pass


def engine_rate(files: list[str], model: str, batch_size: int, workers: int, threads: int | None = None,
                channels_last: bool | None = None, draft: bool = True) -> float:
    """images/s of ``featcache.extraction.engine.run`` (model build + loop; no staging, no HDF5)."""
    spec = backbones.resolve(model, weights=weights_of(model))
    kw = {} if channels_last is None else {"channels_last": channels_last}
    opts = E.EngineOptions(batch_size=batch_size, workers=workers, device=torch.device("cpu"), precision="fp32", **kw)
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        t0 = time.perf_counter()
        sink = NullSink()
        forward = E.Forward(spec, opts.device, opts.precision, opts.channels_last)
        job = E.Job(spec=spec, files=files, indices=list(range(len(files))), known_bad={}, staging=sink, options=opts,
                    decode=Decode(draft=draft), dtype="float32")
        E.run(job, forward, NoProgress())
        seconds = time.perf_counter() - t0
    finally:
        torch.set_num_threads(before)
    assert sink.rows == len(files), (sink.rows, len(files))
    return len(files) / seconds


def engine_rate_child(data: Path, n: int, model: str, env: dict | None = None, processes: int = 1, **kw) -> tuple[float, float]:
    """``engine_rate`` (or ``thread_decode_rate`` with kind="thread") in fresh Python process(es).

    A fresh process is needed for settings read once when torch loads (OMP_WAIT_POLICY,
    OMP_NUM_THREADS) and keeps every configuration's process state equal. With ``processes`` > 1,
    that many run at once on consecutive slices of the images (what ``--shard i/P`` does), and
    the rate is all images over the span from the first start to the last end of the extraction
    loops (interpreter and torch start-up excluded, as for one process).
    Returns (img/s, cores used by other processes meanwhile).
    """
    import json

    procs = []
    with C.Others() as o:
        for k in range(processes):
            lo, hi = k * n // processes, (k + 1) * n // processes
            spec = json.dumps({"data": str(data), "lo": lo, "hi": hi, "model": model, "kw": kw})
            cmd = [sys.executable, str(Path(__file__).resolve()), "--child", spec]
            procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                          env={**os.environ, **(env or {})}))
        outs = [p.communicate(timeout=900) for p in procs]
    spans = []
    for (stdout, stderr) in outs:
        line = next((l for l in stdout.splitlines() if l.startswith("CHILD ")), None)
        if line is None:
            raise RuntimeError(f"child failed: {stderr.strip()[-500:]}")
        _, start, end = line.split()
        spans.append((float(start), float(end)))
    wall = max(e for _, e in spans) - min(s for s, _ in spans)
    return n / wall, o.cores


def _child(spec: str) -> None:
    import json

    a = json.loads(spec)
    files = image_files(a["data"])[a["lo"]:a["hi"]]
    kw = dict(a["kw"])
    kind = kw.pop("kind", "engine")
    start = time.time()
    if kind == "thread":
        thread_decode_rate(files, a["model"], **kw)
    else:
        engine_rate(files, a["model"], **kw)
    print(f"CHILD {start:.6f} {time.time():.6f}", flush=True)


def thread_decode_rate(files: list[str], model: str, batch_size: int, decode_threads: int, threads: int,
                       channels_last: bool = True, draft: bool = True, prefetch: int = 2) -> float:
    """Like the engine, but decoding in a thread pool of the main process instead of worker processes.

    Pillow releases the GIL while decoding and resizing, so threads overlap with the forward pass.
    """
    spec = backbones.resolve(model, weights=weights_of(model))
    transform = Transform(spec.backbone.preprocess, Decode(draft=draft))
    rows = ImageRows(files, list(range(len(files))), transform)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        t0 = time.perf_counter()
        forward = E.Forward(spec, torch.device("cpu"), "fp32", channels_last)
        batches = [range(s, min(s + batch_size, len(files))) for s in range(0, len(files), batch_size)]
        n = 0
        with ThreadPoolExecutor(decode_threads) as pool:
            def load(b):  # one batch per task, items decoded by the pool's threads in parallel
                return collate(list(pool.map(rows.__getitem__, b))) if decode_threads > 1 else collate([rows[i] for i in b])
            with ThreadPoolExecutor(1) as feeder:
                pending = [feeder.submit(load, b) for b in batches[:prefetch]]
                for k in range(len(batches)):
                    _, batch, _ = pending.pop(0).result()
                    if k + prefetch < len(batches):
                        pending.append(feeder.submit(load, batches[k + prefetch]))
                    n += len(forward(batch))
        seconds = time.perf_counter() - t0
    finally:
        torch.set_num_threads(before)
    assert n == len(files)
    return n / seconds


def decode_ms(files: list[str], model: str, draft: bool) -> float:
    spec = backbones.resolve(model, weights=weights_of(model))
    t = Transform(spec.backbone.preprocess, Decode(draft=draft))
    t0 = time.perf_counter()
    for f in files:
        t(f)
    return (time.perf_counter() - t0) / len(files) * 1000


def featcache_rate(data: Path, model: str, **kw) -> tuple[float, float]:
    """(images/s as featcache reports it, wall seconds of the whole extract() call incl. HDF5)."""
    with C.scratch("cache-") as cache_dir:
        t0 = time.perf_counter()
        res = featcache.extract(data, model=model, weights=weights_of(model), cache_dir=cache_dir, progress_bar=False, **kw)
        wall = time.perf_counter() - t0
    assert not res.cache_hit and res.extracted == res.n_rows + len(res.skipped)
    return res.images_per_second, wall


# ------------------------------------------------------------------------------------------------
# sections
# ------------------------------------------------------------------------------------------------
def section_forward(cfg, nets, report, models=None) -> dict:
    best = {}
    for model in models or tuple(MODELS):
        sweep, noise = forward_sweep(nets, model, cfg.sizes, cfg.sweep_rounds, cfg.sweep_seconds)
        rows = [[bs, sweep[(bs, True, 1)], sweep[(bs, False, 1)], sweep[(bs, True, 1)] / sweep[(bs, False, 1)],
                 sweep[(bs, True, 2)], max(noise[(bs, cl, st)] for cl, st in SETTINGS)] for bs in cfg.sizes]
        report.append(C.table(["batch", "channels_last img/s", "contiguous img/s", "cl/contig",
                               f"channels_last, 2 streams x {max(1, CORES // 2)} thread(s) img/s", "others (max)"], rows,
                              f"Forward-only {model} ({weights_of(model)} weights), {CORES} torch threads unless streamed, "
                              f"median of {cfg.sweep_rounds} round(s)"))
        (bs, cl, streams) = max(sweep, key=sweep.get)
        best[model] = (bs, cl, streams, sweep[(bs, cl, streams)])
        report.append(f"\nbest forward-only {model}: batch {bs}, {'channels_last' if cl else 'contiguous'}, "
                      f"{streams} stream(s): {sweep[(bs, cl, streams)]:.1f} img/s")
        print(report[-1], flush=True)
    return best


def section_headline(cfg, nets, best, datasets, report) -> None:
    summary = []
    for dname, data in datasets.items():
        files = image_files(data)
        keys = ("naive", "featcache", "featcache_wall", "forward", "r_naive", "r_fwd", "others")
        results = {m: {k: [] for k in keys} for m in MODELS}
        for r in range(cfg.rounds):
            for model in MODELS:
                bs, cl, streams, _ = best[model]
                fwd1, o1 = C.measured(forward_rate, nets.get(model, cl), bs, cl, cfg.fwd_seconds, streams=streams, **QUIET)
                (feats, secs), o2 = C.measured(naive_extract, data, model, weights_of(model), files=files, **QUIET)
                naive = len(feats) / secs
                del feats
                (fc, wall), o3 = C.measured(featcache_rate, data, model, **QUIET)
                fwd2, o4 = C.measured(forward_rate, nets.get(model, cl), bs, cl, cfg.fwd_seconds, streams=streams, **QUIET)
                fwd = (fwd1 + fwd2) / 2  # brackets featcache in time
                res = results[model]
                for k, v in (("naive", naive), ("featcache", fc), ("featcache_wall", len(files) / wall), ("forward", fwd),
                             ("r_naive", fc / naive), ("r_fwd", fc / fwd), ("others", max(o1, o2, o3, o4))):
                    res[k].append(v)
                C.say(f"  {dname} {model} round {r + 1}: naive {naive:.1f}, featcache {fc:.1f} img/s, "
                      f"forward-only {fwd:.1f} (others {max(o1, o2, o3, o4):.2f} cores)")
        rows = []
        for model, res in results.items():
            m = {k: C.median(v) for k, v in res.items()}
            rows.append([model, len(files), m["naive"], m["featcache"], m["featcache_wall"], m["forward"],
                         m["r_naive"], m["r_fwd"], " ".join(f"{v:.2f}" for v in res["r_naive"]),
                         " ".join(f"{v:.2f}" for v in res["r_fwd"]), " ".join(f"{v:.2f}" for v in res["others"])])
            summary.append([dname, model, m["r_naive"], "met" if m["r_naive"] >= 1.4 else "NOT met",
                            m["r_fwd"], "met" if m["r_fwd"] >= 0.8 else "NOT met"])
        report.append(C.table(
            ["model", "images", "naive img/s", "featcache img/s", "featcache incl. scan+HDF5 img/s", "forward-only img/s",
             "featcache/naive", "featcache/forward", "rounds /naive", "rounds /forward", "rounds others"],
            rows, f"Headline on {dname}: medians of {cfg.rounds} interleaved rounds"))
    report.append(C.table(["data", "model", "featcache/naive", "target >= 1.4", "featcache/forward-only", "target >= 0.8"],
                          summary, "Targets"))


def section_vgg16(cfg, report) -> None:
    nets = Nets()
    sweep, noise = forward_sweep(nets, "vgg16", cfg.vgg_sizes, 1, cfg.vgg_seconds)
    rows = [[bs, sweep[(bs, True, 1)], sweep[(bs, False, 1)], sweep[(bs, True, 2)], max(noise[(bs, cl, st)] for cl, st in SETTINGS)]
            for bs in cfg.vgg_sizes]
    report.append(C.table(["batch", "channels_last img/s", "contiguous img/s", "channels_last 2 streams img/s", "others (max)"], rows,
                          "Forward-only vgg16 (weights none), one round"))


# ------------------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description="featcache extraction speed bench")
    ap.add_argument("--quick", action="store_true", help="~1-2 minute smoke version")
    ap.add_argument("--sections", default="forward,headline,vgg16")
    ap.add_argument("--synthetic", type=int, help="synthetic images in the headline (default 600, quick 160; RESULTS.md used 1000)")
    ap.add_argument("--rounds", type=int, help="headline rounds (default 3, quick 1)")
    ap.add_argument("--sizes", help="forward-only batch sizes, e.g. 2,8,32 (default 1,2,4,8,16,32,64; quick 4,16,32)")
    ap.add_argument("--sweep-rounds", type=int, help="forward-only sweep rounds (default 2, quick 1)")
    ap.add_argument("--models", help="MODEL[@WEIGHTS],... for forward and headline, each at its default cut "
                                     f"(default {','.join(f'{m}@{w}' for m, w in MODELS.items())})")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return _child(args.child)
    q = args.quick
    cfg = argparse.Namespace(
        sizes=[int(s) for s in args.sizes.split(",")] if args.sizes else [4, 16, 32] if q else [1, 2, 4, 8, 16, 32, 64],
        sweep_rounds=args.sweep_rounds or (1 if q else 2),
        sweep_seconds=0.5 if q else 1.0,
        fwd_seconds=1.0 if q else 2.0,
        rounds=args.rounds or (1 if q else 3),
        synthetic=args.synthetic or (160 if q else 600),
        vgg_sizes=[4, 16] if q else [1, 2, 4, 8, 16],
        vgg_seconds=0.5 if q else 1.5,
    )
    if q:  # a smoke run: no waiting for a quiet machine, no reruns
        QUIET.update(retries=0, max_wait=0.0)
    if args.models:
        chosen = [m.partition("@") for m in args.models.split(",")]
        MODELS.clear()
        MODELS.update({m: w or "DEFAULT" for m, _, w in chosen})
    sections = args.sections.split(",")
    torch.set_num_threads(CORES)
    report = [f"# extract_speed {'--quick ' if q else ''}\n\n{C.machine()}"]
    print(report[0], flush=True)
    t_start = time.perf_counter()
    datasets = {"hymenoptera": C.hymenoptera(), "synthetic": C.subset(C.synthetic(3000), cfg.synthetic)}
    if q:
        datasets["hymenoptera"] = C.subset(datasets["hymenoptera"], 100)
    nets = Nets()
    if "forward" in sections or "headline" in sections:
        best = section_forward(cfg, nets, report)
    if "headline" in sections:
        section_headline(cfg, nets, best, datasets, report)
    if "vgg16" in sections:
        section_vgg16(cfg, report)
    C.write_report("extract_speed", report, q, t_start)


if __name__ == "__main__":
    main()
