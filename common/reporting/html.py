"""Self-contained HTML building blocks: page shell with inline CSS, sections, tables, inline SVG figures, badges.

Every block returns a `Markup` string; plain `str` passed in is escaped. The
page references nothing outside itself (no network, no external CSS, JS or
fonts), so a report can be opened offline and archived as one file.
"""

from __future__ import annotations

import html
import io
import re
from pathlib import Path
from typing import Any, Iterable, Sequence

from semiofed.common.files import write_bytes_atomic

STATUS_OK = "ok"
STATUS_WARN = "warn"
STATUS_FAIL = "fail"
STATUS_INFO = "info"
STATUSES = (STATUS_OK, STATUS_WARN, STATUS_FAIL, STATUS_INFO)

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2rem auto; max-width: 72rem;
       padding: 0 1rem; color: #1b1f24; line-height: 1.45; }
h1 { font-size: 1.6rem; margin-bottom: 0.2rem; } h2 { font-size: 1.3rem; margin-top: 2rem; border-bottom: 1px solid #d0d7de; }
h3 { font-size: 1.1rem; margin-top: 1.4rem; }
.subtitle { color: #57606a; margin-top: 0; }
table { border-collapse: collapse; margin: 0.6rem 0 1rem; font-size: 0.9rem; }
th, td { border: 1px solid #d0d7de; padding: 0.25rem 0.55rem; text-align: left; vertical-align: top; }
th { background: #f6f8fa; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
caption { caption-side: top; text-align: left; font-weight: 600; padding-bottom: 0.3rem; }
figure { margin: 0.8rem 0 1.2rem; } figure svg { max-width: 100%; height: auto; }
figcaption { color: #57606a; font-size: 0.9rem; }
.badge { display: inline-block; padding: 0.05rem 0.5rem; border-radius: 0.8rem; font-size: 0.85rem; font-weight: 600; }
.badge.ok { background: #dafbe1; color: #116329; } .badge.warn { background: #fff8c5; color: #7d4e00; }
.badge.fail { background: #ffebe9; color: #a40e26; } .badge.info { background: #ddf4ff; color: #0a3069; }
code { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 0.85em; }
"""


class Markup(str):
    """HTML that is already safe: inserted as is, never escaped again."""


def escape(value: Any) -> Markup:
    """`value` as HTML text (Markup passes through unchanged)."""
    return value if isinstance(value, Markup) else Markup(html.escape("" if value is None else str(value)))


def page(title: str, *body: str, subtitle: str | None = None) -> Markup:
    """A complete HTML5 document with the inline stylesheet, a title heading and the given blocks."""
    head = f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{escape(title)}</title>\n' \
           f"<style>{_CSS}</style>\n</head>\n<body>\n<h1>{escape(title)}</h1>\n"
    sub = f'<p class="subtitle">{escape(subtitle)}</p>\n' if subtitle else ""
    return Markup(head + sub + "\n".join(escape(b) for b in body) + "\n</body>\n</html>\n")


def heading(text: str, level: int = 2) -> Markup:
    """A heading <h2>..<h4>."""
    level = min(max(level, 2), 4)
    return Markup(f"<h{level}>{escape(text)}</h{level}>")


def paragraph(text: str) -> Markup:
    """A paragraph of text."""
    return Markup(f"<p>{escape(text)}</p>")


def code(text: str) -> Markup:
    """Inline monospace text (hashes, paths, fingerprints)."""
    return Markup(f"<code>{escape(text)}</code>")


def section(title: str, *body: str, level: int = 2) -> Markup:
    """A <section> with a heading and the given blocks."""
    return Markup(f"<section>\n{heading(title, level)}\n" + "\n".join(escape(b) for b in body) + "\n</section>")


def bullet_list(items: Iterable[Any]) -> Markup:
    """An unordered list."""
    return Markup("<ul>" + "".join(f"<li>{escape(item)}</li>" for item in items) + "</ul>")


def badge(text: str, status: str) -> Markup:
    """A coloured status pill; status is one of ok, warn, fail, info."""
    if status not in STATUSES:
        raise ValueError(f"badge status '{status}' is not one of {', '.join(STATUSES)}")
    return Markup(f'<span class="badge {status}">{escape(text)}</span>')


def _cell(value: Any) -> str:
    if isinstance(value, bool) or isinstance(value, Markup) or not isinstance(value, (int, float)):
        return f"<td>{escape(value)}</td>"
    return f'<td class="num">{escape(f"{value:.4g}" if isinstance(value, float) else value)}</td>'


def table(header: Sequence[str] | None, rows: Iterable[Sequence[Any]], *, caption: str | None = None) -> Markup:
    """A table (no header row when `header` is None); numbers right-aligned, floats to 4 significant digits, None empty."""
    parts = ["<table>"]
    if caption:
        parts.append(f"<caption>{escape(caption)}</caption>")
    if header is not None:
        parts.append("<thead><tr>" + "".join(f"<th>{escape(h)}</th>" for h in header) + "</tr></thead>")
    parts.append("<tbody>")
    parts += ["<tr>" + "".join(_cell(value) for value in row) + "</tr>" for row in rows]
    parts.append("</tbody></table>")
    return Markup("\n".join(parts))


# The parts of matplotlib's SVG that point outside the page (DTD, RDF metadata, namespace URLs).
# Inside HTML5 an <svg> needs none of them: the parser puts it in the SVG namespace.
_SVG_EXTERNAL = [
    re.compile(r"<\?xml[^>]*\?>\s*"),
    re.compile(r"<!DOCTYPE[^>]*>\s*"),
    re.compile(r"<metadata>.*?</metadata>\s*", re.S),
    re.compile(r'\s+xmlns(:\w+)?="[^"]*"'),
]


def svg_of(figure: Any) -> Markup:
    """A matplotlib Figure as inline <svg> markup with text kept as text and no external references."""
    import matplotlib

    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        figure.savefig(buffer, format="svg", bbox_inches="tight")
    svg = buffer.getvalue()
    for pattern in _SVG_EXTERNAL:
        svg = pattern.sub("", svg)
    return Markup(svg.strip())


def figure(fig: Any, *, caption: str | None = None) -> Markup:
    """A <figure> holding a matplotlib Figure as inline SVG, with an optional caption."""
    cap = f"<figcaption>{escape(caption)}</figcaption>" if caption else ""
    return Markup(f"<figure>\n{svg_of(fig)}\n{cap}</figure>")


def write_html(path: Path, document: str) -> None:
    """Write an HTML document atomically (readable by others: a report is meant to be shared)."""
    write_bytes_atomic(Path(path), document.encode("utf-8"), mode=0o644)
