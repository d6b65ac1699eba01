"""detect.py --export end to end, and detect.py on the exports: the same CSV as on the .h5."""
import os

import numpy as np
import pytest

from tests.detect.common import probs_of, read_csv, run, tiny_model


@pytest.fixture(scope="module")
def per_class_model(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("pc") / "pc.h5", head="per-class")


@pytest.mark.parametrize("fmt,out", [("saved_model", "sm"), ("onnx", "m.onnx")])
def test_detect_on_the_export_gives_the_h5_csv(h5_model, images, tmp_path, capsys, fmt, out):
    export = str(tmp_path / out)
    code, stdout, err = run(["--model", h5_model, "--export", export, "--export-format", fmt], capsys)
    assert code == 0, err
    assert f"exported {h5_model} to {export}" in stdout and "max |prob - keras|" in stdout

    args = [str(images), "--format", "probs", "--tta", "2"]
    assert run(["--model", h5_model, *args, "--out", str(tmp_path / "h5.csv")], capsys)[0] == 0
    assert run(["--model", export, *args, "--out", str(tmp_path / "ex.csv")], capsys)[0] == 0
    want, got = probs_of(tmp_path / "h5.csv"), probs_of(tmp_path / "ex.csv")
    assert list(got) == list(want) and len(want) == 9
    assert max(float(np.abs(got[k] - want[k]).max()) for k in want) <= 1e-5
    assert read_csv(tmp_path / "h5.csv")[0] == read_csv(tmp_path / "ex.csv")[0]


def test_per_class_export_predicts_like_its_h5(per_class_model, images, tmp_path, capsys):
    export = str(tmp_path / "pc.tflite")
    assert run(["--model", per_class_model, "--export", export, "--export-format", "litert"], capsys)[0] == 0
    args = [str(images), "--format", "probs"]
    assert run(["--model", per_class_model, *args, "--out", str(tmp_path / "a.csv")], capsys)[0] == 0
    assert run(["--model", export, *args, "--out", str(tmp_path / "b.csv")], capsys)[0] == 0
    want, got = probs_of(tmp_path / "a.csv"), probs_of(tmp_path / "b.csv")
    assert max(float(np.abs(got[k] - want[k]).max()) for k in want) <= 1e-5


@pytest.mark.parametrize("argv,message", [
    (["--export", "x", "--export-format", "tflite"], "invalid choice: 'tflite'"),
    (["--export", "x.onnx", "--export-format", "onnx", "--quantize", "float16"], "--quantize is for --export-format litert"),
    ([], "the following arguments are required: INPUT"),
])
def test_export_flags_bad_values_are_one_line(h5_model, tmp_path, capsys, argv, message):
    code, _, err = run(["--model", h5_model, *argv], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not os.path.exists("x") and not os.path.exists("x.onnx")


def test_export_refuses_an_existing_output_without_overwrite(h5_model, tmp_path, capsys):
    out = tmp_path / "m.onnx"
    out.write_bytes(b"keep me")
    code, _, err = run(["--model", h5_model, "--export", str(out), "--export-format", "onnx"], capsys)
    assert code == 2 and "--overwrite" in err and out.read_bytes() == b"keep me"
    assert run(["--model", h5_model, "--export", str(out), "--export-format", "onnx", "--overwrite"], capsys)[0] == 0
    assert out.read_bytes() != b"keep me"


def test_evaluate_writes_the_page_with_thumbnails_of_the_top_losses(h5_model, images, tmp_path, capsys):
    out = tmp_path / "ev.csv"
    code, stdout, err = run(["--model", h5_model, str(images), "--evaluate", "--out", str(out)], capsys)
    assert code == 0, err
    page = tmp_path / "ev.eval" / "index.html"
    assert f"evaluation page: {page}" in stdout
    assert stdout.strip().splitlines()[-1].startswith("accuracy ")      # the headline stays last
    html = page.read_text()
    assert html.count("data:image/png;base64,") >= 9 + 2   # 9 thumbnails (all rows) + confusion + PR curves
    assert (tmp_path / "ev.eval" / "top_losses.png").stat().st_size > 1000


def test_bson_evaluation_page_shows_each_products_photos_together(tmp_path, capsys):
    import bson

    from tests.detect.common import image_bytes

    cats = ["1000010653", "1000010654", "1000010655"]
    model = tiny_model(tmp_path / "cd.h5", class_names=cats)
    path = tmp_path / "train.bson"
    with open(path, "wb") as f:
        for pid, n in ((101, 3), (102, 1), (103, 2)):
            f.write(bson.encode({"_id": pid, "category_id": int(cats[pid % 3]),
                                 "imgs": [{"picture": image_bytes(pid + i, "jpeg")} for i in range(n)]}))
    out = tmp_path / "cd.csv"
    code, stdout, err = run(["--model", model, str(path), "--evaluate", "--out", str(out)], capsys)
    assert code == 0, err
    assert stdout.strip().splitlines()[-1].endswith("on 3 products")
    html = (tmp_path / "cd.eval" / "index.html").read_text()
    assert "3 products of 6 photos" in html
    for pid in (101, 102, 103):
        assert f"product {pid}:" in html
    # 6 photo thumbnails in the top losses + each product's photos again beside it
    assert html.count("data:image/png;base64,") >= 6 + 6
