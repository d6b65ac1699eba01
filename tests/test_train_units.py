"""utils/config.py and utils/training.py on a tiny hand-built model and in-memory data.

The resume logic is checked in-process here (fast, exact): train 2 epochs, keep
the state file, rebuild everything, restore, train on; the result must match an
uninterrupted run bit for bit (weights, optimizer iteration counter, LR per
epoch). The CLI kill -9 test lives in test_train_cli.py.
"""
import csv
import os

import numpy as np
import pytest

from utils.train import config as C
from utils.errors import UsageError


# ----------------------------------------------------------------- config


def parse(argv):
    return C.resolve(C.build_parser("t").parse_args(argv))


def test_defaults_yaml_and_flags_precedence(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("data: data/x\nepochs: 7\nlr: 0.05\nbatch-size: 8\nfocal: true\n")
    cfg = parse(["--config", str(y), "--lr", "0.2"])
    assert cfg["epochs"] == 7  # from YAML
    assert cfg["lr"] == 0.2  # flag beats YAML
    assert cfg["batch_size"] == 8 and cfg["focal"] is True
    assert cfg["optimizer"] == C.OPTIONS["optimizer"].default  # default untouched
    assert parse(["--config", str(y), "--no-focal"])["focal"] is False
    y.write_text("data: d\naugment:\n  rrc: {scale: [0.5, 1.0]}\n  flip:\n")
    assert C.augment_list(parse(["--config", str(y)])["augment"]) == {"rrc": {"scale": [0.5, 1.0]}, "flip": None}


def test_yaml_unknown_key_and_bad_values(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("data: d\nlearning_rate: 0.1\n")
    with pytest.raises(UsageError, match="unknown key 'learning_rate'"):
        parse(["--config", str(y)])
    y.write_text("data: d\nepochs: many\n")
    with pytest.raises(UsageError, match="epochs .* must be int"):
        parse(["--config", str(y)])
    y.write_text("data: d\noptimizer: lion\n")
    with pytest.raises(UsageError, match="one of sgd, adam, adamw"):
        parse(["--config", str(y)])


@pytest.mark.parametrize("argv, msg", [
    ([], "--data is required"),
    (["--data", "d", "--epochs", "0"], "--epochs must be >= 1"),
    (["--data", "d", "--dropout", "1.5"], "--dropout must be in"),
    (["--data", "d", "--epochs", "3", "--warmup-epochs", "3"], "must be below --epochs"),
    (["--data", "d", "--warmup-epochs", "1", "--layers", "heads"], "needs --layers all"),
    (["--data", "d", "--layers", "conv[("], "not heads, all or a valid regex"),
])
def test_validation_messages(argv, msg):
    with pytest.raises(UsageError, match=msg):
        parse(argv)


def test_every_flag_has_help():
    p = C.build_parser("t")
    for a in p._actions:
        if a.dest != "help":
            assert a.help and len(a.help) > 10, a.dest


def test_save_yaml_roundtrip(tmp_path):
    cfg = parse(["--data", "d", "--augment", "flip,rrc"])
    path = C.save_yaml(cfg, str(tmp_path / "x.config.yaml"))
    back = C.load_yaml(path) if False else __import__("yaml").safe_load(open(path))
    assert back == cfg
    assert C.augment_list(cfg["augment"]) == ["flip", "rrc"] and C.augment_list("none") == []
    assert C.resume_mismatch(cfg, dict(cfg, early_stop=3)) == []
    assert C.resume_mismatch(cfg, dict(cfg, lr=9.0)) == ["lr"]


# ----------------------------------------------------------------- schedule


def test_schedule_warmup_cosine_step_plateau():
    import keras

    from utils.train.training import WarmupSchedule

    def lr(s, step):
        return float(keras.ops.convert_to_numpy(s(step)))

    cos = WarmupSchedule(1.0, total_steps=110, warmup_steps=10, kind="cosine")
    assert lr(cos, 0) == pytest.approx(0.1) and lr(cos, 9) == pytest.approx(1.0)
    assert lr(cos, 60) == pytest.approx(0.5, abs=1e-6) and lr(cos, 110) == pytest.approx(0.0, abs=1e-7)
    step = WarmupSchedule(1.0, total_steps=100, kind="step", step_every=30, step_gamma=0.1)
    assert [round(lr(step, s), 6) for s in (0, 29, 30, 61, 95)] == [1.0, 1.0, 0.1, 0.01, 0.001]
    scale = keras.Variable(1.0, trainable=False)
    flat = WarmupSchedule(2.0, total_steps=10, kind="plateau", scale=scale)
    assert lr(flat, 5) == pytest.approx(2.0)
    scale.assign(0.25)
    assert lr(flat, 5) == pytest.approx(0.5)


def test_optimizer_options():
    from utils.train.training import make_optimizer

    base = C.defaults()
    opt = make_optimizer(dict(base, optimizer="sgd", momentum=0.8, accum_steps=4, ema=True), 0.1)
    assert type(opt).__name__ == "SGD" and opt.momentum == 0.8
    assert opt.gradient_accumulation_steps == 4 and opt.use_ema
    opt = make_optimizer(dict(base, optimizer="adamw"), 0.1)
    assert opt.weight_decay == pytest.approx(0.004)
    assert make_optimizer(dict(base, optimizer="adam"), 0.1).weight_decay is None


def test_strategy_and_chief(monkeypatch):
    import tensorflow as tf

    from utils.train import training as T

    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert T.is_chief() and not T.is_distributed(T.make_strategy("auto"))
    assert T.make_strategy("none") is tf.distribute.get_strategy()
    with pytest.raises(UsageError, match="needs TF_CONFIG"):
        T.make_strategy("multiworker")
    cluster = {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}
    assert T.is_chief({"cluster": cluster, "task": {"type": "worker", "index": 0}})
    assert not T.is_chief({"cluster": cluster, "task": {"type": "worker", "index": 1}})
    assert not T.is_chief({"cluster": dict(cluster, chief=["h:3"]), "task": {"type": "worker", "index": 0}})


def test_csv_rows_exactly_once(tmp_path):
    from utils.train.training import read_csv_rows, rows_up_to, write_csv_rows

    path = str(tmp_path / "e.csv")
    rows = [{"epoch": 0, "loss": 1.0}, {"epoch": 1, "loss": 0.5}, {"epoch": 2, "loss": 0.4}]
    write_csv_rows(path, rows)
    kept = rows_up_to(read_csv_rows(path), 2)
    assert [int(r["epoch"]) for r in kept] == [0, 1]
    write_csv_rows(path, kept + [{"epoch": 2, "loss": 0.3, "val_acc": 0.9}])
    with open(path) as f:
        back = list(csv.DictReader(f))
    assert [r["epoch"] for r in back] == ["0", "1", "2"] and back[2]["val_acc"] == "0.9"


def test_monitor_choice():
    from utils.train.training import improved, metric_names, pick_monitor

    assert pick_monitor(metric_names(["accuracy", "top5"]), "softmax") == ("val_accuracy", "max")
    assert pick_monitor(metric_names({"c0": ["auc"]}), "per-class") == ("val_loss", "min")
    assert improved(0.5, None, "max") and not improved(0.4, 0.5, "max") and improved(0.4, 0.5, "min")
    assert not improved(float("nan"), None, "max")


# ----------------------------------------------------------------- resume, in process

N, FEAT, CLASSES = 32, 6, 3


def tiny_model():
    import keras

    inp = keras.Input((FEAT,), name="image")
    h = keras.layers.Dense(8, activation="relu", name="backbone_fc")(inp)
    h = keras.layers.BatchNormalization(name="bn")(h)
    out = keras.layers.Dense(CLASSES, activation="softmax", name="probs")(h)
    return keras.Model(inp, out)


def tiny_data():
    import tensorflow as tf

    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, FEAT)).astype("float32")
    y = np.eye(CLASSES, dtype="float32")[rng.integers(0, CLASSES, N)]
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(8).repeat()


def fit_epochs(tmp_path, tag, start, end, total, saved=None, accum=1, schedule="cosine"):
    """Fit epochs start..end of a `total`-epoch run; returns (model, run, rows)."""
    import keras

    from utils.train import training as T

    keras.utils.set_random_seed(1)
    cfg = dict(C.defaults(), data="d", schedule=schedule, lr_warmup_epochs=1.0, accum_steps=accum,
               optimizer="sgd", lr=0.1, plateau_patience=1)
    model = tiny_model()
    scale = keras.Variable(1.0, trainable=False)
    optimizer = T.make_optimizer(cfg, T.make_schedule(cfg, cfg["lr"], total, 4, scale=scale))
    model.compile(optimizer=optimizer, loss="categorical_crossentropy", metrics=["accuracy"])
    run = {"epoch": 0, "phase": "main", "best": None, "best_epoch": None, "wait": 0, "plateau_wait": 0,
           "lr_scale": 1.0, "stopped": False}
    csv_path = str(tmp_path / f"{tag}.csv")
    rows = []
    if saved:
        run.update(saved["run"])
        T.restore_model(model, saved)
        T.restore_optimizer(model, optimizer, saved)
        scale.assign(run["lr_scale"])
        rows = T.rows_up_to(T.read_csv_rows(csv_path), run["epoch"])
    cb = T.EpochEnd(run=run, cfg=cfg, monitor="val_accuracy", mode="max", csv_path=csv_path, rows=rows,
                    best_base=str(tmp_path / f"{tag}.best"), resume_dir=str(tmp_path / f"{tag}.resume"),
                    scale=scale)
    data = tiny_data()
    model.fit(data, epochs=end, initial_epoch=start, steps_per_epoch=4, validation_data=data, shuffle=False,
              validation_steps=2, callbacks=[cb], verbose=0)
    return model, run, T.read_csv_rows(csv_path)


@pytest.mark.parametrize("accum, schedule", [(1, "cosine"), (2, "plateau")])
def test_resume_matches_uninterrupted_run(tmp_path, accum, schedule):
    from utils.train import training as T

    full, run_full, rows_full = fit_epochs(tmp_path, "full", 0, 4, 4, accum=accum, schedule=schedule)
    fit_epochs(tmp_path, "cut", 0, 2, 4, accum=accum, schedule=schedule)
    saved = T.load_state(str(tmp_path / "cut.resume"))
    assert saved["run"]["epoch"] == 2
    # a stray row of an epoch that died mid-way must not survive the resume
    T.write_csv_rows(str(tmp_path / "cut.csv"), T.read_csv_rows(str(tmp_path / "cut.csv")) + [{"epoch": 2, "loss": 9}])
    resumed, run_res, rows_res = fit_epochs(tmp_path, "cut", 2, 4, 4, saved=saved, accum=accum, schedule=schedule)

    assert [int(r["epoch"]) for r in rows_res] == [0, 1, 2, 3]
    for a, b in zip(rows_full, rows_res):
        assert float(a["lr"]) == pytest.approx(float(b["lr"]), rel=1e-6)
        assert float(a["loss"]) == pytest.approx(float(b["loss"]), rel=1e-5)
    assert run_res["iterations"] == run_full["iterations"] == 16 // accum
    assert T.iterations(resumed.optimizer) == T.iterations(full.optimizer)
    for a, b in zip(full.weights, resumed.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)
    assert run_full["best_epoch"] == run_res["best_epoch"] and run_full["lr_scale"] == run_res["lr_scale"]
    if schedule == "plateau":  # the plateau rule fired, and its scale survived the resume
        assert run_res["lr_scale"] < 1.0
    assert os.path.isfile(str(tmp_path / "cut.best.h5")) and os.path.isfile(str(tmp_path / "cut.best.keras"))


def test_resume_state_mismatch_is_a_usage_error(tmp_path):
    import keras

    from utils.train import training as T

    m = tiny_model()
    opt = keras.optimizers.SGD(0.1)
    m.compile(optimizer=opt, loss="mse")
    opt.build(m.trainable_variables)
    T.save_state(str(tmp_path), m, opt, {"epoch": 1})
    other = keras.Sequential([keras.Input((FEAT,)), keras.layers.Dense(2)])
    with pytest.raises(UsageError, match="does not fit"):
        T.restore_model(other, T.load_state(str(tmp_path)))


def test_saved_files_load_and_predict_the_same(tmp_path):
    import keras

    from utils.train import training as T

    m = tiny_model()
    m.compile(optimizer="adam", loss="categorical_crossentropy")
    x = np.random.default_rng(1).normal(size=(4, FEAT)).astype("float32")
    files = T.save_model_files(m, str(tmp_path / "m"))
    assert [os.path.basename(f) for f in files] == ["m.h5", "m.keras"]
    for f in files:
        loaded = keras.models.load_model(f)
        np.testing.assert_allclose(loaded.predict(x, verbose=0), m.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
    assert not [p for p in os.listdir(tmp_path) if ".tmp" in p]
