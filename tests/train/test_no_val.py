"""Training without validation (the final fit): a dataset without val, --val-split none,
--train-on-val; and generate_dataset.py's default --val-fraction 0.1 that gives most
sources a val split in the first place."""
import csv
import json
import os

import pytest

import generate_dataset
from tests.conftest import random_image, write_image
from tests.train.test_cli import data, quick, run_main, shapes_dataset, tiny  # noqa: F401 - fixtures


def no_best_files(name):
    return sorted(os.listdir("model_save")) == [f"{name}.config.yaml", f"{name}.h5", f"{name}.json", f"{name}.keras"]


@pytest.mark.slow
def test_dataset_without_val_trains_on_the_loss_and_saves_the_last_epoch(tiny, tmp_path, capsys):
    import keras

    noval = shapes_dataset(str(tmp_path / "noval"), val=False)
    code, out, err = run_main(quick(noval, "--epochs", "2", "--early-stop", "5", "--schedule", "plateau",
                                    "--out", "model_save/nv.h5"), capsys)
    assert code == 0, err
    notes = [line for line in err.splitlines() if "training without validation" in line]
    assert len(notes) == 1 and "has no val records" in notes[0] and "model_save/nv.h5 (no .best)" in notes[0]
    assert no_best_files("nv")
    rows = list(csv.DictReader(open("log/nv/epochs.csv")))
    assert len(rows) == 2 and not any(k.startswith("val_") for k in rows[0])
    last = out.strip().splitlines()[-1]
    assert last == f"loss {float(rows[-1]['loss']):.4f} (last epoch 2, no validation)", last
    meta = json.load(open("model_save/nv.json"))
    assert meta["history"]["validation"] is False and meta["history"]["val_metric"] is None
    assert meta["history"]["epochs_run"] == 2
    keras.models.load_model("model_save/nv.h5")


@pytest.mark.slow
def test_train_on_val_adds_the_val_records_and_val_split_none_drops_them(tiny, data, capsys):
    # 30 train + 12 val records, batch 8: one pass over both is ceil(42 / 8) = 6 steps
    argv = ["--data", data, "--model", "tinynet", "--weights", "none", "--image-size", "32", "--batch-size", "8",
            "--epochs", "1"]
    code, out, err = run_main(argv + ["--train-on-val", "--out", "model_save/tv.h5"], capsys)
    assert code == 0, err
    assert "--train-on-val: training on train + val (12 val records)" in err
    assert json.load(open("model_save/tv.json"))["history"]["iterations"] == 6
    code, out, err = run_main(argv + ["--val-split", "none", "--steps-per-epoch", "1", "--out", "model_save/vn.h5"],
                              capsys)
    assert code == 0, err
    assert "note: --val-split none: training without validation" in err
    assert "val_" not in open("log/vn/epochs.csv").readline()
    assert not os.path.exists("model_save/vn.best.h5")


def test_mix_splits_takes_each_split_at_its_share():
    import tensorflow as tf

    from utils.train.data import mix_splits

    a = tf.data.Dataset.from_tensors(0).repeat()
    b = tf.data.Dataset.from_tensors(1).repeat()
    drawn = list(mix_splits(a, b, 30, 12).take(42 * 3).as_numpy_iterator())
    assert sum(drawn) == 12 * 3  # exactly n_b of every n_a + n_b steps
    assert max(len(run) for run in "".join(map(str, drawn)).split("1")) <= 3  # spread, not in one block


def test_without_validation_reasons():
    from utils.train.data import without_validation

    cfg = {"train_on_val": False, "val_split": "auto", "data": "data/x", "fold": None}
    assert without_validation(cfg, 10) is None
    assert without_validation(cfg, 0) == "data/x has no val records"
    assert without_validation(dict(cfg, val_split="none"), 10) == "--val-split none"
    assert without_validation(dict(cfg, train_on_val=True), 10).startswith("--train-on-val: training on train + val")


def test_without_validation_the_training_loss_is_the_monitor():
    from utils.train.callbacks import pick_monitor

    assert pick_monitor(["accuracy"], "softmax", validate=False) == ("loss", "min")
    assert pick_monitor(["accuracy"], "softmax") == ("val_accuracy", "max")


def folder(root, layout):
    """root/<class>/ images, or root/train|val/<class>/ when layout == "splits"."""
    splits = ("train", "val") if layout == "splits" else ("",)
    for split in splits:
        for c in ("cat", "dog"):
            for j in range(10):
                write_image(os.path.join(root, split, c, f"{c}{split}{j}.png"), random_image(j, 24, 24))
    return str(root)


def build(argv, capsys):
    assert generate_dataset.main([*argv, "--no-progress"]) == 0
    err = capsys.readouterr().err
    return json.load(open(os.path.join(argv[argv.index("--out") + 1], "manifest.json"))), err


def test_generate_defaults_to_a_tenth_in_val(tmp_path, capsys):
    src = folder(tmp_path / "src", "classes")
    man, err = build([src, "--out", str(tmp_path / "d")], capsys)
    assert man["splits"]["val"]["count"] == 2 and man["splits"]["train"]["count"] == 18
    assert man["splits"]["val"]["class_counts"] == [1, 1]  # stratified
    assert "val is 10% of the labelled samples by default" in err and "--val-fraction 0 builds none" in err

    man, err = build([src, "--out", str(tmp_path / "none"), "--val-fraction", "0"], capsys)
    assert list(man["splits"]) == ["train"] and "by default" not in err
    man, err = build([src, "--out", str(tmp_path / "kf"), "--folds", "2"], capsys)
    assert "val" not in man["splits"]  # K-fold: the folds are the validation sets


def test_generate_keeps_the_source_own_val_split(tmp_path, capsys):
    man, err = build([folder(tmp_path / "src", "splits"), "--out", str(tmp_path / "d")], capsys)
    assert man["splits"]["val"]["count"] == 20 and man["splits"]["train"]["count"] == 20
    assert "by default" not in err
