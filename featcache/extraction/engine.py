"""The local batched extraction engine: DataLoader workers decode, one process runs the backbone.

(With ``--decode gpu`` the workers only read the files and the main process decodes each batch's
JPEGs on the device: featcache/jpeg.py.)

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
import threading
import warnings
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from featcache import backbones
from featcache.backbones.spec import ExtractorSpec
from featcache.config.choices import AUTO
from featcache.config.decode import Decode
from featcache.config.extract import ExtractConfig
from featcache.config.views import Views
from featcache.core.errors import CacheError, ImageDecodeError, ModelError
from featcache.core.machine import usable_cores
from featcache.core.text import display
from featcache.extraction import jpeg, tuning
from featcache.extraction.decode import ImageRows, Transform, collate, normalize

PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}
WRITE_AHEAD = 2  # batches waiting for the writer thread before the loop waits for it (memory stays flat)


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


@dataclass
class Job:
    """One extraction's work, the same for the local and the Ray engine: which manifest entries,
    read from which files, decoded how, stored as what, committed into which staging directory."""

    spec: ExtractorSpec
    files: list[str]  # absolute paths, aligned with ``indices``
    indices: list[int]  # manifest entries to extract
    known_bad: dict[int, str]  # entries known unusable before decoding (could not be stat'ed)
    staging: object  # a ``Staging``: commit(indices, features, skipped)
    options: EngineOptions
    decode: Decode
    dtype: str  # storage dtype
    views: object = None  # a ``views.Views`` recipe: that many rows per image (None: one)

    def path_of(self, index: int) -> str:
        return self.files[self.indices.index(index)]

    def refuse(self, bad: list[tuple[int, str]]) -> None:
        """With ``--on-error fail``, stop at the first file that could not be used."""
        if bad and self.options.on_error == "fail":
            index, reason = bad[0]
            raise ImageDecodeError(f"cannot use {display(self.path_of(index))}: {reason} (use --on-error skip to skip bad files)")


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


class Forward:
    """The backbone on a device, turning uint8 batches into float numpy features.

    ``compile_batch``: compile the model with torch.compile for batches of exactly this size (a
    short last batch is padded, so nothing recompiles); if compiling fails, run eagerly.

    On CUDA each calling thread runs on its own CUDA stream (so one batch's copies overlap another's
    compute, and a batch decoded on the device by the main thread overlaps the forward pass; ``ready``
    is the event that batch is complete at) and features come back through pinned memory in the
    dtype the network produced (float16 under fp16 autocast: half the bytes; float32 otherwise).
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
        self.compile_error: str | None = None  # why compiling failed, once it has
        if compile_batch:
            self.model = torch.compile(model, dynamic=False)
        self._local = threading.local()

    @property
    def is_compiled(self) -> bool:
        """Whether batches run through the compiled module: False without compilation, and once a
        failed compilation has fallen back to eager."""
        return self.model is not self.eager

    @torch.inference_mode()
    def __call__(self, batch: torch.Tensor, ready: torch.cuda.Event | None = None) -> np.ndarray:
        stream = self._stream()
        if stream is not None and ready is None and batch.is_cuda:  # made on this thread's stream: wait for it
            ready = torch.cuda.current_stream(self.device).record_event()
        with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
            if ready is not None and stream is not None:
                stream.wait_event(ready)
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
            y = y[:n]
            if y.dtype not in (torch.float16, torch.float32):  # bfloat16 has no NumPy dtype
                y = y.float()
            y = y.contiguous()
            if stream is None:
                return y.cpu().numpy()
            host = torch.empty(y.shape, dtype=y.dtype, pin_memory=True)
            host.copy_(y, non_blocking=True)
            stream.synchronize()
            return host.numpy()

    def _stream(self):
        if self.device.type != "cuda":
            return None
        stream = getattr(self._local, "stream", None)
        if stream is None:
            stream = self._local.stream = torch.cuda.Stream(device=self.device)
        return stream

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        if self.model is self.eager:
            return self.model(x)
        try:
            return self.model(x)
        except Exception as err:  # no C++ compiler, an unsupported op...: eager is always correct
            warnings.warn(f"torch.compile failed ({type(err).__name__}); extracting without it", stacklevel=2)
            self.compile_error = f"{type(err).__name__}: {str(err).strip().splitlines()[0][:200] if str(err).strip() else ''}"
            self.model = self.eager
            return self.model(x)


def to_storage(features: np.ndarray, dtype: str, where: str) -> np.ndarray:
    out = features.astype(dtype, copy=False)
    if not np.isfinite(out).all():
        hint = "use --dtype float32" if dtype == "float16" and np.isfinite(features).all() else "check the weights"
        raise CacheError(f"non-finite feature values in {where} when stored as {dtype}: {hint}")
    return out


def batches(files: list[str], indices: list[int], known_bad: dict[int, str], preprocess, decode: Decode,
            options: EngineOptions, views=None):
    """(entry indices, uint8 batch or None, ready event or None, bad rows) in manifest order.

    With ``decode.decoder == "cpu"`` the batch is the workers' stacked crops (pinned on CUDA); with
    "gpu" it is already on the device, decoded there by the main process, and ``ready`` (CUDA) is
    the event the forward stream waits for. With ``views`` (a ``views.Views`` recipe) each image is
    its views' consecutive rows, and a batch holds ``batch_size // views`` images (at least one), so
    a forward pass still sees about ``batch_size`` crops.
    """
    views = Views.parse(views)
    decoder = None
    if decode.decoder == "gpu":  # no views: ExtractConfig refuses --decode gpu with --views
        dataset = jpeg.JpegRows(files, indices, preprocess, known_bad)
        collate_fn = jpeg.collate
        decoder = jpeg.DeviceDecoder(preprocess, options.device)
    else:
        dataset = ImageRows(files, indices, Transform(preprocess, decode, views), known_bad)
        collate_fn = collate
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=max(1, options.batch_size // views.count),
        shuffle=False,
        num_workers=options.workers,
        collate_fn=collate_fn,
        pin_memory=options.device.type == "cuda",
        prefetch_factor=4 if options.workers else None,
        persistent_workers=False,
        generator=torch.Generator(),  # the workers' base seed is not drawn from the caller's generator
    )
    for batch_indices, batch, bad in loader:
        ready = None
        if decoder is not None and batch is not None:
            batch_indices, batch, more = decoder(batch_indices, batch)
            bad = sorted(bad + more)
            if batch is not None and batch.is_cuda:
                ready = torch.cuda.Event()
                ready.record()
        yield batch_indices, batch, ready, bad


def run(job: Job, forward: Forward, progress) -> int:
    """Extract ``job.indices`` batch by batch into ``job.staging``, in order."""
    if not job.indices:
        return 0
    options = job.options
    loader = batches(job.files, job.indices, job.known_bad, job.spec.backbone.preprocess, job.decode, options, job.views)
    path_of = dict(zip(job.indices, job.files))
    pending: deque = deque()  # (indices, forward future or None, bad): batches on the device, in loader order
    writes: deque = deque()  # commit futures, in order

    def commit(batch_indices, future, bad) -> int:
        features = None
        if future is not None:
            features = to_storage(future.result(), job.dtype, display(path_of[int(batch_indices[0])]))
        job.staging.commit(batch_indices.numpy(), features, bad)
        progress.update(len(batch_indices) + len(bad))
        return len(batch_indices) + len(bad)

    done = 0
    streams = max(1, options.streams)
    threads = torch.get_num_threads()
    if streams > 1:
        torch.set_num_threads(max(1, usable_cores() // streams))
    # One writer thread commits batches in order, so the main thread goes on decoding and feeding the
    # device while a batch is copied back and saved (on the GPU the main thread is the bottleneck).
    try:
        with ThreadPoolExecutor(streams, thread_name_prefix="featcache-forward") as pool, \
                ThreadPoolExecutor(1, thread_name_prefix="featcache-commit") as writer:
            for batch_indices, batch, ready, bad in loader:
                job.refuse(bad)
                pending.append((batch_indices, pool.submit(forward, batch, ready) if batch is not None else None, bad))
                while len(pending) > streams:
                    writes.append(writer.submit(commit, *pending.popleft()))
                while len(writes) > WRITE_AHEAD:
                    done += writes.popleft().result()
            while pending:
                writes.append(writer.submit(commit, *pending.popleft()))
            while writes:
                done += writes.popleft().result()
    finally:
        torch.set_num_threads(threads)
    return done


@dataclass(frozen=True)
class Resolved:
    """``auto`` values settled for this machine and this extractor: what the engine runs with."""

    device: torch.device
    precision: str  # fp32 | fp16 | bf16
    batch_size: int
    workers: int
    streams: int
    compile: bool

    def run_settings(self) -> dict:
        """What a resume keeps as recorded (they move the last bits of the features, not the values)."""
        return {"batch_size": self.batch_size, "compile": self.compile, "streams": self.streams}


def resolve(cfg: ExtractConfig, spec: ExtractorSpec) -> Resolved:
    """``cfg``'s ``auto`` values settled for this machine and ``spec``'s architecture, once."""
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    batch = cfg.batch_size if cfg.batch_size != AUTO else tuning.batch_size(spec.backbone.arch, device)
    workers = cfg.workers if cfg.workers != AUTO else tuning.workers(device)
    # A compiled module runs from one thread only (Dynamo is not meant for concurrent calls).
    streams = 1 if cfg.compile else cfg.streams if cfg.streams != AUTO else tuning.streams(device)
    return Resolved(device=device, precision=precision, batch_size=int(batch), workers=int(workers),
                    streams=int(streams), compile=cfg.compile)
