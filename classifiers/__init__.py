"""Interchangeable classifier heads: scikit-learn estimators over plain numpy arrays.

>>> from classifiers import get_head, list_heads
>>> list_heads()
['gap', 'logreg', 'mlp', 'ridge', 'svm']
>>> head = get_head("svm")(C=10).fit(X, y)          # doctest: +SKIP

X is (n, d) vectors or (n, C, H, W) feature maps. Heads know nothing of featcache. The names below
load on first use, so ``import classifiers.registry`` (which featcache's backbones use) does not
pay for scikit-learn.
"""

from __future__ import annotations

__all__ = ["Head", "ParamError", "Rule", "heads", "get_head", "list_heads", "save_head", "load_head", "scores"]


def __getattr__(name: str):
    if name in __all__:
        from classifiers import api

        return getattr(api, name)
    raise AttributeError(f"module 'classifiers' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
