"""Thumbnails of input images and the "cards" report block that shows them.

Reports stay self-contained: each image shown is a small JPEG written into the report's own folder
(``thumbs/``), named by a hash of its source path, so the HTML page and its folder can be copied or
opened offline. A card is one finding or one misclassified image: a title, a line of text and one
or more images side by side, with a tone (high, medium, low) that colours its border.
"""

from __future__ import annotations

import hashlib
import html
import os
from dataclasses import dataclass, field
from pathlib import Path

from featcache.core.files import atomic_save
from featcache.core.text import Inline, url
from featcache.extraction.images import BadImage, open_rgb

THUMB_SIDE = 160
CARD_STYLE = (
    ".cards{display:flex;flex-wrap:wrap;gap:10px;margin:1em 0}"
    ".card{border:1px solid #ccc;border-left:5px solid #999;border-radius:4px;padding:6px 8px;background:#fff;max-width:100%;"
    "box-sizing:border-box}"
    ".card.high{border-left-color:#c62828}.card.medium{border-left-color:#ef6c00}.card.low{border-left-color:#9e9e9e}"
    ".card .title{font-weight:600;font-size:13px;margin-bottom:2px}.card .text{font-size:12px;color:#444;margin-bottom:4px}"
    ".card .imgs{display:flex;gap:6px;align-items:flex-start}"
    ".card figure{margin:0;width:164px}.card figure img{display:block;max-width:160px;max-height:160px;border:1px solid #ddd}"
    ".card figcaption{font-size:11px;color:#333;overflow-wrap:anywhere;margin-top:2px}"
    ".card .missing{width:160px;height:60px;display:flex;align-items:center;justify-content:center;background:#f4f4f4;"
    "font-size:11px;color:#777;border:1px dashed #ccc}"
)


@dataclass
class Card:
    title: Inline  # plain text, or featcache's own spans (featcache.text)
    text: Inline
    # (thumbnail path relative to the page, caption: one line of plain text or a list of them)
    images: list[tuple[str | None, str | list[str]]] = field(default_factory=list)
    tone: str = "low"


def thumbnail_name(source: Path) -> str:
    return hashlib.sha1(os.fsencode(str(source))).hexdigest()[:16] + ".jpg"


def thumbnail(source: Path, out_dir: Path, side: int = THUMB_SIDE) -> tuple[str | None, str | None]:
    """Write a JPEG thumbnail of ``source`` into ``out_dir``; (file name, None) or (None, reason)."""
    name = thumbnail_name(source)
    target = out_dir / name
    if target.is_file():
        return name, None
    try:
        img = open_rgb(str(source), min_size=side)
    except BadImage as err:
        return None, str(err)
    img.thumbnail((side, side))
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_save(target, lambda f: img.save(f, "JPEG", quality=85))
    return name, None


class Thumbnails:
    """Thumbnails of files under ``data_root``, written once each into ``page_dir/folder``."""

    def __init__(self, data_root: Path | None, page_dir: Path, folder: str = "thumbs"):
        self.data_root = Path(data_root) if data_root else None
        self.page_dir, self.folder = Path(page_dir), folder
        self.available = self.data_root is not None and self.data_root.is_dir()
        self.failed: dict[str, str] = {}

    def __call__(self, rel_path: str) -> str | None:
        """The thumbnail's path relative to the page, or None (the image is gone or unreadable).
        A thumbnail made earlier is kept, so a report re-rendered after the images moved keeps it."""
        if self.data_root is None:
            return None
        source = self.data_root / rel_path
        name = thumbnail_name(source)
        if (self.page_dir / self.folder / name).is_file():
            return f"{self.folder}/{name}"
        if not self.available:
            return None
        name, reason = thumbnail(source, self.page_dir / self.folder)
        if name is None:
            self.failed[rel_path] = reason or "unreadable"
            return None
        return f"{self.folder}/{name}"


def _lines(caption: str | list[str]) -> list[str]:
    return [caption] if isinstance(caption, str) else list(caption)


def cards_markdown(cards: list[Card], inline) -> str:
    """``inline``: the report's Markdown renderer of inline content (report.md_inline)."""
    out = []
    for card in cards:
        out.append(f"**{inline(card.title)}**: {inline(card.text)}  ")
        out.append(" ".join(f"![{inline(' · '.join(_lines(caption)))}]({url(src)})" if src
                            else f"({inline(' · '.join(_lines(caption)))}: image unavailable)" for src, caption in card.images))
        out.append("")
    return "\n".join(out)


def cards_html(cards: list[Card], inline) -> str:
    """``inline``: the report's HTML renderer of inline content (report.html_inline: user text is escaped)."""
    parts = ['<div class="cards">']
    for card in cards:
        figures = []
        for src, caption in card.images:
            text = "<br>".join(inline(line) for line in _lines(caption))
            alt = inline(" ".join(_lines(caption)))
            if src:
                figures.append(f'<figure><img src="{html.escape(url(src))}" alt="{alt}"><figcaption>{text}</figcaption></figure>')
            else:
                figures.append(f'<figure><div class="missing">image unavailable</div><figcaption>{text}</figcaption></figure>')
        width = 170 * max(1, len(card.images)) + 20  # the images side by side set the card's width; text wraps
        parts.append(f'<div class="card {html.escape(card.tone)}" style="width:{width}px"><div class="title">{inline(card.title)}</div>'
                     f'<div class="text">{inline(card.text)}</div><div class="imgs">{"".join(figures)}</div></div>')
    parts.append("</div>")
    return "".join(parts)
