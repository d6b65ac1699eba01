"""utils/report.py: the self-contained HTML page builder (escaping, tables, images, grids)."""
import base64
import os

from tests.conftest import encode_image, random_image
from utils.report import Page, data_uri, format_cell


def test_page_is_self_contained_and_escaped(tmp_path):
    png = encode_image(random_image(0, 8, 8), "png")
    (tmp_path / "fig.png").write_bytes(png)
    page = (Page("run <1>", subtitle="a & b").heading("Scores", id="s").text("x < y")
            .table(["name", "value"], [["<b>", 0.123456], ["n", 3]], id="t")
            .image(str(tmp_path / "fig.png"), alt="fig").image("fig.png", embed=False)
            .grid([(png, ["id1", "true: <a>"], "bad")], id="g", caption="photos", boxed=True)
            .pre("k: <v>").mapping({"lr": 0.001, "layers": ["a", 1], "ema": True}, id="cfg"))
    path = page.write(str(tmp_path / "sub" / "index.html"))
    text = open(path, encoding="utf-8").read()
    assert text.startswith("<!DOCTYPE html>") and "<title>run &lt;1&gt;</title>" in text
    assert "<b>" not in text and "&lt;b&gt;" in text and "x &lt; y" in text and "true: &lt;a&gt;" in text
    assert text.count(data_uri(png)) == 2 and 'src="fig.png"' in text      # embedded twice, linked once
    assert "<script" not in text                                             # no sortable table: no JS
    assert '<td data-sort="0.123456">0.1235</td>' in text and "<td>3</td>" in text
    assert '<td class="t">[&quot;a&quot;, 1]</td>' in text and '<td class="t">true</td>' in text
    assert '<td data-sort="0.001">0.001</td>' in text
    assert '<div class="group"><div>photos</div><div class="grid" id="g"><div class="tile bad">' in text
    assert not [f for f in os.listdir(tmp_path / "sub") if f != "index.html"]   # no temp file left


def test_sortable_table_adds_the_inline_script_once(tmp_path):
    page = Page("t").table(["a"], [[1]], sortable=True).table(["b"], [[2]], sortable=True)
    text = page.render()
    assert text.count("<script>") == 1 and text.count('class="sortable"') == 2
    assert "http" not in text


def test_format_cell_numbers_and_text():
    import numpy as np

    assert format_cell(np.float32(0.5)) == ("0.5000", "0.5", True)
    assert format_cell(np.int64(7)) == ("7", None, True)
    assert format_cell("x") == ("x", None, False) and format_cell(None) == ("", None, False)
    assert format_cell(2.5, "{:.1f}") == ("2.5", "2.5", True)
    assert base64.b64decode(data_uri(b"abc").split(",")[1]) == b"abc"
