"""User text (file, class and label names) and featcache's own markup, kept apart wherever it is shown.

Names come from the file system and from labels files, so they can hold anything: an escape
sequence that clears the screen or retitles the window, a right-to-left override that makes
``gpj.exe`` read as ``exe.jpg``, Markdown link syntax, or a leading ``=`` that a spreadsheet runs.

- Terminal: ``printable`` decides how such characters look: as a visible escape (``\\x1b``,
  ``\\u202e``), the convention ``manifest.display`` already uses for bytes that are not UTF-8
  (``\\xe9``). ``terminal`` applies it to whole messages where featcache prints (cli.py, progress.py).
- Reports: a plain ``str`` is text and never markup; links, code and bold are the spans below, which
  only featcache makes (report.py renders both kinds, escaped for Markdown and for HTML).
- CSV: ``files.to_cell``/``files.from_cell`` (the one CSV writer, and featcache's readers).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from urllib.parse import quote

# C0 controls, DEL and C1 controls (a terminal obeys all three: ESC, CSI = U+009B, OSC = U+009D),
# the bidirectional controls (they reorder what follows them on screen), the line and paragraph
# separators (a new line to some terminals and editors), and lone surrogates (surrogate-escaped
# bytes of a name that is not UTF-8: not encodable, so not printable as they are).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029\ud800-\udfff]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match) -> str:
    char = match.group()
    code = ord(char)
    if char in _NAMED:
        return _NAMED[char]
    if 0xDC80 <= code <= 0xDCFF:  # a byte that os.fsdecode could not decode, shown as display() shows it
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x80 else f"\\u{code:04x}"  # U+0085 is \u0085: \x85 is the byte 0x85


def display(path: str) -> str:
    """A printable form of a relative path, even when the name is not valid UTF-8."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def printable(text: str, keep: str = "") -> str:
    """``text`` with every control character (C0, DEL, C1), bidirectional control, line separator and
    undecodable byte replaced by a visible escape (``\\n``, ``\\x1b``, ``\\u202e``, ``\\xe9``), except the
    characters in ``keep``. The output never holds a character that moves the cursor or changes the
    terminal's state, and a name with such a character never looks like one without it.

    Backslashes are left as they are (a Windows path stays readable), so a name spelled with a literal
    ``\\x1b`` looks like one holding an ESC, as with ``display``'s ``\\xe9``; names without a
    backslash map to distinct strings.
    """
    text = str(text)
    if keep:
        return "".join(_UNSAFE.sub(_escape, part) if part not in keep else part
                       for part in re.split(f"([{re.escape(keep)}])", text))
    return _UNSAFE.sub(_escape, text)


def terminal(message: str) -> str:
    """A whole message for the terminal: its own line breaks and tabs kept, every other control escaped.
    Applied where featcache prints (cli.py, progress.py), so a name that reached a message without
    ``printable`` still cannot reach the terminal raw."""
    return printable(message, keep="\n\t")


def url(path: str) -> str:
    """A relative path as a URL for a page's link or image: its bytes percent-encoded (a ``:`` too, so no
    folder name can read as a scheme such as ``javascript:``)."""
    return quote(os.fsencode(str(path)), safe="/")


# Inline content of a report (report.py renders it as Markdown and as HTML). A ``str`` (or a number) is plain
# text, shown exactly as it is: a class or file name may hold Markdown, HTML or control characters and never
# becomes markup. Markup is one of the spans below, which only featcache makes, or a list of plain text and
# spans in reading order.
@dataclass(frozen=True)
class Code:
    text: str


@dataclass(frozen=True)
class Strong:
    text: str


@dataclass(frozen=True)
class Link:
    """A link to a file featcache wrote (a run's report, audit.csv): the only way a page gets a link.
    ``href`` is a relative path, percent-encoded on output (``url``), so it can never carry a scheme."""

    label: str
    href: str


Inline = str | int | float | Code | Strong | Link | list
