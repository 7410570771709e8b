"""A report is a list of blocks, rendered twice so that the two documents cannot disagree: ("h", level, text),
("p", text), ("table", header, rows[, text_columns]) and ("figure", png path, caption). The HTML is one
self-contained file (figures as base64 PNG, inline CSS, no external reference), for mailing or archiving next to
the run directories.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

import matplotlib.pyplot as plt

CSS = ("body{font-family:sans-serif;max-width:72em;margin:2em auto;padding:0 1em;color:#222}"
       "table{border-collapse:collapse;margin:.5em 0 1.5em}th,td{border:1px solid #ccc;padding:.25em .6em}"
       "th{background:#f0f0f0}td.num{text-align:right;font-variant-numeric:tabular-nums}"
       "img{max-width:100%}figcaption{color:#555;font-size:.9em}")


class Bold(str):
    """A table cell to emphasise (the best result)."""


def _align(header: list[str], text_columns: int) -> list[bool]:
    """Right-align (True) the number columns: all but the first and the last ``text_columns - 1``."""
    return [0 < i < len(header) - (text_columns - 1) for i in range(len(header))]


def md_table(header: list[str], rows: list[list[str]], text_columns: int = 1) -> str:
    def cells(row):
        return "| " + " | ".join(f"**{c}**" if isinstance(c, Bold) else str(c).replace("|", "\\|") for c in row) + " |"
    align = ["---:" if right else "---" for right in _align(header, text_columns)]
    return "\n".join([cells(header), "|" + "|".join(align) + "|"] + [cells(r) for r in rows])


def _html_table(header: list[str], rows: list[list[str]], text_columns: int = 1) -> str:
    right = _align(header, text_columns)

    def cell(c, i):
        text = f"<strong>{html.escape(c)}</strong>" if isinstance(c, Bold) else html.escape(str(c))
        return f'<td class="num">{text}</td>' if right[i] else f"<td>{text}</td>"
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(cell(c, i) for i, c in enumerate(r)) + "</tr>\n" for r in rows)
    return f"<table>\n<tr>{head}</tr>\n{body}</table>"


def to_markdown(blocks: list[tuple], out_dir: Path) -> str:
    parts = []
    for kind, *a in blocks:
        if kind == "h":
            parts.append("#" * a[0] + " " + a[1])
        elif kind == "p":
            parts.append(a[0])
        elif kind == "table":
            parts.append(md_table(*a))
        elif kind == "figure":
            parts.append(f"![{a[1]}]({a[0].relative_to(out_dir).as_posix()})")
    return "\n\n".join(parts) + "\n"


def to_html(blocks: list[tuple], title: str) -> str:
    parts = []
    for kind, *a in blocks:
        if kind == "h":
            parts.append(f"<h{a[0]}>{html.escape(a[1])}</h{a[0]}>")
        elif kind == "p":
            parts.append(f"<p>{html.escape(a[0])}</p>")
        elif kind == "table":
            parts.append(_html_table(*a))
        elif kind == "figure":
            data = base64.b64encode(a[0].read_bytes()).decode("ascii")
            parts.append(f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(a[1])}">'
                         f"<figcaption>{html.escape(a[1])}</figcaption></figure>")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{CSS}</style></head>\n<body>\n" + "\n".join(parts) + "\n</body></html>\n")


def save_figure(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
