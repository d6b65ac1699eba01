"""detect.py end to end with tiny models trained for a step (no network, 32-48 px images).

The makers are in tests/detect/common.py; the fixtures h5_model and images in conftest.py.
"""
import functools
import http.server
import json
import os

import keras
import numpy as np
import pytest

import detect
from model.meta import load_meta, save_meta
from tests.conftest import QuietHandler, encode_image, serve
from tests.detect.common import CLASSES, image_bytes, probs_of, read_csv, run, tiny_model, write_split


# ----------------------------------------------------------------------------- formats

@pytest.mark.slow   # > 5 s: several CLI runs
def test_every_format(h5_model, images, tmp_path, capsys):
    out = str(tmp_path / "p.csv")
    code, stdout, err = run(["--model", h5_model, str(images), "--out", out, "--format", "probs"], capsys)
    assert code == 0, err
    rows = read_csv(out)
    assert rows[0] == ["id"] + CLASSES and len(rows) == 10
    probs = probs_of(out)
    assert set(probs) == {f"{c}/{c}{i}" for c in CLASSES for i in range(3)}
    for p in probs.values():
        assert p.sum() == pytest.approx(1.0, abs=1e-4)
    best = {k: CLASSES[int(np.argmax(v))] for k, v in probs.items()}

    assert run(["--model", h5_model, str(images), "--out", out, "--format", "label"], capsys)[0] == 0
    rows = read_csv(out)
    assert rows[0] == ["id", "label"] and {r[0]: r[1] for r in rows[1:]} == best

    assert run(["--model", h5_model, str(images), "--out", out, "--format", "topk", "--k", "2"], capsys)[0] == 0
    rows = read_csv(out)
    assert rows[0] == ["id", "label_1", "score_1", "label_2", "score_2"]
    for r in rows[1:]:
        assert r[1] == best[r[0]] and float(r[2]) >= float(r[4])

    assert run(["--model", h5_model, str(images), "--out", out, "--format", "cdiscount"], capsys)[0] == 0
    rows = read_csv(out)
    assert rows[0] == ["_id", "category_id"] and {r[0]: r[1] for r in rows[1:]} == best

    # thresholds: a threshold of 0 puts every class in, 1.01 none (here: exactly what --threshold says)
    assert run(["--model", h5_model, str(images), "--out", out, "--format", "multilabel", "--threshold", "0"], capsys)[0] == 0
    rows = read_csv(out)
    assert rows[0] == ["id", "labels"] and all(r[1] == "red green blue" for r in rows[1:])
    assert run(["--model", h5_model, str(images), "--out", out, "--format", "multilabel", "--ids",
                "--threshold", "0.3"], capsys)[0] == 0
    rows = read_csv(out)
    assert rows[0] == ["id", "attribute_ids"]
    for r in rows[1:]:
        want = [str(i) for i, v in enumerate(probs[r[0]]) if v >= 0.3]
        assert r[1].split() == want

    tfile = tmp_path / "t.json"
    tfile.write_text(json.dumps({"red": 0.0, "green": 2.0, "blue": 2.0}))
    assert run(["--model", h5_model, str(images), "--out", out, "--format", "binary", "--thresholds", str(tfile)],
               capsys)[0] == 0
    rows = read_csv(out)
    assert rows[0] == ["id"] + CLASSES and all(r[1:] == ["1", "0", "0"] for r in rows[1:])


@pytest.mark.slow   # > 5 s: several CLI runs
def test_keras_savedmodel_and_per_class_head(images, tmp_path, capsys):
    """.keras and SavedModel folders load; a per-class head becomes one [N, K] matrix."""
    single = str(images / "red" / "red0.png")
    for path, head in ((tmp_path / "pc.keras", "per-class"), (tmp_path / "sm", "sigmoid")):
        model = tiny_model(path, head=head)
        out = str(tmp_path / f"{os.path.basename(model)}.csv")
        code, _, err = run(["--model", model, single, str(images / "blue"), "--out", out, "--format", "probs"], capsys)
        assert code == 0, err
        p = probs_of(out)
        assert set(p) == {"red0", "blue0", "blue1", "blue2"}
        assert all(v.shape == (3,) and ((v > 0) & (v < 1)).all() for v in p.values())
        # the same numbers as calling the model on eval_image's output
        if path.suffix == ".keras":
            import tensorflow as tf
            from utils.input.image_ops import eval_image

            m = keras.models.load_model(model, compile=False)
            x = eval_image(tf.constant([open(single, "rb").read()]), (32, 32))[None]
            want = np.concatenate([np.asarray(o) for o in m(x)], axis=-1)[0]
            np.testing.assert_allclose(p["red0"], want, atol=1e-5)


# ----------------------------------------------------------------------------- TTA, ensembles

def test_tta_changes_values_not_shape(h5_model, images, tmp_path, capsys):
    outs = {}
    for n in (1, 4):
        out = str(tmp_path / f"tta{n}.csv")
        assert run(["--model", h5_model, str(images), "--out", out, "--format", "probs", "--tta", str(n)], capsys)[0] == 0
        outs[n] = probs_of(out)
    assert outs[1].keys() == outs[4].keys()
    diffs = [np.abs(outs[1][k] - outs[4][k]).max() for k in outs[1]]
    assert all(outs[4][k].shape == (3,) for k in outs[4])
    assert max(diffs) > 1e-4
    code, _, err = run(["--model", h5_model, str(images), "--tta", "99"], capsys)
    assert code == 2 and err.startswith("error: --tta")


@pytest.mark.slow   # > 5 s: several CLI runs
def test_ensemble_of_two_architectures_and_sizes(h5_model, images, tmp_path, capsys):
    other = tiny_model(tmp_path / "dense48.keras", size=(48, 48), arch="dense", seed=3)
    single = {}
    for m in (h5_model, other):
        out = str(tmp_path / f"{os.path.basename(m)}.csv")
        assert run(["--model", m, str(images), "--out", out, "--format", "probs"], capsys)[0] == 0
        single[m] = probs_of(out)
    out = str(tmp_path / "ens.csv")
    code, _, err = run(["--model", h5_model, "--model", other, "--model-weights", "3,1", str(images),
                        "--out", out, "--format", "probs"], capsys)
    assert code == 0, err
    ens = probs_of(out)
    for k, v in ens.items():
        np.testing.assert_allclose(v, 0.75 * single[h5_model][k] + 0.25 * single[other][k], atol=1e-5)

    wrong = tiny_model(tmp_path / "wrong.h5", class_names=["red", "green", "yellow"])
    code, _, err = run(["--model", h5_model, "--model", wrong, str(images)], capsys)
    assert code == 2 and err.startswith("error: class lists differ") and err.count("\n") == 1
    code, _, err = run(["--model", h5_model, "--model", other, "--model-weights", "1", str(images)], capsys)
    assert code == 2 and "--model-weights" in err


# ----------------------------------------------------------------------------- BSON products

def test_cdiscount_submission_keeps_a_product_whose_photos_all_fail(tmp_path, capsys):
    """Kaggle rejects a submission missing a product: it gets the mean prediction of the others."""
    bson = pytest.importorskip("bson")
    cats = ["1000010653", "1000010654", "1000010655"]
    model = tiny_model(tmp_path / "cd.h5", class_names=cats)
    path = tmp_path / "test.bson"
    with open(path, "wb") as f:
        f.write(bson.encode({"_id": 1, "imgs": [{"picture": image_bytes(1, "jpeg")}]}))
        f.write(bson.encode({"_id": 2, "imgs": [{"picture": b"not a jpeg"}, {"picture": b"\xff\xd8 cut"}]}))
        f.write(bson.encode({"_id": 3, "imgs": [{"picture": image_bytes(3, "jpeg")}]}))
    out = str(tmp_path / "sub.csv")
    code, _, err = run(["--model", model, str(path), "--out", out, "--format", "cdiscount"], capsys)
    assert code == 0, err
    rows = read_csv(out)[1:]
    assert sorted(r[0] for r in rows) == ["1", "2", "3"] and all(r[1] in cats for r in rows)
    assert "no readable photo" in err
    skipped = {r[0] for r in read_csv(tmp_path / "sub.skipped.csv")[1:]}
    assert skipped == {"2#0", "2#1"}


def test_bson_product_level_average(h5_model, tmp_path, capsys):
    bson = pytest.importorskip("bson")
    photos = {101: [image_bytes(s, "jpeg") for s in range(3)],
              102: [image_bytes(7, "jpeg")],
              103: [image_bytes(s, "jpeg") for s in (10, 11)]}
    cats = ["1000010653", "1000010654", "1000010655"]
    model = tiny_model(tmp_path / "cd.h5", class_names=cats)
    path = tmp_path / "test.bson"
    with open(path, "wb") as f:
        for pid, pics in photos.items():
            f.write(bson.encode({"_id": pid, "imgs": [{"picture": p} for p in pics]}))
    out = str(tmp_path / "sub.csv")
    code, stdout, err = run(["--model", model, str(path), "--out", out, "--format", "cdiscount"], capsys)
    assert code == 0, err
    rows = read_csv(out)
    assert rows[0] == ["_id", "category_id"] and [r[0] for r in rows[1:]] == ["101", "102", "103"]
    assert all(r[1] in cats for r in rows[1:])

    # product row = mean of its photos' rows, each predicted on its own
    out_p = str(tmp_path / "prod.csv")
    assert run(["--model", model, str(path), "--out", out_p, "--format", "probs"], capsys)[0] == 0
    prod = probs_of(out_p)
    pdir = tmp_path / "photos"
    pdir.mkdir()
    for pid, pics in photos.items():
        for i, p in enumerate(pics):
            (pdir / f"{pid}_{i}.jpg").write_bytes(p)
    out_i = str(tmp_path / "img.csv")
    assert run(["--model", model, str(pdir), "--out", out_i, "--format", "probs"], capsys)[0] == 0
    per_image = probs_of(out_i)
    for pid, pics in photos.items():
        want = np.mean([per_image[f"{pid}_{i}"] for i in range(len(pics))], axis=0)
        np.testing.assert_allclose(prod[str(pid)], want, atol=1e-5)
    assert len(pics) == 2 and not np.allclose(per_image["103_0"], per_image["103_1"])


# ----------------------------------------------------------------------------- thresholds

@pytest.mark.slow   # > 5 s: several CLI runs
def test_tune_thresholds_multilabel_dataset(tmp_path, capsys):
    model = tiny_model(tmp_path / "ml.h5", head="sigmoid", seed=5)
    rng = np.random.default_rng(0)
    samples = []
    for i in range(24):
        labels = sorted({int(v) for v in rng.choice(3, size=rng.integers(1, 3), replace=False)})
        samples.append((f"s{i}", image_bytes(i), labels))
    data = write_split(tmp_path / "mlset", CLASSES, samples, multi_label=True)
    out = str(tmp_path / "ml.csv")
    assert run(["--model", model, str(data), "--out", out, "--format", "probs"], capsys)[0] == 0
    p = probs_of(out)
    probs = np.stack([p[f"s{i}"] for i in range(24)])
    y = np.zeros((24, 3))
    for i, (_, _, labels) in enumerate(samples):
        y[i, labels] = 1

    code, stdout, err = run(["--model", model, str(data), "--split", "val", "--tune-thresholds", "--tune-metric", "f2",
                             "--evaluate", "--out", out], capsys)
    assert code == 0, err
    tuned = load_meta(model)["thresholds"]
    side = json.loads((tmp_path / "ml.thresholds.json").read_text())
    assert side["thresholds"] == tuned and side["metric"] == "f2" and len(tuned) == 3
    from utils.detect.evaluate import macro_fbeta, predict_labels

    f_tuned = macro_fbeta(y, predict_labels(probs, True, tuned), 2.0)
    f_half = macro_fbeta(y, predict_labels(probs, True, 0.5), 2.0)
    assert f_tuned >= f_half
    assert os.path.isfile(tmp_path / "ml.eval" / "pr_curves.png")
    assert stdout.strip().splitlines()[-1].startswith("macro_f1 ")
    assert stdout.strip().splitlines()[-1].endswith("on 24 images")

    # the tuned thresholds are now the default for this model
    assert run(["--model", model, str(data), "--out", out, "--format", "binary"], capsys)[0] == 0
    rows = read_csv(out)[1:]
    want = (probs >= np.array(tuned)).astype(int)
    got = np.array([[int(v) for v in r[1:]] for r in sorted(rows, key=lambda r: int(r[0][1:]))])
    np.testing.assert_array_equal(got, want)


# ----------------------------------------------------------------------------- evaluation

def test_evaluate_folder_per_class(h5_model, images, tmp_path, capsys):
    out = str(tmp_path / "ev.csv")
    code, stdout, err = run(["--model", h5_model, str(images), "--evaluate", "--out", out], capsys)
    assert code == 0, err
    rows = read_csv(out)[1:]
    acc = np.mean([r[1] == r[0].split("/")[0] for r in rows])
    assert stdout.strip().splitlines()[-1] == f"accuracy {acc:.3f} on 9 images"
    assert "top5" in stdout and "macro_f1" in stdout
    per_class = read_csv(tmp_path / "ev.eval" / "per_class.csv")
    assert per_class[0][:4] == ["class", "precision", "recall", "f1"] and len(per_class) == 4
    assert os.path.getsize(tmp_path / "ev.eval" / "confusion_matrix.png") > 1000
    metrics = json.loads((tmp_path / "ev.eval" / "metrics.json").read_text())
    assert metrics["accuracy"] == pytest.approx(acc) and metrics["n"] == 9


def test_evaluate_dataset_split(h5_model, tmp_path, capsys):
    samples = [(f"r{j}{i}", image_bytes(10 * j + i), [j]) for j in range(len(CLASSES)) for i in range(2)]
    data = write_split(tmp_path / "ds", CLASSES, samples)
    code, stdout, err = run(["--model", h5_model, str(data), "--evaluate", "--out", str(tmp_path / "d.csv")], capsys)
    assert code == 0, err
    assert stdout.strip().splitlines()[-1].endswith("on 6 images")
    code, _, err = run(["--model", h5_model, str(data), "--split", "test"], capsys)
    assert code == 2 and "no 'test' split" in err


def test_evaluate_needs_labels(h5_model, images, capsys):
    code, _, err = run(["--model", h5_model, str(images / "red" / "red0.png"), "--evaluate"], capsys)
    assert code == 2 and "labelled" in err


# ----------------------------------------------------------------------------- bad input

def test_unreadable_image_is_skipped_and_run_goes_on(h5_model, tmp_path, capsys):
    d = tmp_path / "mixed"
    d.mkdir()
    (d / "a.png").write_bytes(image_bytes(1))
    (d / "b_bad.jpg").write_bytes(b"this is not an image at all")
    (d / "c.png").write_bytes(image_bytes(3)[:60])      # truncated PNG
    (d / "d.png").write_bytes(image_bytes(4))
    (d / "notes.txt").write_text("hello")
    out = str(tmp_path / "mixed.csv")
    code, stdout, err = run(["--model", h5_model, str(d), "--out", out, "--batch-size", "2"], capsys)
    assert code == 0, err
    assert [r[0] for r in read_csv(out)[1:]] == ["a", "d"]
    skipped = {r[0]: r[1] for r in read_csv(tmp_path / "mixed.skipped.csv")[1:]}
    assert set(skipped) == {"b_bad", "c", "notes"}
    # the same reasons the writer gives in skipped.csv (utils.image.prepare)
    assert skipped["b_bad"] == "not an image" and skipped["c"] == "truncated image"
    assert "unsupported file type" in skipped["notes"]
    assert "skipped b_bad" in err and "Traceback" not in err
    # a clean rerun removes the stale list
    assert run(["--model", h5_model, str(d / "a.png"), "--out", out], capsys)[0] == 0
    assert not os.path.exists(tmp_path / "mixed.skipped.csv")


@pytest.mark.parametrize("ext", [".h5", ".keras"])
def test_lambda_model_refused_unless_unsafe(images, tmp_path, capsys, ext):
    model = tiny_model(tmp_path / f"lam{ext}", lam=True)
    code, _, err = run(["--model", model, str(images)], capsys)
    assert code == 2 and err.startswith("error: refusing") and "--unsafe" in err and err.count("\n") == 1
    code, _, err = run(["--model", model, str(images), "--out", str(tmp_path / "u.csv"), "--unsafe"], capsys)
    assert code == 0, err


def test_bad_models_and_inputs_one_line(h5_model, images, tmp_path, capsys):
    notmodel = tmp_path / "fake.h5"
    notmodel.write_text("not a model")
    save_meta(str(notmodel), {"class_names": CLASSES, "input_size": [32, 32]})
    cases = [
        (["--model", str(notmodel), str(images)], "not a Keras model file"),
        (["--model", str(tmp_path / "nope.h5"), str(images)], "model not found"),
        (["--model", h5_model, str(tmp_path / "missing_dir")], "input not found"),
        (["--model", h5_model, str(tmp_path / "*.zzz")], "no files match"),
        (["--model", h5_model, str(tmp_path / "weird.xyz")], "input not found"),
    ]
    broken = tmp_path / "broken.keras"
    broken.write_bytes(b"PK\x03\x04 nonsense")
    cases.append((["--model", str(broken), str(images)], "not a Keras model file"))
    for argv, msg in cases:
        code, _, err = run(argv, capsys)
        assert code == 2, argv
        assert err.startswith("error: ") and msg in err and err.count("\n") == 1, err


def test_help_text_for_every_flag(capsys):
    with pytest.raises(SystemExit):
        detect.build_parser().parse_args(["--help"])
    out = capsys.readouterr().out
    for action in detect.build_parser()._actions:
        assert action.help, action.dest
        assert all(flag in out for flag in action.option_strings), action.dest


# ----------------------------------------------------------------------------- URL list

class _QuietFiles(QuietHandler, http.server.SimpleHTTPRequestHandler):
    pass


def test_url_list(h5_model, images, tmp_path, capsys):
    with serve(functools.partial(_QuietFiles, directory=str(images))) as server:
        base = server.base
        lst = tmp_path / "urls.txt"
        lst.write_text(f"id,url\n1,{base}/red/red0.png\n2,{base}/blue/blue1.png\n3,{base}/nothing.png\n")
        out = str(tmp_path / "u.csv")
        code, _, err = run(["--model", h5_model, str(lst), "--out", out, "--cache-dir", str(tmp_path / "cache")], capsys)
    assert code == 0, err
    assert [r[0] for r in read_csv(out)[1:]] == ["1", "2"]
    skipped = read_csv(tmp_path / "u.skipped.csv")[1:]
    assert [r[0] for r in skipped] == ["3"] and "download failed" in skipped[0][1]


# ----------------------------------------------------------------------------- real models

@pytest.mark.slow
def test_model_built_by_model_package(tmp_path, capsys):
    """A model as train.py builds it (registered Preprocess layer, densenet121 backbone) evaluates on a split."""
    from model import build
    from model.heads import output_names

    model = build.build_model("densenet121", 3, input_size=(32, 32), weights="none", class_names=CLASSES)
    path = str(tmp_path / "demo_densenet121.keras")
    model.save(path)
    save_meta(path, {"name": "demo_densenet121", "architecture": "densenet121", "class_names": CLASSES,
                     "input_size": [32, 32], "channels": 3, "planes": 1, "preprocess": "torch", "head": "softmax",
                     "multi_label": False, "outputs": output_names("softmax", 3), "thresholds": None})
    samples = [(f"r{j}{i}", image_bytes(10 * j + i), [j]) for j in range(len(CLASSES)) for i in range(2)]
    data = write_split(tmp_path / "demo", CLASSES, samples)
    code, stdout, err = run(["--model", path, str(data), "--split", "val", "--evaluate", "--tta", "2",
                             "--out", str(tmp_path / "p.csv")], capsys)
    assert code == 0, err
    assert stdout.strip().splitlines()[-1].startswith("accuracy ") and stdout.strip().endswith("on 6 images")


def test_multi_plane_dataset(tmp_path, capsys):
    """6 grayscale planes per record (microscopy) feed a 6-channel model; plain images are refused."""
    model = tiny_model(tmp_path / "six.h5", channels=6)

    def plane(v):
        return encode_image(np.full((40, 40), v, np.uint8), "png")

    samples = [(f"w{i}", [plane(10 * i + c) for c in range(6)], [i % 3]) for i in range(4)]
    data = write_split(tmp_path / "six", CLASSES, samples, planes=6)
    out = str(tmp_path / "six.csv")
    code, _, err = run(["--model", model, str(data), "--out", out, "--format", "probs"], capsys)
    assert code == 0, err
    assert [r[0] for r in read_csv(out)[1:]] == ["w0", "w1", "w2", "w3"]
    png = tmp_path / "x.png"
    png.write_bytes(image_bytes(1))
    code, _, err = run(["--model", model, str(png)], capsys)
    assert code == 2 and "6 planes" in err
