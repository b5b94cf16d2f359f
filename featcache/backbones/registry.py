"""One registry of backbones: every source of them is a ``Family`` registered by name.

A built-in backbone registers under its model name (``efficientnet_lite0``); a library of
architectures registers under the library's name, with the prefix a user writes before an
architecture (``timm:``, ``openclip:``), or as the ``fallback`` that claims plain names it has
(torchvision). A model name resolves in that order: a prefixed library, a built-in, the fallback.
Adding a backbone or a library is one module with one ``@register_backbone`` class.
"""

from __future__ import annotations

import fnmatch
import functools

from classifiers.registry import Registry, unknown_message
from featcache.backbones.family import Family
from featcache.core.errors import ModelError

registry: Registry[type[Family]] = Registry("backbone")
register_backbone = registry.register


@functools.cache
def family(name: str) -> Family:
    """The registered family ``name``, one instance per process (families memoise their catalogues)."""
    return registry.get(name)()


def _kinds() -> tuple[list[Family], list[str], list[Family]]:
    """(prefixed libraries, built-in model names, fallback libraries), each in name order."""
    classes = {name: registry.get(name) for name in registry.names()}
    prefixed = [family(n) for n, c in classes.items() if c.prefix]
    fallback = [family(n) for n, c in classes.items() if not c.prefix and c.fallback]
    builtin = [n for n, c in classes.items() if not c.prefix and not c.fallback]
    return prefixed, builtin, fallback


def family_of(model: str) -> tuple[Family, str]:
    """Which family builds ``model`` and under which architecture name."""
    prefixed, builtin, fallback = _kinds()
    for lib in prefixed:
        if model.startswith(lib.prefix):
            arch = model[len(lib.prefix):]
            if not lib.has(arch):
                raise ModelError(unknown_message(f"{lib.name} model", arch, lib.archs())
                                 + f" (`featcache models '{lib.prefix}*'` lists them)")
            return lib, arch
    if model in builtin:
        return family(model), model
    for lib in fallback:
        if lib.has(model):
            return lib, model
    known = builtin + [a for lib in fallback for a in lib.archs()]
    hint = ", ".join(lib.usage for lib in prefixed if lib.usage)
    raise ModelError(unknown_message("model", model, known) + f" ({hint}; `featcache models` lists all)")


def model_names(pattern: str | None = None) -> list[tuple[Family, str, str]]:
    """(family, arch, user-facing name) of the built-ins and the fallback libraries; a prefixed library's
    for its own globs (``timm:*``, ``openclip:*``)."""
    prefixed, builtin, fallback = _kinds()
    mine = [lib for lib in prefixed if pattern and pattern.startswith(lib.prefix)]
    if mine:
        rows = [(mine[0], a, mine[0].prefix + a) for a in mine[0].archs()]
    else:
        rows = [(family(n), n, n) for n in builtin] + [(lib, a, a) for lib in fallback for a in lib.archs()]
    return [r for r in rows if not pattern or fnmatch.fnmatch(r[2], pattern)]
