"""Progress bars on stderr with rate and ETA; silent under ``--quiet`` or ``progress=False``."""

from __future__ import annotations

import sys

from tqdm.auto import tqdm


def bar(total: int | None, desc: str, enabled: bool = True, unit: str = "img", position: int | None = None):
    return tqdm(
        total=total,
        desc=desc,
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
        tqdm.write(message, file=sys.stderr)
