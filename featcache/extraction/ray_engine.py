"""Extraction on Ray: a Ray Data pipeline (connecting to Ray is featcache/core/cluster.py).

The pipeline is: manifest entries -> decode + preprocess on CPU tasks -> an actor pool holding
one backbone replica each (one per GPU, or CPU actors) -> rows streamed back to the driver, which
commits them to the same staging directory as the local engine. The feature set therefore gets
the same id, metadata, row order, resume and cache semantics whichever engine made it.
"""

from __future__ import annotations

import contextlib
import logging
import warnings

import numpy as np
import torch

from featcache.core.cluster import session
from featcache.extraction.decode import Transform, crop_or_reason
from featcache.extraction.engine import Forward, to_storage


@contextlib.contextmanager
def _data_options(ray):
    """featcache's Ray Data settings for one pipeline; the caller's DataContext is restored afterwards."""
    ctx = ray.data.DataContext.get_current()
    saved = (ctx.execution_options.preserve_order, ctx.enable_progress_bars, ctx.print_on_execution_start)
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = False  # featcache draws its own bar
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # restored by session()
    try:
        yield
    finally:
        ctx.execution_options.preserve_order, ctx.enable_progress_bars, ctx.print_on_execution_start = saved


def _decode(batch: dict, preprocess, decode, views=None) -> dict:
    """Ray Data task: paths -> uint8 crops, (n, views, 3, H, W) with views (failures become empty
    crops with a reason)."""
    transform, (height, width) = Transform(preprocess, decode, views), preprocess.crop_hw
    n = len(batch["index"])
    per_image = (transform.views.count,) if transform.views.count > 1 else ()
    pixels = np.zeros((n,) + per_image + (3, height, width), dtype=np.uint8)
    reasons = np.array([batch["reason"][i] for i in range(n)], dtype=object)
    for i in range(n):
        if reasons[i]:
            continue
        crop, reason = crop_or_reason(transform, batch["path"][i])
        if crop is None:
            reasons[i] = reason
        else:
            pixels[i] = crop.numpy()
    return {"index": batch["index"], "pixels": pixels, "reason": reasons}


class _Backbone:
    """Ray Data actor: one backbone replica; uint8 crops -> stored-dtype features."""

    def __init__(self, spec, device: str, precision: str, channels_last: bool, dtype: str):

        if device == "cuda" and not torch.cuda.is_available():
            device = "cpu"
        self.forward = Forward(spec, torch.device(device), precision, channels_last)
        self.dtype = dtype

    def __call__(self, batch: dict) -> dict:

        ok = np.array([not r for r in batch["reason"]], dtype=bool)
        pixels = batch["pixels"]
        per_image = pixels.shape[1:-3]  # (views,) or ()
        features = None
        if ok.any():
            crops = torch.from_numpy(np.ascontiguousarray(pixels[ok].reshape((-1,) + pixels.shape[-3:])))
            features = to_storage(self.forward(crops), self.dtype, "ray batch")
            features = features.reshape((int(ok.sum()),) + per_image + features.shape[1:])
        shape = per_image + tuple(self.forward.spec.feature_shape)
        out = np.zeros((len(ok),) + tuple(shape), dtype=self.dtype)
        if features is not None:
            out[ok] = features
        return {"index": batch["index"], "features": out, "reason": batch["reason"]}


def run(job, progress, address=None) -> int:
    """Extract ``job`` (an ``engine.Job``) on Ray; rows come back to this process in order."""
    if not job.indices:
        return 0
    with session(address) as ray, _data_options(ray):
        return _run(ray, job, progress)


def _run(ray, job, progress) -> int:
    spec, options = job.spec, job.options
    gpus = int(ray.cluster_resources().get("GPU", 0)) if options.device.type == "cuda" else 0
    cpus = int(ray.cluster_resources().get("CPU", 1))
    actors = gpus or max(1, min(4, cpus // 2))
    items = [{"index": int(i), "path": f, "reason": job.known_bad.get(int(i), "")} for i, f in zip(job.indices, job.files)]
    ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items) // max(options.batch_size, 1), 200)))
    views = job.views.count if job.views is not None else 1
    ds = ds.map_batches(_decode, fn_kwargs={"preprocess": spec.backbone.preprocess, "decode": job.decode, "views": job.views},
                        batch_size=max(1, options.batch_size // views), num_cpus=1)
    with warnings.catch_warnings():  # Ray deprecates passing max_restarts this way but has no other yet
        warnings.simplefilter("ignore")
        ds = ds.map_batches(
            _Backbone, fn_constructor_args=(spec, "cuda" if gpus else "cpu", options.precision, options.channels_last, job.dtype),
            batch_size=max(1, options.batch_size // views), concurrency=actors, num_gpus=1 if gpus else 0, num_cpus=0 if gpus else 1,
            max_restarts=0,  # a failed replica fails the run (resumable) rather than restarting silently
        )
    done = 0
    for batch in ds.iter_batches(batch_size=max(1, options.batch_size // views), batch_format="numpy", prefetch_batches=2):
        reasons = batch["reason"]
        ok = np.array([not r for r in reasons], dtype=bool)
        bad = [(int(i), str(r)) for i, r in zip(batch["index"][~ok], reasons[~ok])]
        job.refuse(bad)
        features = batch["features"][ok] if ok.any() else None
        if features is not None and views > 1:  # an image's views: consecutive rows
            features = features.reshape((-1,) + features.shape[2:])
        job.staging.commit(batch["index"][ok].astype(np.int64), features, bad)
        done += len(ok)
        progress.update(len(ok))
    return done
