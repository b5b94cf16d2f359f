"""featcache: run a frozen pretrained backbone over your images once, then try many heads in seconds.

    import featcache
    result = featcache.extract("data", model="resnet18")       # -> cached HDF5 feature set
    with featcache.open_features(result.id) as fs:              # features, labels, paths, metadata
        X, y = fs.load(), fs.labels
    run = featcache.fit(head="svm", features=result.id)         # grid search, report, saved head

Heavy modules (torch, h5py) load on first use, so importing featcache is cheap, and it changes nothing
in the caller's process: process-wide policy (``OMP_WAIT_POLICY=PASSIVE`` before torch loads, which
keeps 2-thread inference fast when another process holds a core) is set by the ``featcache`` command only.
"""

from __future__ import annotations

import importlib

__all__ = [
    "extract", "open_features", "fit", "predict", "sweep", "list_models", "FeatureSet", "ExtractResult",
    "FeatcacheError",
]

_LAZY = {
    "extract": ("featcache.extraction.extract", "extract"),
    "ExtractResult": ("featcache.extraction.extract", "ExtractResult"),
    "open_features": ("featcache.store.cache", "open_features"),
    "FeatureSet": ("featcache.store.featureset", "FeatureSet"),
    "list_models": ("featcache.backbones.listing", "list_models"),
    "fit": ("featcache.fitting.pipeline", "fit"),
    "predict": ("featcache.fitting.predict", "predict"),
    "sweep": ("featcache.sweeps.sweep", "sweep"),
    "FeatcacheError": ("featcache.core.errors", "FeatcacheError"),
}


def __getattr__(name: str):
    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'featcache' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
