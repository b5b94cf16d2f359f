"""Progress bars on stderr with rate and ETA; silent under ``--quiet`` or ``progress=False``. What they
show goes through ``text.terminal``, as everything cli.py prints does: a name can hold escape sequences."""

from __future__ import annotations

import sys

from tqdm.auto import tqdm

from featcache.core.text import terminal


def bar(total: int | None, desc: str, enabled: bool = True, unit: str = "img", position: int | None = None):
    return tqdm(
        total=total,
        desc=terminal(desc),
        unit=unit,
        file=sys.stderr,
        disable=not enabled,
        dynamic_ncols=True,
        smoothing=0.1,
        mininterval=0.5,
        position=position,
        leave=position in (None, 0),
    )


def say(message: str, enabled: bool = True) -> None:
    """A status line on stderr (stdout is kept for results)."""
    if enabled:
        tqdm.write(terminal(message), file=sys.stderr)
