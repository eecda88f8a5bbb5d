"""A tiny document model rendered to both Markdown and self-contained HTML, so the two never disagree."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]


@dataclass
class Image:
    path: Path  # PNG beside the report
    caption: str


@dataclass
class Document:
    title: str
    blocks: list[tuple[str, object]] = field(default_factory=list)

    def heading(self, text: str) -> None:
        self.blocks.append(("heading", text))

    def paragraph(self, text: str) -> None:
        self.blocks.append(("paragraph", text))

    def table(self, header: list[str], rows: list[list[str]]) -> None:
        self.blocks.append(("table", Table(header, rows)))

    def image(self, path: Path, caption: str) -> None:
        self.blocks.append(("image", Image(path, caption)))

    def code(self, text: str) -> None:
        self.blocks.append(("code", text))

    def to_markdown(self) -> str:
        out = [f"# {self.title}", ""]
        for kind, value in self.blocks:
            if kind == "heading":
                out += [f"## {value}", ""]
            elif kind == "paragraph":
                out += [str(value), ""]
            elif kind == "table":
                out += ["| " + " | ".join(value.header) + " |", "|" + "---|" * len(value.header)]
                out += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in value.rows]
                out.append("")
            elif kind == "image":
                out += [f"![{value.caption}]({value.path.name})", ""]
            elif kind == "code":
                out += ["```", str(value).rstrip(), "```", ""]
        return "\n".join(out)

    def to_html(self) -> str:
        """One file: images are embedded as base64 PNGs so the report can be mailed or archived alone."""
        body = [f"<h1>{html.escape(self.title)}</h1>"]
        for kind, value in self.blocks:
            if kind == "heading":
                body.append(f"<h2>{html.escape(str(value))}</h2>")
            elif kind == "paragraph":
                body.append(f"<p>{html.escape(str(value))}</p>")
            elif kind == "table":
                head = "".join(f"<th>{html.escape(h)}</th>" for h in value.header)
                rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in value.rows)
                body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
            elif kind == "image":
                data = base64.b64encode(value.path.read_bytes()).decode()
                body.append(f'<figure><img alt="{html.escape(value.caption)}" src="data:image/png;base64,{data}">'
                            f"<figcaption>{html.escape(value.caption)}</figcaption></figure>")
            elif kind == "code":
                body.append(f"<pre>{html.escape(str(value))}</pre>")
        return (
            "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(self.title)}</title><style>{_STYLE}</style></head><body>"
            + "\n".join(body) + "</body></html>\n"
        )


_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
    "table{border-collapse:collapse;margin:1em 0;font-size:14px}th,td{border:1px solid #ccc;padding:4px 8px;text-align:left}"
    "th{background:#f3f3f3}img{max-width:100%}pre{background:#f6f6f6;padding:1em;overflow:auto;font-size:12px}"
    "figcaption{color:#666;font-size:13px}"
)
