"""utils/detect/evaluate.py: metrics on hand-made arrays, and the PREFIX.eval/ files (no TensorFlow).

F-beta and threshold tuning are tested in test_thresholds.py.
"""
import json
import os

import numpy as np
import pytest

from utils.detect import evaluate


def test_single_label_metrics():
    y = np.eye(3)[[0, 1, 2, 2]]
    p = np.array([[.8, .1, .1], [.2, .5, .3], [.5, .2, .3], [.1, .1, .8]])
    m = evaluate.evaluate(y, p, ["a", "b", "c"], multi_label=False)
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["top5"] == 1.0                       # k is capped at K
    assert evaluate.topk_accuracy(y, p, 2) == pytest.approx(1.0)
    rows = {r["class"]: r for r in m["per_class"]}
    assert rows["a"]["precision"] == pytest.approx(0.5) and rows["a"]["recall"] == 1.0
    assert rows["c"]["recall"] == pytest.approx(0.5) and rows["c"]["support"] == 2
    cm = evaluate.confusion_matrix(y, p)
    assert cm.tolist() == [[1, 0, 0], [0, 1, 0], [1, 0, 1]]
    assert evaluate.headline(m) == "accuracy 0.750 on 4 images"


def test_multi_label_metrics_and_thresholds():
    y = np.array([[1, 0], [1, 1], [0, 1]])
    p = np.array([[.6, .2], [.4, .7], [.1, .9]])
    m = evaluate.evaluate(y, p, ["x", "y"], multi_label=True, thresholds=[0.5, 0.5])
    assert m["per_class"][0]["recall"] == pytest.approx(0.5)
    m2 = evaluate.evaluate(y, p, ["x", "y"], multi_label=True, thresholds=[0.3, 0.5])
    assert m2["macro_f1"] == 1.0 and m2["exact_match"] == 1.0 and m2["samples_f2"] == 1.0
    assert evaluate.headline(m2, "products").startswith("macro_f1 1.000 on 3 products")


def test_report_csv(tmp_path):
    m = evaluate.evaluate(np.eye(2)[[0, 1]], np.array([[.9, .1], [.4, .6]]), ["a", "b"], multi_label=False)
    path = tmp_path / "r.csv"
    evaluate.write_report_csv(m["per_class"], str(path))
    lines = path.read_text().splitlines()
    assert lines[0].startswith("class,precision,recall,f1") and len(lines) == 3
    assert "accuracy" in evaluate.summary_table(m)


def test_evaluate_macro_scores_equal_macro_fbeta():
    rng = np.random.default_rng(1)
    y = (rng.random((50, 7)) > 0.6).astype(np.float32)
    p = rng.random((50, 7)).astype(np.float32)
    for multi in (True, False):
        m = evaluate.evaluate(y, p, list("abcdefg"), multi_label=multi, thresholds=0.4)
        y_pred = evaluate.predict_labels(p, multi, 0.4)
        assert m["macro_f1"] == pytest.approx(evaluate.macro_fbeta(y, y_pred, 1.0), abs=1e-12)
        assert m["macro_f2"] == pytest.approx(evaluate.macro_fbeta(y, y_pred, 2.0), abs=1e-12)


def test_write_evaluation_files_and_headline(tmp_path, capsys):
    y = np.eye(3)[[0, 1, 2, 2]]
    p = np.array([[.8, .1, .1], [.2, .5, .3], [.5, .2, .3], [.1, .1, .8]])
    out = str(tmp_path / "p.eval")
    m = evaluate.write_evaluation(out, y, p, ["a", "b", "c"], multi_label=False, thresholds=0.5)
    assert sorted(os.listdir(out)) == ["metrics.json", "per_class.csv"]   # the plots are the page's
    assert json.loads(open(os.path.join(out, "metrics.json")).read()) == {k: v for k, v in m.items() if k != "per_class"}
    stdout = capsys.readouterr().out.strip().splitlines()
    assert stdout[-2:] == [f"evaluation files in {out}/", "accuracy 0.750 on 4 images"]
    evaluate.write_evaluation(out, y, p, ["a", "b", "c"], multi_label=True, thresholds=[0.5] * 3, unit="products")
    assert json.load(open(os.path.join(out, "metrics.json")))["n"] == len(y)
    assert capsys.readouterr().out.strip().endswith("on 4 products")
