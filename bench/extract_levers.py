"""Extraction levers: which engine settings make featcache fastest on this CPU, one at a time.

Each setting runs ``featcache.extraction.engine.run`` (model build + DataLoader + forward, into a null sink:
no staging, no HDF5) over the same synthetic images in a fresh Python process (so settings read
when torch loads, like OMP_WAIT_POLICY, can be varied too), in interleaved rounds; medians are
reported with the cores other processes used meanwhile ("others"). Levers:

* torch intra-op threads (``torch.set_num_threads``) vs DataLoader ``workers`` (0, 1, 2)
* decoding in a thread of the main process instead of a worker process
* channels_last on/off, batch size per model
* ``OMP_WAIT_POLICY=PASSIVE`` (OpenMP threads sleep instead of spinning at barriers)
* JPEG draft mode on/off (``featcache.extract(draft=...)``, hymenoptera: large photos)
* decode cost per image, and torch.compile (forward-only, in a subprocess with a time limit)

Run from the repository root::

    python bench/extract_levers.py            # full, ~10-12 min on 2 cores
    python bench/extract_levers.py --quick    # ~1.5 min smoke version (efficientnet_lite0 only)
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

import _common as C
import torch
from extract_speed import CORES, MODELS, decode_ms, engine_rate_child, featcache_rate, image_files, weights_of

from featcache import backbones
from featcache.extraction import tuning

PASSIVE = {"OMP_WAIT_POLICY": "PASSIVE"}


def settings(model: str, bs0: int, w0: int, sizes: list[int], quick: bool) -> dict[str, tuple[dict, dict | None]]:
    """name -> (engine kwargs, extra environment). The first is featcache's default."""
    out: dict[str, tuple[dict, dict | None]] = {
        f"default: workers={w0} threads={CORES} batch {bs0} channels_last": (dict(batch_size=bs0, workers=w0), None),
    }
    for w in (0, 1, 2):
        for t in sorted({1, CORES}):
            if (w, t) != (w0, CORES) and not (quick and w == 2):
                out[f"workers={w} threads={t}"] = (dict(batch_size=bs0, workers=w, threads=t), None)
    out["decode in a thread, not a process (threads=2)"] = (dict(kind="thread", batch_size=bs0, decode_threads=1, threads=CORES), None)
    out["channels_last off"] = (dict(batch_size=bs0, workers=w0, channels_last=False), None)
    for bs in sizes:
        if bs != bs0:
            out[f"batch {bs}"] = (dict(batch_size=bs, workers=w0), None)
    out["OMP_WAIT_POLICY=PASSIVE"] = (dict(batch_size=bs0, workers=w0), PASSIVE)
    if CORES > 1:  # data parallel: what running `featcache extract --shard i/2` twice at once would give
        out[f"{CORES} processes x 1 thread, workers=0, 1/{CORES} of the images each"] = (
            dict(batch_size=bs0, workers=0, threads=1, processes=CORES), {"OMP_NUM_THREADS": "1"})
    return out


def section_engine(cfg, data, report) -> None:
    cpu = torch.device("cpu")
    w0 = tuning.workers(cpu)
    for model in (list(MODELS)[:1] if cfg.quick else MODELS):  # quick: the default model only
        bs0 = tuning.batch_size(backbones.resolve(model, weights=weights_of(model)).backbone.arch, cpu)
        configs = settings(model, bs0, w0, cfg.sizes[model], cfg.quick)
        rates: dict[str, list[float]] = {k: [] for k in configs}
        noise: dict[str, list[float]] = {k: [] for k in configs}
        for r in range(cfg.rounds):
            for name, (kw, env) in configs.items():
                best = None
                for _ in range(cfg.retries + 1):  # rerun once if other processes were busy meanwhile
                    C.wait_quiet(max_wait=cfg.max_wait)
                    got = engine_rate_child(data, cfg.images, model, env=env, **kw)
                    if best is None or got[1] < best[1]:
                        best = got
                    if got[1] < 0.25:
                        break
                rates[name].append(best[0])
                noise[name].append(best[1])
            C.say(f"  levers {model} round {r + 1}/{cfg.rounds} done")
        base = C.median(rates[next(iter(configs))])
        rows = [[name, C.median(v), C.median(v) / base, " ".join(f"{x:.1f}" for x in v), " ".join(f"{x:.2f}" for x in noise[name])]
                for name, v in rates.items()]
        report.append(C.table(["setting", "img/s (median)", "vs default", "rounds img/s", "rounds others"], rows,
                              f"Levers, {model}: featcache.extraction.engine.run over {cfg.images} synthetic images, "
                              f"medians of {cfg.rounds} rounds (unset values are the defaults of the first row)"))


def section_decode(cfg, datasets, report) -> None:
    rows = []
    for dname, data in datasets.items():
        files = image_files(data)[: cfg.decode_images]
        for draft in (True, False):
            got = [C.measured(decode_ms, files, "efficientnet_lite0", draft, retries=0, max_wait=cfg.max_wait) for _ in range(cfg.rounds)]
            rows.append([dname, len(files), "on" if draft else "off", C.median([g[0] for g in got]), max(g[1] for g in got)])
    report.append(C.table(["data", "images", "draft", "decode+resize+crop ms/img (1 core)", "others"], rows,
                          "Decode cost: featcache.extraction.decode.Transform in the main process"))


def section_draft(cfg, data, report) -> None:
    rows = []
    n = len(image_files(data))
    for model in MODELS:
        got = {True: [], False: []}
        noise = []
        for _ in range(cfg.rounds):
            for draft in (True, False):
                (rate, _wall), others = C.measured(featcache_rate, data, model, draft=draft, retries=cfg.retries, max_wait=cfg.max_wait)
                got[draft].append(rate)
                noise.append(others)
        rows.append([model, C.median(got[True]), C.median(got[False]), C.median(got[True]) / C.median(got[False]), max(noise)])
    report.append(C.table(["model", "draft on img/s", "draft off img/s", "on/off", "others (max)"], rows,
                          f"JPEG draft mode: featcache.extract on hymenoptera ({n} images), medians of {cfg.rounds}"))


COMPILE_CODE = """
import sys, time, torch
sys.path.insert(0, {repo!r})
from featcache import backbones
model = {model!r}
torch.set_num_threads({threads})
net = backbones.build(backbones.resolve(model, weights='none')).to(memory_format=torch.channels_last)
x = torch.randn({bs}, 3, 224, 224).contiguous(memory_format=torch.channels_last)
def rate(f, s=3.0):
    with torch.inference_mode():
        f(x); k, t0 = 0, time.perf_counter()
        while k < 2 or time.perf_counter() - t0 < s:
            f(x); k += 1
    return x.shape[0] * k / (time.perf_counter() - t0)
eager = rate(net)
t0 = time.perf_counter()
c = torch.compile(net)
with torch.inference_mode():
    c(x)
ct = time.perf_counter() - t0
print(f"RESULT {{eager:.1f}} {{rate(c):.1f}} {{rate(net):.1f}} {{ct:.1f}}", flush=True)
"""


def section_compile(cfg, report) -> None:
    rows = []
    for model, bs in cfg.compile_models:
        code = COMPILE_CODE.format(repo=str(C.REPO), model=model, threads=CORES, bs=bs)
        t0 = time.perf_counter()
        C.wait_quiet(max_wait=cfg.max_wait)
        try:
            with C.Others() as o:
                out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=cfg.compile_timeout)
            line = next((l for l in out.stdout.splitlines() if l.startswith("RESULT")), None)
            if line:
                e1, comp, e2, ct = (float(v) for v in line.split()[1:])
                rows.append([model, bs, (e1 + e2) / 2, comp, comp / ((e1 + e2) / 2), ct, f"{o.cores:.2f}"])
            else:
                err = (out.stderr.strip().splitlines() or ["?"])[-1][:120]
                rows.append([model, bs, "-", f"failed: {err}", "-", "-", f"{o.cores:.2f}"])
        except subprocess.TimeoutExpired:
            rows.append([model, bs, "-", f"no result within {cfg.compile_timeout} s", "-", "-", "-"])
        C.say(f"  torch.compile {model}: {time.perf_counter() - t0:.0f} s")
    report.append(C.table(["model", "batch", "eager img/s", "compiled img/s", "compiled/eager", "first call (compile) s", "others"],
                          rows, "torch.compile (inductor, CPU), forward-only, weights none, channels_last"))


def main() -> None:
    ap = argparse.ArgumentParser(description="featcache extraction levers bench")
    ap.add_argument("--quick", action="store_true", help="~1-2 minute smoke version")
    ap.add_argument("--sections", default="decode,engine,draft,compile")
    args = ap.parse_args()
    q = args.quick
    cfg = argparse.Namespace(
        quick=q,
        images=64 if q else 200,
        rounds=1 if q else 2,
        max_wait=0.0 if q else 15.0,  # waiting for a quiet machine (see _common.measured)
        retries=0 if q else 1,
        sizes={"efficientnet_lite0": [16] if q else [2, 8, 16], "resnet18": [32] if q else [8, 32]},
        decode_images=40 if q else 200,
        compile_models=[("resnet18", 16)] if q else [("resnet18", 16), ("efficientnet_lite0", 4), ("efficientnet_lite0", 16)],
        compile_timeout=90 if q else 200,
    )
    sections = args.sections.split(",")
    torch.set_num_threads(CORES)
    report = [f"# extract_levers {'--quick ' if q else ''}\n\n{C.machine()}"]
    print(report[0], flush=True)
    t_start = time.perf_counter()
    syn = C.synthetic(3000)
    hym = C.hymenoptera() if not q else C.subset(C.hymenoptera(), 100)
    if "decode" in sections:
        section_decode(cfg, {"hymenoptera": hym, "synthetic": syn}, report)
    if "engine" in sections:
        section_engine(cfg, syn, report)
    if "draft" in sections:
        section_draft(cfg, hym, report)
    if "compile" in sections:
        section_compile(cfg, report)
    C.write_report("extract_levers", report, q, t_start)


if __name__ == "__main__":
    main()
