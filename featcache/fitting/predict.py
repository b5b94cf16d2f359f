"""``predict``: new images -> the run's backbone, layer and preprocessing -> the run's head.

The extractor is rebuilt from the feature set's metadata and must resolve to exactly the key the
features were made with (same weights hash, layer, pooling, preprocessing, decoding); features
pass through the same storage dtype as the training rows, so prediction equals extract + head. A
run on a feature set with augmented views cuts the same views of each new image (the recipe is part
of the key) and averages the head's outputs over them as the run was scored.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from featcache import backbones
from featcache.core import paths, progress
from featcache.core.errors import CacheError, FeatcacheError, RunError
from featcache.core.text import display
from featcache.extraction import engine, jpeg
from featcache.extraction.scan import IMAGE_EXTENSIONS, files_under, problem
from featcache.fitting.evaluation import aggregate
from featcache.fitting.runs import load_run
from featcache.store import cache
from featcache.store.featureset import FeatureSet
from featcache.store.info import FeatureSetInfo


@dataclass
class Prediction:
    path: str
    label: str | None
    confidence: float | None
    error: str | None = None

    def as_dict(self) -> dict:
        return {"path": display(self.path), "label": self.label, "confidence": self.confidence, "error": self.error}


def collect(inputs) -> tuple[list[str], list[tuple[str, str]]]:
    """Image files under ``inputs`` (files or folders, walked by the rules of a scan), and what was
    passed over in those folders (path, why)."""
    files: list[str] = []
    passed_over: list[tuple[str, str]] = []
    for item in inputs:
        item = os.fspath(item)
        if os.path.isdir(item):
            under, left_out = files_under(item)
            found = [f for f in under if Path(f).suffix.lower() in IMAGE_EXTENSIONS]
            passed_over += [(os.path.join(item, rel), why) for rel, why in left_out]
            if not found:
                raise FeatcacheError(f"no images in {display(item)} ({', '.join(sorted(IMAGE_EXTENSIONS)[:4])}, ...)")
            files += found
        elif os.path.lexists(item):
            files.append(item)
        else:
            raise FeatcacheError(f"{display(item)} does not exist: give image files or folders")
    if not files:
        raise FeatcacheError("no images given: featcache predict IMAGE_OR_DIR... --run RUN")
    return files, passed_over


def feature_set_of(run, cache_dir=None) -> FeatureSetInfo:
    """The record of the feature set ``run`` was fitted on, found where the run saw it or in the cache."""
    f = run.params.features
    path = Path(f.path)
    if not path.is_file():
        try:
            path = cache.find(f.id, paths.cache_dir(cache_dir))
        except CacheError:
            raise RunError(
                f"the feature set {f.id} of run {run.name} is missing (was {f.path}): "
                "predict needs it to rebuild the backbone; extract it again or pass --cache-dir"
            ) from None
    # Prediction reads the set's attributes only (its rows are not used), so their recorded identity is
    # checked here; reading every chunk is `featcache cache verify`'s job, and `fit`'s.
    try:
        with FeatureSet(path) as fs:
            info = fs.info
    except CacheError as err:
        raise RunError(f"the feature set {f.id} of run {run.name} is damaged ({err}): re-extract and fit again") from err
    differs = [name for name in ("id", "key", "content_sha256") if getattr(info, name) != getattr(f, name)]
    if differs:
        raise RunError(f"feature set {path.name} is not the one run {run.name} was fitted on ({', '.join(differs)} differ): fit again")
    return info


def predict_features(features, run, cache_dir=None) -> list[Prediction]:
    """Label every row of a cached feature set (an unlabelled folder, say) with a run's head, without
    the backbone: the set must come from exactly the extractor the run was fitted on."""
    run = load_run(run)
    with cache.open_features(features, cache_dir) as fs:
        if fs.info.key != run.params.features.key:
            raise FeatcacheError(
                f"feature set {fs.id} was made by another extractor than run {run.name} ({fs.info.extractor.label} "
                f"vs {run.params.features_label.replace('/', ' ')}): extract it with the run's settings, or predict from the images"
            )
        X, paths, n_views = fs.load(np.float32), fs.paths, fs.n_views
        root = Path(fs.info.data_root or ".")
    if not len(X):
        return []
    # An image's views are consecutive rows: score per image, as the run was scored.
    labels, confidence = aggregate(run.head(), X, n_views, run.params.views_at_test or "mean")
    paths = paths[::n_views]
    names = run.params.class_names
    return [Prediction(str(root / p), names[int(k)], float(c)) for p, k, c in zip(paths, labels, confidence)]


def predict(inputs, run, batch_size: int | str = "auto", device: str = "auto", workers: int | str = "auto",
            cache_dir=None, progress_bar: bool = True) -> list[Prediction]:
    run = load_run(run)
    info = feature_set_of(run, cache_dir)
    made_with = replace(info.config, layer=run.params.features.layer)
    spec, decode, views = backbones.for_config(made_with), made_with.decoding(), made_with.viewing()
    if (spec.key() != info.key["extractor"] or decode.key() != info.key["decode"]
            or views.key() != info.key.get("views")):
        raise RunError(f"the backbone of run {run.name} no longer resolves to the one its features were made with: "
                       "re-extract and fit again with this version")
    dev = engine.resolve_device(device)
    precision = info.precision
    if precision != "fp32" and dev.type != "cuda":
        progress.say(f"note: features were made with {precision} on a GPU; predicting in fp32 on {dev}", progress_bar)
        precision = "fp32"
    # The ``auto`` settings resolved as extraction resolves them (engine.resolve), once.
    settings = engine.resolve(replace(made_with, device=str(dev), precision=precision, batch_size=batch_size, workers=workers),
                              spec)
    files, passed_over = collect(inputs)
    # Checked as extract checks its files: a FIFO is never opened (it would block), a broken link says so.
    known_bad = {i: why for i, f in enumerate(files) if (why := problem(f))}
    head = run.head()
    forward = engine.Forward(spec, dev, precision)
    options = engine.EngineOptions(batch_size=settings.batch_size, workers=settings.workers, device=dev, precision=precision)
    if decode.decoder == "gpu":
        jpeg.check_available(dev)
    # With views each image is cut into the same views as at extraction and the head's outputs are
    # averaged as the run was scored (``views_at_test``).
    loader = engine.batches(files, list(range(len(files))), known_bad, spec.backbone.preprocess, decode, options, views)
    at_test = run.params.views_at_test or "mean"
    names = run.params.class_names
    results: dict[int, Prediction] = {}
    bar = progress.bar(len(files), "predict", progress_bar)
    for index, batch, ready, bad in loader:
        for i, reason in bad:
            results[i] = Prediction(files[i], None, None, reason)
        if batch is not None:
            feats = engine.to_storage(forward(batch, ready), info.dtype, files[int(index[0])]).astype(np.float32)
            labels, confidence = aggregate(head, feats, views.count, at_test)
            for i, label, c in zip(index.tolist(), labels, confidence):
                results[i] = Prediction(files[i], names[int(label)], float(c))
        bar.update(len(index) + len(bad))
    bar.close()
    return [results[i] for i in range(len(files))] + [Prediction(p, None, None, why) for p, why in passed_over]
