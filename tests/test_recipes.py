"""Every recipe in configs/ end to end: raw data in the competition's shape -> generate_dataset.py
-> train.py --config configs/NAME.yaml -> detect.py -> the submission CSV in the competition's format.

The commands are the README's "Recipes" section, on miniature raw data each test makes. The
recipe's own backbone, head, losses, class weights, folds, trained layers, optimizer and
schedule, augmentation, mixed precision, TTA and thresholds run; overridden are only sizes (the
image size: the backbone's registry minimum, model/registry.py; the batch; and the weights
file: --weights none, as ImageNet weights are a download and CI has no network), epochs and
steps: one epoch of 2 steps, so no frozen warm-up epoch (--warmup-epochs 0 is an epoch count:
the warm-up phase would trace the whole train step a second time; the phase switch itself is
tested on tinynet in tests/train).

Time: a real backbone's train step takes 10-60 s to trace on 2 busy cores, so each test is
marked slow; the times measured are in the README's Recipes section.
"""
import csv
import os

import numpy as np
import pytest

from tests.conftest import ROOT, QuietHandler, encode_image, random_image, serve, write_image

RECIPES = ("cdiscount", "imet2019", "jd_fashion", "recursion", "hw1")
SMALL = ["--weights", "none", "--batch-size", "8", "--epochs", "1", "--warmup-epochs", "0", "--steps-per-epoch", "2"]


@pytest.fixture
def in_tmp(monkeypatch, tmp_path):
    """cwd = tmp_path (log/NAME and model_save/ land there); the float32 policy restored after."""
    monkeypatch.chdir(tmp_path)
    yield
    import keras

    keras.mixed_precision.set_global_policy("float32")  # imet2019 trains in mixed precision


def config(name: str) -> str:
    return os.path.join(ROOT, "configs", f"{name}.yaml")


def cli(main, argv):
    from utils.errors import run_cli

    code = run_cli(main, [str(a) for a in argv])
    assert code == 0, f"{main.__module__} {' '.join(map(str, argv))} exited {code}"


def generate(*argv):
    import generate_dataset

    cli(generate_dataset.main, [*argv, "--no-progress"])


def train(name, data, out, *more):
    """train.py --config NAME.yaml with only sizes, epochs and steps overridden (module docstring)."""
    import train as train_script
    from model import registry
    from utils.train import config as train_config

    recipe = train_config.load_yaml(config(name))
    size = registry.get(recipe["model"]).min_size
    cli(train_script.main, ["--config", config(name), "--data", data, "--out", out, *SMALL, "--image-size", size, *more])
    from model.meta import load_meta

    meta = load_meta(out)  # what was trained: the recipe's backbone and head, at the smallest size
    assert (meta["architecture"], meta["input_size"]) == (recipe["model"], [size, size]), name
    assert meta["head"] == recipe["head"] and meta["config"]["augment"] == recipe["augment"], name


def detect(*argv):
    import detect as detect_script

    cli(detect_script.main, [*argv, "--no-progress"])


def read_csv(path):
    with open(path, newline="") as f:
        header, *rows = list(csv.reader(f))
    return header, rows


def jpeg(seed, size=40):
    return encode_image(random_image(seed, size, size), "jpeg", quality=90)


def test_every_recipe_loads_and_has_a_comment_per_setting():
    from utils.train import config as train_config

    for name in RECIPES:
        values = train_config.load_yaml(config(name))  # unknown keys or bad values raise
        assert values["model"] and values["augment"], name
        lines = [ln for ln in open(config(name)) if ln.strip() and not ln.lstrip().startswith("#")]
        uncommented = [ln.strip() for ln in lines if "#" not in ln]
        assert not uncommented, f"{name}: settings without a comment: {uncommented}"
    assert sorted(f[:-5] for f in os.listdir(os.path.join(ROOT, "configs"))) == sorted(RECIPES)


# ----------------------------------------------------------------- Cdiscount: BSON dump, per-product CSV

@pytest.mark.slow
def test_cdiscount(in_tmp, tmp_path):
    import bson

    cats = ["1000010653", "1000010667", "1000004079"]
    (tmp_path / "category_names.csv").write_text(
        "category_id,category_level1,category_level2,category_level3\n"
        + "".join(f'{c},"L1 {c}","L2, {c}",L3\n' for c in cats))
    with open(tmp_path / "train.bson", "wb") as f:
        for pid in range(24):
            f.write(bson.encode({"_id": pid, "category_id": int(cats[pid % 3]),
                                 "imgs": [{"picture": jpeg(pid * 4 + i)} for i in range(1 + pid % 2)]}))
    with open(tmp_path / "test.bson", "wb") as f:
        for pid in (1000, 1001, 1002):
            f.write(bson.encode({"_id": pid, "imgs": [{"picture": jpeg(pid + i)} for i in range(2)]}))

    generate("train.bson", "--categories", "category_names.csv", "--out", "data/cdiscount", "--val-fraction", "0.25")
    train("cdiscount", "data/cdiscount", "model_save/cdiscount.h5")
    detect("--model", "model_save/cdiscount.best.h5", "test.bson", "--format", "cdiscount", "--tta", "2",
           "--out", "submission.csv")
    header, rows = read_csv("submission.csv")
    assert header == ["_id", "category_id"]
    assert [r[0] for r in rows] == ["1000", "1001", "1002"] and all(r[1] in cats for r in rows)


# ----------------------------------------------------------------- iMet 2019: flat folder + CSV, F2 thresholds

@pytest.mark.slow
def test_imet2019(in_tmp, tmp_path):
    names = ["culture::a", "culture::b", "tag::c", "tag::d", "tag::e"]
    (tmp_path / "labels.csv").write_text("attribute_id,attribute_name\n"
                                         + "".join(f"{i},{n}\n" for i, n in enumerate(names)))
    rows = []
    for i in range(30):
        iid = f"{i:04x}aa"
        write_image(tmp_path / "train" / f"{iid}.png", random_image(i, 40, 40))
        rows.append(f"{iid},{i % 2} {2 + i % 3}\n")
    (tmp_path / "train.csv").write_text("id,attribute_ids\n" + "".join(rows))
    for i in range(3):
        write_image(tmp_path / "test" / f"t{i}.png", random_image(100 + i, 40, 40))

    generate("train", "--labels", "train.csv", "--label-names", "labels.csv", "--out", "data/imet",
             "--folds", "5", "--val-fraction", "0.2")
    train("imet2019", "data/imet", "model_save/imet.h5")
    detect("--model", "model_save/imet.best.h5", "data/imet", "--split", "val", "--tune-thresholds",
           "--tune-metric", "f2", "--out", "log/imet_val.csv")
    assert os.path.isfile("model_save/imet.thresholds.json")
    detect("--model", "model_save/imet.best.h5", "test", "--format", "multilabel", "--ids", "--at-least-one",
           "--tta", "2", "--out", "submission.csv")
    header, rows = read_csv("submission.csv")
    assert header == ["id", "attribute_ids"]
    assert sorted(r[0] for r in rows) == ["t0", "t1", "t2"]
    for r in rows:
        ids = [int(x) for x in r[1].split()]
        assert ids and all(0 <= x < len(names) for x in ids)


# ----------------------------------------------------------------- JD fashion: URL list, 13 multi-hot labels

class _Images(QuietHandler):
    def do_GET(self):
        body = self.server.images.get(self.path)
        self.send_response(200 if body else 404)
        self.send_header("Content-Type", "image/jpeg")
        self.end_headers()
        self.wfile.write(body or b"")


@pytest.fixture
def image_server():
    """JPEGs at http://127.0.0.1:PORT/img/<n>.jpg, stopped after the test."""
    with serve(_Images, images={f"/img/{n}.jpg": jpeg(n) for n in range(40)}) as srv:
        yield srv


@pytest.mark.slow
def test_jd_fashion(in_tmp, tmp_path, image_server):
    names = [f"attr{k}" for k in range(13)]
    (tmp_path / "names.txt").write_text("\n".join(names) + "\n")
    rng = np.random.default_rng(0)
    lines = []
    for n in range(30):
        hot = (rng.random(13) < 0.3).astype(int)
        hot[n % 13] = 1  # every attribute has positives (balanced class weights need them)
        lines.append(f"j{n},{image_server.base}/img/{n}.jpg," + ",".join(map(str, hot)))
    (tmp_path / "jd_train.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "jd_test.txt").write_text("".join(f"q{n},{image_server.base}/img/{n}.jpg\n" for n in (31, 32, 33)))

    generate("jd_train.txt", "--label-names", "names.txt", "--out", "data/jd", "--concurrency", "4",
             "--val-fraction", "0.2")
    train("jd_fashion", "data/jd", "model_save/jd.h5")
    detect("--model", "model_save/jd.best.h5", "jd_test.txt", "--format", "binary", "--tta", "2", "--out", "jd.csv")
    header, rows = read_csv("jd.csv")
    assert header == ["id"] + names
    assert [r[0] for r in rows] == ["q31", "q32", "q33"]
    assert all(len(r) == 14 and set(r[1:]) <= {"0", "1"} for r in rows)


# ----------------------------------------------------------------- Recursion: 6 grayscale planes per sample

@pytest.mark.slow
def test_recursion(in_tmp, tmp_path):
    channels = ",".join(f"w{c}" for c in range(1, 7))

    def sample(folder, sid, seed):
        for c in range(1, 7):
            write_image(tmp_path / folder / f"{sid}_w{c}.png", random_image(seed * 7 + c, 40, 40, 1))

    rows = []
    for i in range(24):
        sid = f"HEPG2-01_1_B{i:02d}"
        sample("train", sid, i)
        rows.append(f"{sid},{i % 3}\n")
    (tmp_path / "labels.csv").write_text("id_code,sirna\n" + "".join(rows))
    for i in range(3):
        sample("test", f"HEPG2-08_1_C{i:02d}", 100 + i)

    generate("train", "--channels", channels, "--labels", "labels.csv", "--out", "data/rxrx", "--max-side", "256",
             "--val-fraction", "0.25")
    train("recursion", "data/rxrx", "model_save/rxrx.h5")
    generate("test", "--channels", channels, "--out", "data/rxrx_test", "--max-side", "256")
    detect("--model", "model_save/rxrx.best.h5", "data/rxrx_test", "--split", "test", "--format", "label",
           "--tta", "4", "--out", "submission.csv")
    lines = open("submission.csv").read().splitlines()
    assert lines[0] == "id,label"
    with open("submission.csv", "w") as f:  # the README's sed: the competition's header
        f.write("\n".join(["id_code,sirna", *lines[1:]]) + "\n")
    header, rows = read_csv("submission.csv")
    assert header == ["id_code", "sirna"]
    assert sorted(r[0] for r in rows) == [f"HEPG2-08_1_C{i:02d}" for i in range(3)]
    assert all(r[1] in {"0", "1", "2"} for r in rows)


# ----------------------------------------------------------------- hw1: a folder per class

@pytest.mark.slow
def test_hw1(in_tmp, tmp_path):
    classes = ["cat", "dog", "fox"]
    for j, c in enumerate(classes):
        for i in range(10):
            write_image(tmp_path / "hw1" / "train" / c / f"{c}{i}.jpg", random_image(10 * j + i, 40, 40))
    for i in range(3):
        write_image(tmp_path / "hw1" / "test" / f"img{i}.jpg", random_image(200 + i, 40, 40))

    generate("hw1/train", "--out", "data/hw1", "--val-fraction", "0.2")
    train("hw1", "data/hw1", "model_save/hw1.h5")
    detect("--model", "model_save/hw1.best.h5", "hw1/test", "--format", "label", "--tta", "2",
           "--out", "submission.csv")
    header, rows = read_csv("submission.csv")
    assert header == ["id", "label"]
    assert sorted(r[0] for r in rows) == ["img0", "img1", "img2"] and all(r[1] in classes for r in rows)
