"""The evaluation page: its tables hold evaluate.py's numbers, and it renders in a real browser.

The numbers are read back from the HTML (and, in the browser test, from the DOM
Chromium built) and compared with what detect.py writes beside the page:
per_class.csv (write_report_csv) and metrics.json (evaluate).
"""
import csv
import html
import html.parser
import json
import os
import subprocess

import numpy as np
import pytest

from utils.detect import evaluate
from utils.detect.thresholds import tune_thresholds
from utils.detect.report import (HEADLINE, MAX_MATRIX, TOP_LOSSES, most_confused_pairs, sample_losses,
                                 write_eval_report)

CHROMIUM = "/usr/bin/chromium"


def synthetic(n=40, k=5, multi=False, seed=0):
    """Labels, probabilities that are right most of the time, ids, and one thumbnail per row."""
    rng = np.random.default_rng(seed)
    names = [f"class {i}" if i % 2 else f"c<{i}>" for i in range(k)]   # markup in names must be escaped
    if multi:
        y_true = (rng.random((n, k)) < 0.35).astype(np.float32)
        y_prob = np.clip(0.6 * y_true + 0.5 * rng.random((n, k)), 0, 1).astype(np.float32)
    else:
        y_true = np.eye(k, dtype=np.float32)[rng.integers(0, k, n)]
        y_prob = rng.dirichlet(np.ones(k), n) + 1.5 * y_true * (rng.random((n, 1)) < 0.7)
        y_prob = (y_prob / y_prob.sum(1, keepdims=True)).astype(np.float32)
    thumbs = rng.uniform(0, 255, (n, 24, 24, 3)).astype(np.float32)
    return names, y_true, y_prob, [f"img{i:03d}" for i in range(n)], thumbs


class Tables(html.parser.HTMLParser):
    """Every <table id=...>: rows of cell texts (header first), and each cell's data-sort value."""

    def __init__(self):
        super().__init__()
        self.tables, self.sort_keys, self.images = {}, {}, []
        self._id, self._row, self._cell, self._key = None, None, None, None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table" and a.get("id"):
            self._id = a["id"]
            self.tables[self._id], self.sort_keys[self._id] = [], []
        elif tag == "tr" and self._id:
            self._row, self._keys = [], []
        elif tag in ("td", "th") and self._row is not None:
            self._cell, self._key = "", a.get("data-sort")
        elif tag == "img":
            self.images.append(a.get("src", ""))

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append(self._cell)
            self._keys.append(self._key)
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.tables[self._id].append(self._row)
            self.sort_keys[self._id].append(self._keys)
            self._row = None
        elif tag == "table":
            self._id = None


def parse(text: str) -> Tables:
    p = Tables()
    p.feed(text)
    return p


def expected_csv(tmp_path, metrics):
    path = str(tmp_path / "per_class.csv")
    evaluate.write_report_csv(metrics["per_class"], path)
    return list(csv.reader(open(path, newline="")))


def check_numbers(page: Tables, metrics, csv_rows):
    """The page's tables == per_class.csv (same rounding) and metrics (exact, via data-sort)."""
    assert page.tables["per-class"] == csv_rows
    keys = HEADLINE[metrics["multi_label"]]
    assert [r[0] for r in page.tables["metrics"][1:]] == keys
    for (name, shown), (_, exact) in zip(page.tables["metrics"][1:], page.sort_keys["metrics"][1:]):
        assert float(exact) == metrics[name] and shown == f"{metrics[name]:.4f}"


# ----------------------------------------------------------------------------- pure parts

def test_sample_losses_are_keras_crossentropies():
    t = np.array([[0, 1, 0], [1, 0, 0]], np.float32)
    p = np.array([[0.2, 0.7, 0.1], [0.5, 0.25, 0.25]], np.float32)
    np.testing.assert_allclose(sample_losses(t, p, False), [-np.log(0.7), -np.log(0.5)], rtol=1e-6)
    bce = -(t * np.log(p) + (1 - t) * np.log(1 - p)).mean(1)
    np.testing.assert_allclose(sample_losses(t, p, True), bce, rtol=1e-6)
    assert np.isfinite(sample_losses(t, np.eye(3)[[0, 1]], False)).all()   # p = 0 clipped, not inf


def test_most_confused_pairs_like_fastai():
    cm = np.array([[5, 3, 0], [1, 4, 7], [0, 3, 2]])
    names = ["a", "b", "c"]
    assert most_confused_pairs(cm, names) == [("b", "c", 7), ("a", "b", 3), ("c", "b", 3), ("b", "a", 1)]
    assert most_confused_pairs(cm, names, k=2) == [("b", "c", 7), ("a", "b", 3)]
    assert most_confused_pairs(cm, names, min_count=3) == [("b", "c", 7), ("a", "b", 3), ("c", "b", 3)]


# ----------------------------------------------------------------------------- the page's content

def test_single_label_page_holds_the_csv_numbers(tmp_path):
    names, y_true, y_prob, ids, thumbs = synthetic()
    out = str(tmp_path / "p.eval")
    path = write_eval_report(out, class_names=names, y_true=y_true, y_prob=y_prob, ids=ids, multi_label=False,
                             thumbnails=thumbs)
    assert path == os.path.join(out, "index.html")
    assert {"confusion_matrix.png", "pr_curves.png", "top_losses.png"} <= set(os.listdir(out))
    text = open(path, encoding="utf-8").read()
    assert "c&lt;0&gt;" in text and "<0>" not in text     # class names are escaped
    assert "http://" not in text and "https://" not in text and "<script src" not in text
    page = parse(text)
    metrics = evaluate.evaluate(y_true, y_prob, names, multi_label=False)
    check_numbers(page, metrics, expected_csv(tmp_path, metrics))
    cm = evaluate.confusion_matrix(y_true, y_prob)
    assert page.tables["confusion"][0] == ["true \\ predicted"] + names
    assert [[int(v) for v in r[1:]] for r in page.tables["confusion"][1:]] == cm.tolist()
    losses = sample_losses(y_true, y_prob, False)
    top = np.argsort(-losses, kind="stable")[:TOP_LOSSES]
    assert [r[1] for r in page.tables["top-losses"][1:]] == [ids[i] for i in top]
    assert [float(k[5]) for k in page.sort_keys["top-losses"][1:]] == pytest.approx(losses[top].tolist())
    # every image is embedded: 2 figures + one thumbnail per top loss
    assert len(page.images) == 2 + TOP_LOSSES and all(s.startswith("data:image/png;base64,") for s in page.images)


def test_many_classes_list_the_most_confused_pairs(tmp_path):
    names, y_true, y_prob, ids, _ = synthetic(n=300, k=MAX_MATRIX + 10, seed=1)
    page = parse(open(write_eval_report(str(tmp_path), class_names=names, y_true=y_true, y_prob=y_prob, ids=ids,
                                        multi_label=False)).read())
    assert "confusion" not in page.tables and "top-losses-grid" not in open(tmp_path / "index.html").read()
    pairs = most_confused_pairs(evaluate.confusion_matrix(y_true, y_prob), names)
    assert page.tables["most-confused"][1:] == [[t, p, str(c)] for t, p, c in pairs]
    assert not (tmp_path / "top_losses.png").exists()   # no thumbnails given


def test_multi_label_page_shows_tuned_thresholds(tmp_path):
    names, y_true, y_prob, ids, thumbs = synthetic(multi=True, k=4)
    thresholds, _ = tune_thresholds(y_true, y_prob)
    page = parse(open(write_eval_report(str(tmp_path), class_names=names, y_true=y_true, y_prob=y_prob, ids=ids,
                                        multi_label=True, thresholds=thresholds, thumbnails=thumbs.__getitem__)).read())
    metrics = evaluate.evaluate(y_true, y_prob, names, multi_label=True, thresholds=thresholds)
    check_numbers(page, metrics, expected_csv(tmp_path, metrics))
    assert [float(k[1]) for k in page.sort_keys["thresholds"][1:]] == thresholds
    assert [r[0] for r in page.tables["thresholds"][1:]] == names
    assert "confusion" not in page.tables


def test_products_are_scored_and_shown_together(tmp_path):
    names, y_true, y_prob, ids, thumbs = synthetic(n=30)
    # 10 products of 3 photos, each photo labelled as its product
    y_true = np.repeat(y_true[::3], 3, axis=0)
    products = {f"P{j}": [3 * j, 3 * j + 1, 3 * j + 2] for j in range(10)}
    asked = []
    text = open(write_eval_report(str(tmp_path), class_names=names, y_true=y_true, y_prob=y_prob, ids=ids,
                                  multi_label=False, thumbnails=lambda i: asked.append(i) or thumbs[i],
                                  products=products)).read()
    page = parse(text)
    prob = np.stack([y_prob[r].mean(0) for r in products.values()])
    metrics = evaluate.evaluate(y_true[::3], prob, names, multi_label=False)
    assert [float(k[1]) for k in page.sort_keys["product-metrics"][1:]] == [metrics[k] for k in HEADLINE[False]]
    assert {r[0] for r in page.tables["worst-products"][1:]} <= set(products)
    assert text.count('class="group"') == 10 and all(r[1] == "3" for r in page.tables["worst-products"][1:])
    assert set(asked) <= set(range(30))       # thumbnails asked only for rows shown


# ----------------------------------------------------------------------------- a real browser

CHECK_SCRIPT = """<script>
window.addEventListener("load", function () {
  var imgs = Array.prototype.map.call(document.images, function (i) {
    return {ok: i.complete && i.naturalWidth > 0, w: i.naturalWidth, alt: i.alt}; });
  var table = document.getElementById("per-class");
  var th = table.tHead.rows[0].cells[3];          // f1
  th.click(); th.click();                          // descending
  var f1 = Array.prototype.map.call(table.tBodies[0].rows, function (r) { return r.cells[3].textContent; });
  var out = document.createElement("pre");
  out.id = "check";
  out.style.display = "none";                      // kept out of the screenshot, still in the DOM
  out.textContent = JSON.stringify({images: imgs, f1_desc: f1, sort: th.getAttribute("aria-sort")});
  document.body.appendChild(out);
});
</script>"""


def chromium(*args, user_dir):
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={user_dir}",
           "--virtual-time-budget=5000", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_page_in_headless_chromium(tmp_path):
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} not installed (Debian: apt-get install chromium): browser check of the report skipped")
    names, y_true, y_prob, ids, thumbs = synthetic()
    y_true = np.repeat(y_true[::2], 2, axis=0)     # 20 products of 2 photos with one label each
    out = tmp_path / "p.eval"
    index = write_eval_report(str(out), class_names=names, y_true=y_true, y_prob=y_prob, ids=ids,
                              multi_label=False, thumbnails=thumbs,
                              products={f"P{j}": [2 * j, 2 * j + 1] for j in range(20)})
    # the same page plus a script that reports what the browser made of it
    check = out / "check.html"
    check.write_text(open(index, encoding="utf-8").read().replace("</body>", CHECK_SCRIPT + "</body>"),
                     encoding="utf-8")
    # one browser run: the DOM after the script ran, and a screenshot of the page (f1 column sorted)
    shot = tmp_path / "screenshot.png"
    res = chromium("--dump-dom", f"--screenshot={shot}", "--window-size=1280,4000", "--hide-scrollbars",
                   check.as_uri(), user_dir=tmp_path / "chrome")
    assert res.returncode == 0, res.stderr[-2000:]
    page = parse(res.stdout)
    found = json.loads(html.unescape(res.stdout.split('<pre id="check"')[1].split(">", 1)[1].split("</pre>")[0]))
    assert len(found["images"]) >= 2 + TOP_LOSSES and all(i["ok"] for i in found["images"]), found["images"]
    metrics = evaluate.evaluate(y_true, y_prob, names, multi_label=False)
    csv_rows = expected_csv(tmp_path, metrics)
    # the DOM after sorting: the same rows, ordered by f1 descending
    assert found["sort"] == "descending"
    assert found["f1_desc"] == sorted((r[3] for r in csv_rows[1:]), key=float, reverse=True)
    assert sorted(page.tables["per-class"][1:]) == sorted(csv_rows[1:])
    assert page.tables["metrics"] == [["metric", "value"]] + [[k, f"{metrics[k]:.4f}"] for k in HEADLINE[False]]

    from PIL import Image

    assert shot.stat().st_size > 10_000 and Image.open(shot).size == (1280, 4000)
