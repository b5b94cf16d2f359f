"""Errors that reach the user.

Every failure a user can cause or fix is a ``FeatcacheError`` whose text is one line naming the
problem and the fix. The CLI prints it without a traceback; anything else is a bug.
"""

from __future__ import annotations


class FeatcacheError(Exception):
    """A problem the user can act on; ``str(err)`` is the whole message."""

    exit_code = 1


class DataError(FeatcacheError):
    """The image folder is missing, empty or laid out in a way featcache cannot read."""


class ModelError(FeatcacheError):
    """Unknown model, layer, pooling or an input size the model cannot take."""


class WeightsError(FeatcacheError):
    """Weights are missing (offline), unreadable or do not fit the architecture."""


class CacheError(FeatcacheError):
    """A feature set is missing, incomplete, stale, corrupted, locked or cannot be written."""


class DamagedError(CacheError):
    """A feature-set file whose structure, attributes or content hash are wrong. ``reason`` is the
    damage alone, for callers that act on it (re-extract replaces the file) instead of stopping."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


class ImageDecodeError(FeatcacheError):
    """One image cannot be decoded; with ``--on-error fail`` this stops extraction."""


class RunError(FeatcacheError):
    """A run directory is missing, incomplete or has been altered since it was saved."""
