"""utils/train/checkpoint.py (with callbacks.EpochEnd) on a tiny hand-built model and in-memory data.

The resume logic is checked in-process here (fast, exact): train 2 epochs, keep
the state file, rebuild everything, restore, train on; the result must match an
uninterrupted run bit for bit (weights, optimizer iteration counter, LR per
epoch). The CLI kill -9 test lives in tests/train/test_cli.py.
"""
import csv
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from utils.errors import UsageError
from utils.train import config, optim
from utils.train.callbacks import EpochEnd
from utils.train.checkpoint import (Checkpoint, load_state, read_csv_rows, restore_model, rows_up_to,
                                    save_model_files, save_state, write_csv_rows)


def test_csv_rows_exactly_once(tmp_path):
    path = str(tmp_path / "e.csv")
    rows = [{"epoch": 0, "loss": 1.0}, {"epoch": 1, "loss": 0.5}, {"epoch": 2, "loss": 0.4}]
    write_csv_rows(path, rows)
    kept = rows_up_to(read_csv_rows(path), 2)
    assert [int(r["epoch"]) for r in kept] == [0, 1]
    write_csv_rows(path, kept + [{"epoch": 2, "loss": 0.3, "val_acc": 0.9}])
    with open(path) as f:
        back = list(csv.DictReader(f))
    assert [r["epoch"] for r in back] == ["0", "1", "2"] and back[2]["val_acc"] == "0.9"


# ----------------------------------------------------------------- resume, in process

N, FEAT, CLASSES = 32, 6, 3


def tiny_model():
    inp = keras.Input((FEAT,), name="image")
    h = keras.layers.Dense(8, activation="relu", name="backbone_fc")(inp)
    h = keras.layers.BatchNormalization(name="bn")(h)
    out = keras.layers.Dense(CLASSES, activation="softmax", name="probs")(h)
    return keras.Model(inp, out)


def tiny_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, FEAT)).astype("float32")
    y = np.eye(CLASSES, dtype="float32")[rng.integers(0, CLASSES, N)]
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(8).repeat()


def fit_epochs(tmp_path, tag, start, end, total, resume=False, accum=1, schedule="cosine"):
    """Fit epochs start..end of a `total`-epoch run; returns (model, run record, rows)."""
    keras.utils.set_random_seed(1)
    cfg = dict(config.defaults(), data="d", schedule=schedule, lr_warmup_epochs=1.0, accum_steps=accum,
               optimizer="sgd", lr=0.1, plateau_patience=1, resume=resume)
    model = tiny_model()
    scale = keras.Variable(1.0, trainable=False)
    optimizer = optim.make_optimizer(cfg, optim.make_schedule(cfg, cfg["lr"], total, 4, scale=scale))
    model.compile(optimizer=optimizer, loss="categorical_crossentropy", metrics=["accuracy"])
    csv_path = str(tmp_path / f"{tag}.csv")
    checkpoint = Checkpoint(str(tmp_path / f"{tag}.resume"), csv_path, cfg)
    checkpoint.load()
    checkpoint.restore(model, scale)
    checkpoint.restore_phase_optimizer("main", model, optimizer)
    checkpoint.enter_phase("main", scale)
    cb = EpochEnd(checkpoint=checkpoint, cfg=cfg, monitor="val_accuracy", mode="max",
                  best_base=str(tmp_path / f"{tag}.best"), scale=scale)
    data = tiny_data()
    model.fit(data, epochs=end, initial_epoch=start, steps_per_epoch=4, validation_data=data, shuffle=False,
              validation_steps=2, callbacks=[cb], verbose=0)
    return model, checkpoint.run, read_csv_rows(csv_path)


@pytest.mark.parametrize("accum, schedule", [(1, "cosine"), (2, "plateau")])
def test_resume_matches_uninterrupted_run(tmp_path, accum, schedule):
    full, run_full, rows_full = fit_epochs(tmp_path, "full", 0, 4, 4, accum=accum, schedule=schedule)
    fit_epochs(tmp_path, "cut", 0, 2, 4, accum=accum, schedule=schedule)
    saved = load_state(str(tmp_path / "cut.resume"))
    assert saved["run"]["epoch"] == 2 and saved["run"]["phase"] == "main"
    # a stray row of an epoch that died mid-way must not survive the resume
    write_csv_rows(str(tmp_path / "cut.csv"), read_csv_rows(str(tmp_path / "cut.csv")) + [{"epoch": 2, "loss": 9}])
    resumed, run_res, rows_res = fit_epochs(tmp_path, "cut", 2, 4, 4, resume=True, accum=accum, schedule=schedule)

    assert [int(r["epoch"]) for r in rows_res] == [0, 1, 2, 3]
    for a, b in zip(rows_full, rows_res):
        assert float(a["lr"]) == pytest.approx(float(b["lr"]), rel=1e-6)
        assert float(a["loss"]) == pytest.approx(float(b["loss"]), rel=1e-5)
    assert run_res["iterations"] == run_full["iterations"] == 16 // accum
    assert optim.iterations(resumed.optimizer) == optim.iterations(full.optimizer)
    for a, b in zip(full.weights, resumed.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)
    assert run_full["best_epoch"] == run_res["best_epoch"] and run_full["lr_scale"] == run_res["lr_scale"]
    if schedule == "plateau":  # the plateau rule fired, and its scale survived the resume
        assert run_res["lr_scale"] < 1.0
    assert os.path.isfile(str(tmp_path / "cut.best.h5")) and os.path.isfile(str(tmp_path / "cut.best.keras"))


def test_resume_with_other_settings_is_refused(tmp_path, capsys):
    cfg = dict(config.defaults(), data="d", resume=True)
    Checkpoint(str(tmp_path / "r.resume"), str(tmp_path / "e.csv"), cfg).load()
    assert "note: no resume state in" in capsys.readouterr().err
    m = tiny_model()
    opt = keras.optimizers.SGD(0.1)
    m.compile(optimizer=opt, loss="mse")
    opt.build(m.trainable_variables)
    save_state(str(tmp_path / "r.resume"), m, opt, {"epoch": 1, "config": dict(cfg, lr=0.5)})
    with pytest.raises(UsageError, match=r"--resume with different settings \(lr\)"):
        Checkpoint(str(tmp_path / "r.resume"), str(tmp_path / "e.csv"), cfg).load()


def test_resume_state_mismatch_is_a_usage_error(tmp_path):
    m = tiny_model()
    opt = keras.optimizers.SGD(0.1)
    m.compile(optimizer=opt, loss="mse")
    opt.build(m.trainable_variables)
    save_state(str(tmp_path), m, opt, {"epoch": 1})
    other = keras.Sequential([keras.Input((FEAT,)), keras.layers.Dense(2)])
    with pytest.raises(UsageError, match="does not fit"):
        restore_model(other, load_state(str(tmp_path)))


def test_saved_files_load_and_predict_the_same(tmp_path):
    m = tiny_model()
    m.compile(optimizer="adam", loss="categorical_crossentropy")
    x = np.random.default_rng(1).normal(size=(4, FEAT)).astype("float32")
    files = save_model_files(m, str(tmp_path / "m"))
    assert [os.path.basename(f) for f in files] == ["m.h5", "m.keras"]
    for f in files:
        loaded = keras.models.load_model(f)
        np.testing.assert_allclose(loaded.predict(x, verbose=0), m.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
    assert not [p for p in os.listdir(tmp_path) if ".tmp" in p]
