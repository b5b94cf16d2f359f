"""Markdown and HTML from one list of blocks, so the two formats of a page never disagree.

A page (a run's report, a comparison, a sweep's leaderboard, an audit) is built as blocks (heading,
text, table, image, cards); user text in them is plain text, escaped in both formats, and only the
spans featcache makes (``core.text`` Code/Strong/Link) become markup.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

from featcache.core.files import atomic_write
from featcache.core.text import Code, Inline, Link, Strong, printable, url
from featcache.report.gallery import CARD_STYLE, cards_html, cards_markdown

Block = tuple  # ("h", level, Inline) | ("p", Inline) | ("table", header, rows of Inline) | ("img", path, alt) | ("cards", [gallery.Card])
# Inline (featcache.text): plain text, escaped in both formats, or the Code/Strong/Link spans that only featcache makes.


# ---------------------------------------------------------------------------------------- render
def to_markdown(blocks: list[Block]) -> str:
    out = []
    for block in blocks:
        kind = block[0]
        if kind == "h":
            out.append("#" * block[1] + " " + md_inline(block[2]))
        elif kind == "p":
            out.append(_MD_BLOCK_START.sub(lambda m: m.group(1) + "\\" + m.group(2), md_inline(block[1]), count=1))
        elif kind == "table":
            header, rows = block[1], block[2]
            out.append("| " + " | ".join(md_inline(c, cell=True) for c in header) + " |")
            out.append("|" + "|".join("---" for _ in header) + "|")
            out += ["| " + " | ".join(md_inline(c, cell=True) for c in row) + " |" for row in rows]
        elif kind == "img":
            out.append(f"![{md_inline(block[2])}]({url(block[1])})")
        elif kind == "cards":
            out.append(cards_markdown(block[1], md_inline))
        out.append("")
    return "\n".join(out)


def to_html(blocks: list[Block], title: str) -> str:
    body = []
    for block in blocks:
        kind = block[0]
        if kind == "h":
            body.append(f"<h{block[1]}>{html_inline(block[2])}</h{block[1]}>")
        elif kind == "p":
            body.append(f"<p>{html_inline(block[1])}</p>")
        elif kind == "table":
            numeric = _numeric_columns(block[1], block[2])
            head = "".join(f"<th{' class=num' if numeric[k] else ''}>{html_inline(c)}</th>" for k, c in enumerate(block[1]))
            rows = "".join("<tr>" + "".join(f"<td{' class=num' if numeric[k] else ''}>{html_inline(c)}</td>"
                                            for k, c in enumerate(row)) + "</tr>" for row in block[2])
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif kind == "img":
            body.append(f'<p><img src="{html.escape(url(block[1]))}" alt="{_html_text(plain(block[2]))}"></p>')
        elif kind == "cards":
            body.append(cards_html(block[1], html_inline))
    style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;margin:1em 0;font-size:14px}td,th{border:1px solid #ccc;padding:4px 8px;"
             "text-align:left}th{background:#f4f4f4}td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}"
             "img{max-width:100%}"
             "code{background:#f4f4f4;padding:0 3px}")
    if any(block[0] == "cards" for block in blocks):
        style += CARD_STYLE
    # No script of any kind runs on a report page (a javascript: URL included), should text ever slip through as markup.
    return (f"<!doctype html><html><head><meta charset='utf-8'>"
            f"<meta http-equiv='Content-Security-Policy' content=\"script-src 'none'; object-src 'none'\">"
            f"<title>{html_inline(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n")


_NUMBER = re.compile(r"[-+]?\d[\d.,]*(e[-+]?\d+)?%?(\s*(\+-|±)\s*\d[\d.]*)?( \(\d+ \w+\))?|nan|-")


def _numeric_columns(header: list, rows: list[list]) -> list[bool]:
    """Columns to right-align: every cell a number (or "-"), except the first column (row labels)."""
    return [k > 0 and bool(rows) and all(_NUMBER.fullmatch(plain(row[k]).strip()) for row in rows if k < len(row))
            for k in range(len(header))]


def plain(value: Inline) -> str:
    """The text of inline content without its markup."""
    if isinstance(value, list):
        return "".join(map(plain, value))
    if isinstance(value, Link):
        return value.label
    return value.text if isinstance(value, (Code, Strong)) else str(value)


def html_inline(value: Inline) -> str:
    if isinstance(value, list):
        return "".join(map(html_inline, value))
    if isinstance(value, Code):
        return f"<code>{_html_text(value.text)}</code>"
    if isinstance(value, Strong):
        return f"<strong>{_html_text(value.text)}</strong>"
    if isinstance(value, Link):
        return f'<a href="{html.escape(url(value.href))}">{_html_text(value.label)}</a>'
    return _html_text(value)


def _html_text(text) -> str:
    return html.escape(printable(str(text)))


def md_inline(value: Inline, cell: bool = False) -> str:
    """Markdown source for inline content; ``cell``: inside a table row, where ``|`` ends the cell."""
    if isinstance(value, list):
        return "".join(md_inline(v, cell) for v in value)
    if isinstance(value, Code):
        return _md_code(value.text, cell)
    if isinstance(value, Strong):
        return f"**{md_text(value.text)}**"
    if isinstance(value, Link):
        return f"[{md_text(value.label)}]({url(value.href)})"
    return md_text(value)


_MD_SPECIAL = re.compile(r"[\\`*\[\]<>|~&_#]")  # "#": a heading's text ending in # would lose it
_MD_BLOCK_START = re.compile(r"^(\d{0,9})((?<=\d)[.)]|(?<!\d)[+-])")  # a paragraph starting so would be a heading or a list


def md_text(text) -> str:
    """Plain text as Markdown source that renders as exactly that text: control characters made visible
    (``printable``), then every character that could start markup backslash-escaped (CommonMark allows a
    backslash before any ASCII punctuation). A ``_`` between two letters or digits cannot emphasise and is
    left alone, so ``efficientnet_lite0`` stays readable in the .md file."""
    text = printable(str(text))

    def escape(m: re.Match) -> str:
        at, char = m.start(), m.group()
        if char == "_" and 0 < at < len(text) - 1 and text[at - 1].isalnum() and text[at + 1].isalnum():
            return char
        return "\\" + char

    return _MD_SPECIAL.sub(escape, text)


def _md_code(text: str, cell: bool) -> str:
    """A code span: backslashes are literal in it, so only backticks (a longer fence) and, in a table, pipes
    need care."""
    text = printable(str(text))
    if not text:
        return ""
    if cell:
        text = text.replace("|", "\\|")
    fence = "`" * (max((len(run) for run in re.findall("`+", text)), default=0) + 1)
    # A space inside each end: needed next to a backtick, and one a renderer strips from " x " (CommonMark 6.1)
    pad = " " if text[0] == "`" or text[-1] == "`" or (text[0] == text[-1] == " " and text.strip(" ")) else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def write(directory: Path, stem: str, blocks: list[Block], title: str) -> tuple[Path, Path]:
    md, page = directory / f"{stem}.md", directory / f"{stem}.html"
    atomic_write(md, f"# {md_text(title)}\n\n" + to_markdown(blocks))
    atomic_write(page, to_html([("h", 1, title)] + blocks, title))
    return md, page


def params_text(params: dict) -> str:
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()) or "(defaults)"
