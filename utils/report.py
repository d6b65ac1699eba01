"""Self-contained HTML pages: headings, tables (sortable), images, thumbnail grids, text.

One file that opens from disk in any browser: no server, no network, no script
libraries. Images are embedded as base64 data URIs (or linked beside the page
with embed=False); a sortable table sorts on a header click with the few lines
of inline JavaScript below. Every text is HTML-escaped; `raw` is the only way
to put markup in.

    page = Page("run demo")
    page.heading("Metrics")
    page.table(["metric", "value"], [["accuracy", 0.91]], id="metrics")
    page.image("curves.png", alt="training curves")
    page.write("log/demo/report.html")

Used by detect.py's evaluation page (utils/detect/report.py) and train.py's
log/NAME/report.html (curves + resolved config: `mapping`).
"""
from __future__ import annotations

import base64
import html
import json
import os

from utils.files import atomic_write_text

MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
        ".webp": "image/webp", ".svg": "image/svg+xml"}

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; max-width: 1400px; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 28px; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 8px 0; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; }
th:first-child, td:first-child, td.t { text-align: left; }
th { background: #f3f3f3; }
table.sortable th { cursor: pointer; user-select: none; }
th[aria-sort=ascending]::after { content: " \\25B2"; } th[aria-sort=descending]::after { content: " \\25BC"; }
caption { text-align: left; color: #666; padding: 2px 0; }
img.figure { max-width: 100%; border: 1px solid #eee; }
.grid { display: flex; flex-wrap: wrap; gap: 10px; }
.tile { width: 150px; font-size: 12px; } .tile img { width: 150px; image-rendering: pixelated; }
.group { border: 1px solid #ddd; padding: 6px; margin: 6px 0; } .group .tile { width: 110px; }
.group .tile img { width: 110px; } .bad { color: #b00; } .good { color: #070; }
pre { background: #f7f7f7; padding: 8px; overflow: auto; }
"""

# Sort a table body by the clicked column: numbers numerically (data-sort holds the
# exact value when the text is rounded), then text; a second click reverses.
SORT_SCRIPT = """
(function () {
  function key(cell) {
    var v = cell.getAttribute("data-sort");
    if (v === null) v = cell.textContent;
    var n = Number(v);
    return v.trim() !== "" && !isNaN(n) ? [0, n] : [1, v.toLowerCase()];
  }
  function cmp(a, b) { return a[0] - b[0] || (a[1] < b[1] ? -1 : a[1] > b[1] ? 1 : 0); }
  document.querySelectorAll("table.sortable").forEach(function (table) {
    var heads = table.tHead.rows[0].cells;
    Array.prototype.forEach.call(heads, function (th, col) {
      th.addEventListener("click", function () {
        var asc = th.getAttribute("aria-sort") !== "ascending";
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) { return cmp(key(a.cells[col]), key(b.cells[col])) * (asc ? 1 : -1); });
        rows.forEach(function (r) { body.appendChild(r); });
        Array.prototype.forEach.call(heads, function (h) { h.removeAttribute("aria-sort"); });
        th.setAttribute("aria-sort", asc ? "ascending" : "descending");
      });
    });
  });
})();
"""


def esc(text) -> str:
    """Any value as HTML text (quotes escaped too, so it is safe inside attributes)."""
    return html.escape(str(text), quote=True)


def data_uri(data: bytes, mime: str = "image/png") -> str:
    """Bytes -> a base64 data: URI (the page then needs no file beside it)."""
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def image_src(image) -> str:
    """PNG bytes or an image file path -> a data URI for <img src>."""
    if isinstance(image, (bytes, bytearray)):
        return data_uri(bytes(image))
    path = os.fspath(image)
    with open(path, "rb") as f:
        return data_uri(f.read(), MIME.get(os.path.splitext(path)[1].lower(), "application/octet-stream"))


def format_cell(value, float_format: str = "{:.4f}") -> tuple[str, str | None, bool]:
    """A cell value -> (shown text, exact sort key or None, is a number): floats rounded, the key exact."""
    if isinstance(value, bool) or value is None:
        return ("" if value is None else str(value)), None, False
    if isinstance(value, float) or type(value).__name__.startswith("float"):
        return float_format.format(value), repr(float(value)), True
    return str(value), None, isinstance(value, int) or type(value).__name__.startswith(("int", "uint"))


class Page:
    """An HTML page built in order; `write` puts it on disk atomically."""

    def __init__(self, title: str, *, subtitle: str | None = None):
        self.title = title
        self.parts: list[str] = [f"<h1>{esc(title)}</h1>"]
        if subtitle:
            self.parts.append(f'<p class="subtitle">{esc(subtitle)}</p>')
        self._sortable = False

    def heading(self, text: str, level: int = 2, id: str | None = None) -> "Page":
        anchor = f' id="{esc(id)}"' if id else ""
        self.parts.append(f"<h{level}{anchor}>{esc(text)}</h{level}>")
        return self

    def text(self, text: str, cls: str | None = None) -> "Page":
        attrs = f' class="{esc(cls)}"' if cls else ""
        self.parts.append(f"<p{attrs}>{esc(text)}</p>")
        return self

    def raw(self, markup: str) -> "Page":
        """Trusted markup, inserted as is."""
        self.parts.append(markup)
        return self

    def pre(self, text: str) -> "Page":
        """Preformatted text (a YAML config, a log excerpt)."""
        self.parts.append(f"<pre>{esc(text)}</pre>")
        return self

    def table(self, header: list[str], rows, *, id: str | None = None, sortable: bool = False,
              caption: str | None = None, float_format: str = "{:.4f}") -> "Page":
        """A table; floats are shown with `float_format` and sort by their exact value."""
        self._sortable |= sortable
        attrs = (f' id="{esc(id)}"' if id else "") + (' class="sortable"' if sortable else "")
        out = [f"<table{attrs}>"]
        if caption:
            out.append(f"<caption>{esc(caption)}</caption>")
        out.append("<thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr></thead><tbody>")
        for row in rows:
            cells = []
            for value in row:
                shown, key, number = format_cell(value, float_format)
                attrs = (f' data-sort="{esc(key)}"' if key else "") + ("" if number else ' class="t"')
                cells.append(f"<td{attrs}>{esc(shown)}</td>")
            out.append("<tr>" + "".join(cells) + "</tr>")
        out.append("</tbody></table>")
        self.parts.append("".join(out))
        return self

    def mapping(self, values: dict, *, id: str | None = None, caption: str | None = None) -> "Page":
        """A key / value table (a resolved config); nested values shown as JSON."""
        rows = [[k, v if isinstance(v, (int, float, str)) and not isinstance(v, bool) else json.dumps(v)]
                for k, v in values.items()]
        return self.table(["key", "value"], rows, id=id, caption=caption, float_format="{:g}")

    def image(self, image, *, alt: str = "", width: int | None = None, embed: bool = True) -> "Page":
        """A figure from PNG bytes or an image file: embedded, or (embed=False) linked by the
        path as given, which must then be relative to the page's folder."""
        style = f' style="width:{int(width)}px"' if width else ""
        src = image_src(image) if embed or isinstance(image, (bytes, bytearray)) else os.fspath(image)
        self.parts.append(f'<p><img class="figure" src="{esc(src)}" alt="{esc(alt)}"{style}></p>')
        return self

    def grid(self, tiles, *, id: str | None = None, caption: str | None = None, boxed: bool = False) -> "Page":
        """Thumbnails with captions; tiles are (PNG bytes or path, [caption lines], css class or None).

        boxed: one framed group with `caption` above it (a product's photos together).
        """
        out = []
        if boxed:
            out.append('<div class="group">' + (f"<div>{esc(caption)}</div>" if caption else ""))
        elif caption:
            out.append(f"<p>{esc(caption)}</p>")
        out.append('<div class="grid"' + (f' id="{esc(id)}"' if id else "") + ">")
        for image, lines, tile_cls in tiles:
            text = "<br>".join(esc(line) for line in lines)
            alt = esc(lines[0] if lines else "")
            extra = f" {esc(tile_cls)}" if tile_cls else ""
            out.append(f'<div class="tile{extra}"><img src="{esc(image_src(image))}" alt="{alt}">'
                       f"<div>{text}</div></div>")
        out.append("</div>" + ("</div>" if boxed else ""))
        self.parts.append("".join(out))
        return self

    def render(self) -> str:
        script = f"<script>{SORT_SCRIPT}</script>" if self._sortable else ""
        return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                f"<title>{esc(self.title)}</title><style>{STYLE}</style></head>\n"
                "<body>\n" + "\n".join(self.parts) + f"\n{script}\n</body></html>\n")

    def write(self, path: str) -> str:
        """Write the page (UTF-8, atomically); returns `path`."""
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        atomic_write_text(path, self.render())
        return path
