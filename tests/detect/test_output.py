"""utils/detect/output.py: the CSV formats, atomic row writing, the skipped list."""
import os

import numpy as np
import pytest

from tests.detect.common import read_csv
from utils.detect.output import MAX_LISTED_SKIPS, header_and_formatter, report_skipped, sidecar, write_rows
from utils.detect.stream import Row
from utils.errors import UsageError

NAMES = ["red", "green", "blue"]
P = np.array([0.2, 0.7, 0.1], np.float32)


def test_each_format_on_one_row():
    cells = {}
    for fmt in ("probs", "label", "topk", "binary", "multilabel", "cdiscount"):
        header, fmt_row = header_and_formatter(fmt, NAMES, k=2, thresholds=[0.5, 0.5, 0.05])
        cells[fmt] = (header, fmt_row(P))
    assert cells["probs"] == (["id"] + NAMES, ["0.2", "0.7", "0.1"])
    assert cells["label"] == (["id", "label"], ["green"])
    assert cells["cdiscount"] == (["_id", "category_id"], ["green"])
    assert cells["topk"] == (["id", "label_1", "score_1", "label_2", "score_2"], ["green", "0.7", "red", "0.2"])
    assert cells["binary"] == (["id"] + NAMES, ["0", "1", "1"])
    assert cells["multilabel"] == (["id", "labels"], ["green blue"])
    header, fmt_row = header_and_formatter("multilabel", NAMES, ids=True, thresholds=[0.9] * 3, at_least_one=True)
    assert (header, fmt_row(P)) == (["id", "attribute_ids"], ["1"])
    assert header_and_formatter("multilabel", NAMES, thresholds=[0.9] * 3)[1](P) == [""]
    assert header_and_formatter("topk", NAMES, k=10)[0][-2:] == ["label_3", "score_3"]   # k capped at K
    with pytest.raises(UsageError, match="--format must be one of"):
        header_and_formatter("xml", NAMES)


def test_write_rows_escapes_and_leaves_nothing_half_written(tmp_path):
    names = ['a,b', 'say "hi"', "plain"]
    header, fmt_row = header_and_formatter("probs", names)
    out = str(tmp_path / "p.csv")
    rows = [Row('id,1 "x"', np.array([0.2, 0.3, 0.5], np.float32), None, None)]
    assert write_rows(out, header, fmt_row, iter(rows)) == 1
    assert read_csv(out) == [["id"] + names, ['id,1 "x"', "0.2", "0.3", "0.5"]]

    def failing():
        yield rows[0]
        raise RuntimeError("input died")
    with pytest.raises(RuntimeError):
        write_rows(out, header, fmt_row, failing())
    assert os.listdir(tmp_path) == ["p.csv"] and read_csv(out)[1][0] == 'id,1 "x"'


def test_skipped_list_beside_the_output(tmp_path, capsys):
    out = str(tmp_path / "sub.csv")
    assert sidecar(out, ".eval") == str(tmp_path / "sub.eval") and sidecar("pred", ".x") == "pred.x"
    skipped = [(f"i{n}", "not an image") for n in range(MAX_LISTED_SKIPS + 2)]
    report_skipped(out, skipped)
    assert read_csv(tmp_path / "sub.skipped.csv") == [["id", "reason"]] + [list(s) for s in skipped]
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "skipped i0: not an image" and len(err) == MAX_LISTED_SKIPS + 1
    assert err[-1].startswith(f"skipped {MAX_LISTED_SKIPS + 2} input(s) (2 not shown): see ")
    report_skipped(out, [])
    assert not os.path.exists(tmp_path / "sub.skipped.csv")
