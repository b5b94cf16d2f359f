"""The local batched extraction engine: DataLoader workers decode, one process runs the backbone.

Workers ship uint8 crops; normalisation, the forward pass (``inference_mode``, optional autocast
and channels_last) and the cast to the storage dtype happen per batch in the main process, and
batches are committed to staging in order with at most ``streams`` of them in flight, so memory
stays flat in the number of images and a crash loses at most those batches.

On CPU the backbone runs as several *streams*: threads that each run whole batches with
cores/streams torch threads, instead of one batch at a time across every core. Small batches of
small convolutions do not keep two cores busy inside one operator (barriers, depthwise convs), but
two independent batches do: end to end on 2 cores, 2 streams x 1 thread ran efficientnet_lite0 at
72-75 img/s against 51-53 for 1 x 2, and resnet18 at 45-47 against 41 (bench/RESULTS.md).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from . import backbones
from .backbones.spec import ExtractorSpec
from .errors import CacheError, ImageDecodeError, ModelError
from .images import Decode, ImageRows, Transform, collate, normalize
from .manifest import display

PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}

# The fastest batch size per architecture on CPU, measured forward-only and end to end on a
# 2-core EPYC (bench/extract_speed.py, bench/extract_levers.py; tables in bench/RESULTS.md).
# On CPU larger batches are *slower*: forward-only EfficientNet-Lite0 ran 57-93 img/s at batch
# 2-4 but 44-56 at 16 and 36-43 at 64; resnet18 peaked at 8-16 (~50) and fell to ~40 at 64; vgg16
# is flat (6.4-6.7 img/s at 2-4, 5.8-6.0 at 16). With 2 streams, end to end on 500 JPEGs:
# efficientnet_lite0 batch 2 ran 74-79 img/s against 63-76 at 4 and 59-65 at 8-16 (61-65 at 1);
# resnet18 batch 8 ran 48-50 against 46 at 4 and 16. channels_last was faster for all three at
# every batch > 1 (1.1-2x), so it stays on for every model. On a GPU larger is better.
CPU_BATCH_SIZES = {"tf_efficientnet_lite0": 2, "efficientnet_lite0": 2, "resnet18": 8, "vgg16": 4}
CPU_DEFAULT_BATCH = 8  # no measured model was fastest above 16; 8 is within ~10% of each one's best
CUDA_DEFAULT_BATCH = 128


@dataclass(frozen=True)
class EngineOptions:
    batch_size: int
    workers: int
    device: torch.device
    precision: str  # fp32 | fp16 | bf16
    channels_last: bool = True
    on_error: str = "skip"  # skip | fail
    compile: bool = False
    streams: int = 1  # batches run concurrently, each with cores // streams torch threads (CPU)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ModelError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ModelError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s); use cuda:0..")
    elif dev.type != "cpu":
        raise ModelError(f"unsupported device {device!r}: use auto, cpu, cuda or cuda:N")
    return dev


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision == "auto":
        return "fp16" if device.type == "cuda" else "fp32"
    if precision not in PRECISIONS:
        raise ModelError(f"unknown precision {precision!r}: use auto, fp32, fp16 or bf16")
    return precision


def auto_batch_size(spec: ExtractorSpec, device: torch.device) -> int:
    if device.type == "cuda":
        return CUDA_DEFAULT_BATCH
    return CPU_BATCH_SIZES.get(spec.backbone.arch, CPU_DEFAULT_BATCH)


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, e.g. a container's or taskset's share)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def auto_streams(device: torch.device) -> int:
    """2 on a multi-core CPU (measured on 2 cores); 1 on CUDA, where one large batch fills the device."""
    if device.type == "cuda":
        return 1
    return 2 if usable_cores() >= 2 else 1


def auto_workers(device: torch.device) -> int:
    cores = usable_cores()
    if device.type == "cuda":
        return max(1, min(8, cores - 1))
    return 1 if cores <= 2 else min(4, cores // 2)


class Forward:
    """The backbone on a device, turning uint8 batches into float32 numpy features.

    ``compile_batch``: compile the model with torch.compile for batches of exactly this size (a
    short last batch is padded, so nothing recompiles); if compiling fails, run eagerly.
    """

    def __init__(self, spec: ExtractorSpec, device: torch.device, precision: str, channels_last: bool = True,
                 compile_batch: int | None = None):
        self.spec, self.device, self.precision = spec, device, precision
        self.channels_last = channels_last
        model = backbones.build(spec).to(device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.eager = self.model = model
        self.compile_batch = compile_batch
        if compile_batch:
            self.model = torch.compile(model, dynamic=False)

    @torch.inference_mode()
    def __call__(self, batch: torch.Tensor) -> np.ndarray:
        n = len(batch)
        if self.compile_batch and n < self.compile_batch:
            batch = torch.cat([batch, batch.new_zeros((self.compile_batch - n,) + tuple(batch.shape[1:]))])
        x = batch.to(self.device, non_blocking=True)
        x = normalize(x, self.spec.backbone.preprocess)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        dtype = PRECISIONS[self.precision]
        with torch.autocast(self.device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext():
            y = self._run(x)
        return y[:n].float().contiguous().cpu().numpy()

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        if self.model is self.eager:
            return self.model(x)
        try:
            return self.model(x)
        except Exception as err:  # no C++ compiler, an unsupported op...: eager is always correct
            warnings.warn(f"torch.compile failed ({type(err).__name__}); extracting without it", stacklevel=2)
            self.model = self.eager
            return self.model(x)


def to_storage(features: np.ndarray, dtype: str, where: str) -> np.ndarray:
    out = features.astype(dtype, copy=False)
    if not np.isfinite(out).all():
        hint = "use --dtype float32" if dtype == "float16" and np.isfinite(features).all() else "check the weights"
        raise CacheError(f"non-finite feature values in {where} when stored as {dtype}: {hint}")
    return out


def run(forward: Forward, files: list[str], indices: list[int], known_bad: dict[int, str], staging,
        options: EngineOptions, decode: Decode, dtype: str, progress) -> int:
    """Extract ``indices`` (aligned with absolute ``files``) batch by batch into ``staging``."""
    if not indices:
        return 0
    spec = forward.spec
    dataset = ImageRows(files, indices, Transform(spec.backbone.preprocess, decode), known_bad)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=options.batch_size,
        shuffle=False,
        num_workers=options.workers,
        collate_fn=collate,
        pin_memory=options.device.type == "cuda",
        prefetch_factor=4 if options.workers else None,
        persistent_workers=False,
        generator=torch.Generator(),  # the workers' base seed is not drawn from the caller's generator
    )
    path_of = dict(zip(indices, files))
    pending: deque = deque()  # (indices, future or None, bad), committed in loader order
    done = 0

    def commit_oldest() -> None:
        nonlocal done
        batch_indices, future, bad = pending.popleft()
        features = None
        if future is not None:
            features = to_storage(future.result(), dtype, display(path_of[int(batch_indices[0])]))
        staging.commit(batch_indices.numpy(), features, bad)
        done += len(batch_indices) + len(bad)
        progress.update(len(batch_indices) + len(bad))

    streams = max(1, options.streams)
    threads = torch.get_num_threads()
    if streams > 1:
        torch.set_num_threads(max(1, usable_cores() // streams))
    try:
        with ThreadPoolExecutor(streams, thread_name_prefix="featcache-forward") as pool:
            for batch_indices, batch, bad in loader:
                if bad and options.on_error == "fail":
                    index, reason = bad[0]
                    raise ImageDecodeError(f"cannot use {display(path_of[index])}: {reason} (use --on-error skip to skip bad files)")
                pending.append((batch_indices, pool.submit(forward, batch) if batch is not None else None, bad))
                while len(pending) > streams:
                    commit_oldest()
            while pending:
                commit_oldest()
    finally:
        torch.set_num_threads(threads)
    return done
