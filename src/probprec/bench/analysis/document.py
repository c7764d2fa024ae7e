"""A small document model rendered twice: Markdown (figures linked) and self-contained HTML (figures embedded).

A report is a list of blocks: headings, paragraphs, bullet lists, tables and
figures. Writing it once and rendering it twice keeps the two files identical
in content.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Document"]

_CSS = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
figure { margin: 1em 0 2em; } figure img { max-width: 100%; } figcaption { font-size: 0.9em; color: #555; }
code { background: #f3f3f3; padding: 0 0.2em; }
"""


@dataclass
class Document:
    """Blocks of a report; :meth:`markdown` and :meth:`html` render them."""

    title: str
    blocks: list[tuple] = field(default_factory=list)

    def heading(self, text: str, level: int = 2) -> None:
        """A section heading (level 2 or deeper; the title is level 1)."""
        self.blocks.append(("heading", level, text))

    def paragraph(self, text: str) -> None:
        """A paragraph of plain text (``code`` in backticks is kept)."""
        self.blocks.append(("paragraph", text))

    def bullets(self, items: list[str]) -> None:
        """A bullet list."""
        if items:
            self.blocks.append(("bullets", list(items)))

    def table(self, header: list[str], rows: Iterable[Iterable[object]]) -> None:
        """A table; every cell is shown as ``str(cell)``."""
        self.blocks.append(("table", list(header), [list(map(str, r)) for r in rows]))

    def figure(self, path: Path, caption: str) -> None:
        """A PNG figure with a caption (linked from Markdown, embedded in HTML)."""
        self.blocks.append(("figure", Path(path), caption))

    def markdown(self, base: Path) -> str:
        """Markdown, figure paths relative to ``base`` (the folder the file is written to)."""
        out = [f"# {self.title}", ""]
        for block in self.blocks:
            kind = block[0]
            if kind == "heading":
                out += ["#" * block[1] + " " + block[2], ""]
            elif kind == "paragraph":
                out += [block[1], ""]
            elif kind == "bullets":
                out += [f"- {item}" for item in block[1]] + [""]
            elif kind == "table":
                header, rows = block[1], block[2]
                out.append("| " + " | ".join(_md_cell(h) for h in header) + " |")
                out.append("|" + "---|" * len(header))
                out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
                out.append("")
            elif kind == "figure":
                path = block[1]
                relative = path.relative_to(base) if path.is_relative_to(base) else path
                out += [f"![{block[2]}]({relative.as_posix()})", "", f"*{block[2]}* "
                        f"([PDF]({relative.with_suffix('.pdf').as_posix()}))", ""]
        return "\n".join(out).rstrip() + "\n"

    def html(self) -> str:
        """One self-contained HTML page: figures embedded as base64 PNG."""
        out = ["<!DOCTYPE html>", "<html lang=\"en\"><head><meta charset=\"utf-8\">",
               f"<title>{html.escape(self.title)}</title><style>{_CSS}</style></head><body>",
               f"<h1>{html.escape(self.title)}</h1>"]
        for block in self.blocks:
            kind = block[0]
            if kind == "heading":
                level = min(block[1], 6)
                out.append(f"<h{level}>{_inline(block[2])}</h{level}>")
            elif kind == "paragraph":
                out.append(f"<p>{_inline(block[1])}</p>")
            elif kind == "bullets":
                out.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in block[1]) + "</ul>")
            elif kind == "table":
                head = "".join(f"<th>{_inline(h)}</th>" for h in block[1])
                body = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>" for row in block[2])
                out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
            elif kind == "figure":
                data = base64.b64encode(block[1].read_bytes()).decode("ascii")
                out.append(f"<figure><img alt=\"{html.escape(block[2])}\" src=\"data:image/png;base64,{data}\">"
                           f"<figcaption>{_inline(block[2])}</figcaption></figure>")
        out.append("</body></html>")
        return "\n".join(out) + "\n"


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _inline(text: str) -> str:
    """Escape HTML; `code` spans become <code>."""
    parts = str(text).split("`")
    return "".join(f"<code>{html.escape(p)}</code>" if i % 2 else html.escape(p) for i, p in enumerate(parts))
