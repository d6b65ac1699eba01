"""--augment-on cpu|device: what the pipeline yields, what the train step sees, the same draws'
statistics on both placements, clean saved models, one-line errors, MirroredStrategy over two
logical CPUs, XLA. No GPU here: the `device` code path is exercised on the CPU."""
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import ROOT, encode_image
from tests.train.test_cli import bad, data, quick, run_main, runner, tiny  # noqa: F401 - fixtures
from utils.train import augment_step, config

BATCH_OPS = "rotate,color,mixup"


def cfg_for(data_dir, placement, augment=BATCH_OPS, **kw):
    return dict(config.defaults(), data=data_dir, augment=augment, augment_on=placement, **kw)


def by_id(ds, batches):
    """{source id: (image, labels)} of `batches` batches of a with_ids dataset."""
    out = {}
    for images, labels, ids in ds.take(batches):
        for img, lab, key in zip(images.numpy(), labels.numpy(), ids.numpy()):
            out[key] = (img, lab)
    return out


def train_batches(data_dir, augment, seed=0, batch=8, with_ids=True):
    from utils.input.pipeline import make_dataset

    return make_dataset(data_dir, "train", image_size=32, batch_size=batch, training=True, augment=augment,
                        seed=seed, repeat=True, drop_remainder=True, with_ids=with_ids)


# ----------------------------------------------------------------- what goes where


def test_pipeline_gets_only_the_decode_time_ops():
    spec = {"flip": {"mode": "vertical"}, "rrc": {"scale": [0.5, 1.0]}, "color": {}, "mixup": {"alpha": 0.4}}
    assert augment_step.pipeline_augment({"augment": spec, "augment_on": "cpu"}) is spec
    assert augment_step.pipeline_augment({"augment": spec, "augment_on": "device"}) == \
        {"flip": {"mode": "vertical"}, "rrc": {"scale": [0.5, 1.0]}}
    assert augment_step.pipeline_augment({"augment": "flip,rotate", "augment_on": "device"}) == {"flip": {}}
    assert augment_step.batch_names("flip,rrc") == []
    assert augment_step.batch_names("mixup,flip,rotate") == ["mixup", "rotate"]
    assert augment_step.replica_seed(3, 0) == 3 and augment_step.replica_seed(3, 2) == 3 + 2 * 7919
    assert augment_step.replica_seed(None, 1) is None


def test_default_placement_and_resume(monkeypatch, capsys):
    import tensorflow as tf

    assert augment_step.resolve_placement({"augment_on": "cpu", "augment": BATCH_OPS})["augment_on"] == "cpu"
    assert augment_step.resolve_placement({"augment_on": None, "augment": BATCH_OPS})["augment_on"] == "cpu"
    assert capsys.readouterr().err == ""  # no GPU: cpu, as before, and nothing printed
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: ["gpu0"] if kind == "GPU" else [])
    assert augment_step.resolve_placement({"augment_on": None, "augment": BATCH_OPS})["augment_on"] == "device"
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("note: a GPU is visible: --augment-on device")
    # a run interrupted on a GPU machine may resume on a CPU one: where it augments is not what it trains
    assert config.resume_mismatch(dict(config.defaults(), augment_on="device"),
                                  dict(config.defaults(), augment_on="cpu")) == []


def test_bad_augment_on_is_one_line(tiny, data, capsys, tmp_path):
    assert "invalid choice: 'gpu'" in bad(quick(data, "--augment-on", "gpu"), capsys)
    y = tmp_path / "a.yaml"
    y.write_text("augment_on: tpu\n")
    assert "augment_on in" in bad(quick(data, "--config", str(y)), capsys)
    assert "--augment-on {cpu,device}" in " ".join(
        subprocess.run([sys.executable, "train.py", "--help"], cwd=ROOT, capture_output=True, text=True).stdout.split())


@pytest.mark.slow
def test_device_pipeline_yields_eval_decoded_batches(data):
    """On device the train batches are the eval decode's pixels and one-hot labels; on cpu they are not."""
    from utils.input.pipeline import make_dataset

    evals = by_id(make_dataset(data, "train", image_size=32, batch_size=8, training=False, with_ids=True), 99)
    device = by_id(train_batches(data, augment_step.pipeline_augment(cfg_for(data, "device"))), 3)
    assert len(device) >= 16
    for key, (img, lab) in device.items():
        np.testing.assert_array_equal(img, evals[key][0])
        assert sorted(lab) == [0.0, 0.0, 1.0]
    cpu = by_id(train_batches(data, augment_step.pipeline_augment(cfg_for(data, "cpu"))), 3)
    changed = [not np.array_equal(img, evals[key][0]) for key, (img, _) in cpu.items()]
    mixed = [lab.max() < 1 - 1e-6 for _, lab in cpu.values()]
    assert sum(changed) >= len(cpu) - 1 and any(mixed)


def probe_model(size=32, classes=3, jit=False):
    """A tiny compiled model whose plain train_step records the batch it is given."""
    import keras
    import tensorflow as tf

    inp = keras.Input((size, size, 3))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(inp))
    model = keras.Model(inp, keras.layers.Dense(classes, activation="softmax")(x))
    model.compile(optimizer="sgd", loss="categorical_crossentropy", jit_compile=jit)
    seen = {"x": tf.Variable(tf.zeros([8, size, size, 3]), trainable=False),
            "y": tf.Variable(tf.zeros([8, classes]), trainable=False)}
    step = model.train_step

    def recording_step(batch):
        seen["x"].assign(batch[0])
        seen["y"].assign(batch[1])
        return step(batch)

    model.train_step = recording_step
    return model, seen


@pytest.mark.parametrize("jit", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_train_step_augments_the_batch(data, jit):
    """jit: Keras would XLA-compile MixUp's tf.random.gamma (no XLA kernel); it runs before the XLA step."""
    import tensorflow as tf

    model, seen = probe_model(jit=jit)
    cfg = cfg_for(data, "device", seed=1)
    assert augment_step.attach(model, cfg, tf.distribute.get_strategy(), 32, 3)
    images, labels = next(iter(train_batches(data, augment_step.pipeline_augment(cfg), with_ids=False)))
    model.fit(tf.data.Dataset.from_tensors((images, labels)), epochs=1, steps_per_epoch=1, verbose=0)
    x, y = seen["x"].numpy(), seen["y"].numpy()
    assert sorted(np.asarray(labels)[0]) == [0.0, 0.0, 1.0]  # what the pipeline gave: one-hot
    assert not np.allclose(x, images.numpy(), atol=1.0)  # rotated / jittered / mixed in the step
    assert ((y > 1e-6) & (y < 1 - 1e-6)).any()  # mixup's soft labels, inside the step
    np.testing.assert_allclose(y.sum(1), 1.0, rtol=1e-5)
    assert model.jit_compile is jit
    assert 0.0 <= x.min() and x.max() <= 255.0
    assert augment_step.attach(model, cfg_for(data, "cpu"), tf.distribute.get_strategy(), 32, 3) is False
    assert augment_step.attach(model, cfg_for(data, "device", "flip,rrc"), tf.distribute.get_strategy(), 32, 3) \
        is False


def batch_stats(images, labels):
    images, labels = np.concatenate(images), np.concatenate(labels)
    return images.mean(), images.std(), labels.max(1).mean()


@pytest.mark.slow
def test_same_seed_same_statistics_on_both_placements(data):
    """One seed: the batch ops in tf.data and in a tf.function step give the same pixel and label statistics.

    The draws are often identical but need not be: the pipeline's batch map runs its calls in parallel
    on the ops' stateful seed generators, so which batch gets which draw can change from run to run (CI
    once saw means 69.2 vs 63.8 over 6 batches). The tolerances are therefore those of independent draws
    on the same images, measured over 12 seed pairs of 32 batches: worst |rel| mean 0.095, std 0.039,
    |label max| 0.023. Measured too: dropping color from the device ops moves std by -0.16, dropping mixup
    the label max by +0.06 (both fail); rotate alone moves too little to see (test_train_step_augments_the_batch).
    """
    import tensorflow as tf

    cfg = cfg_for(data, "device", seed=5)
    cpu = train_batches(data, augment_step.pipeline_augment(cfg_for(data, "cpu", seed=5)), seed=5, with_ids=False)
    raw = train_batches(data, augment_step.pipeline_augment(cfg), seed=5, with_ids=False)
    step = tf.function(augment_step.build_replica_augmenters(cfg, 32, 3, 1)[0])
    got = {"cpu": ([], []), "device": ([], []), "none": ([], [])}
    for (ci, cl), (ri, rl) in zip(cpu.take(40), raw.take(40)):
        di, dl = step(ri, rl)
        for name, (i, lab) in (("cpu", (ci, cl)), ("device", (di, dl)), ("none", (ri, rl))):
            got[name][0].append(np.asarray(i))
            got[name][1].append(np.asarray(lab))
    c, d, n = (batch_stats(*got[k]) for k in ("cpu", "device", "none"))
    assert d[0] == pytest.approx(c[0], rel=0.15) and d[1] == pytest.approx(c[1], rel=0.06)
    assert d[2] == pytest.approx(c[2], abs=0.04)
    assert n[2] == 1.0 and c[2] < 0.98 and d[2] < 0.98  # both mixed labels, the raw stream did not


# ----------------------------------------------------------------- train.py runs


AUG_LAYERS = ("Random", "MixUp", "CutMix", "RandAugment", "AugMix", "Solarization", "Equalization")


def layer_classes(model):
    return [type(layer).__name__ for layer in model._flatten_layers(include_self=False)]


@pytest.mark.slow
def test_device_run_saves_a_clean_model_that_detect_loads(tiny, data, capsys, tmp_path):
    import json

    import keras

    import model  # noqa: F401 - our layers, for load_model
    from model import build
    from tests.detect.common import run as run_detect

    code, out, err = run_main(quick(data, "--epochs", "1", "--augment", "flip,rotate,color,erasing,mixup",
                                    "--augment-on", "device", "--out", "model_save/d.h5"), capsys)
    assert code == 0, err
    assert json.load(open("model_save/d.json"))["config"]["augment_on"] == "device"
    fresh = layer_classes(build.build_model("tinynet", 3, input_size=(32, 32), weights="none"))
    for f in ("model_save/d.h5", "model_save/d.keras", "model_save/d.best.h5"):
        classes = layer_classes(keras.models.load_model(f))
        assert classes == fresh and not [c for c in classes if c.startswith(AUG_LAYERS)]
    img = tmp_path / "x.png"
    img.write_bytes(encode_image(np.full((32, 32, 3), 200, np.uint8), "png"))
    # detect.py in this process (cwd tmp_path): the class check above already proves no augmentation
    # layer was saved, so a fresh interpreter (another TensorFlow import) would test nothing more
    code, _, err = run_detect(["--model", "model_save/d.h5", str(img), "--out", "pred.csv"], capsys)
    assert code == 0, err[-2000:]
    rows = open(tmp_path / "pred.csv").read().strip().splitlines()
    assert rows[0] == "id,label" and len(rows) == 2 and rows[1].split(",")[0] == "x"


@pytest.mark.slow
def test_device_run_per_class_ohem_mixed_precision_progressive(tiny, data, capsys):
    import csv

    code, out, err = run_main(quick(data, "--epochs", "2", "--head", "per-class", "--ohem", "0.5",
                                    "--mixed-precision", "--progressive", "16:1,32", "--augment", "rotate,cutmix",
                                    "--augment-on", "device", "--out", "model_save/pc.h5"), capsys)
    assert code == 0, err
    rows = list(csv.DictReader(open("log/pc/epochs.csv")))
    assert len(rows) == 2 and all(np.isfinite(float(r["loss"])) for r in rows)
    assert "progressive: epochs 2-2 at 32 px" in err


@pytest.mark.slow
def test_device_run_with_xla_and_the_ops_xla_cannot_compile(tiny, data, capsys):
    """--jit: MixUp's Beta draws and RandAugment's histograms have no XLA kernels; they run before the XLA step."""
    code, out, err = run_main(quick(data, "--epochs", "1", "--jit", "--augment", "randaugment,mixup",
                                    "--augment-on", "device", "--val-split", "none", "--out", "model_save/x.h5"),
                              capsys)
    assert code == 0, err
    assert out.strip().splitlines()[-1].startswith("loss ")


MIRRORED = """
import sys
sys.path.insert(0, {root!r})
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from utils.train import augment_step

strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
cfg = {{"augment_on": "device", "augment": "rotate,color,randaugment,erasing,mixup,cutmix", "seed": 0}}
with strategy.scope():
    inp = keras.Input((32, 32, 3))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(inp))
    model = keras.Model(inp, keras.layers.Dense(3, activation="softmax")(x))
    model.compile(optimizer="adam", loss="categorical_crossentropy")
assert augment_step.attach(model, cfg, strategy, 32, 3)
ds = tf.data.Dataset.from_tensors((tf.random.uniform([8, 32, 32, 3], 0, 255), tf.one_hot([0, 1, 2] * 2 + [0, 1], 3)))
loss = model.fit(ds.repeat(), steps_per_epoch=2, epochs=1, verbose=0).history["loss"][0]
augmenters = augment_step.build_replica_augmenters(cfg, 32, 3, strategy.num_replicas_in_sync)
same = (tf.fill([4, 32, 32, 3], 100.0), tf.one_hot([0, 1, 2, 0], 3))
out = strategy.run(tf.function(lambda d: augment_step.augment_data(augmenters, d)), args=(same,))
a, b = [t.numpy() for t in strategy.experimental_local_results(out[1])]
print(strategy.num_replicas_in_sync, np.isfinite(loss), bool(np.allclose(a, b)))
"""


@pytest.mark.slow
def test_mirrored_two_logical_cpus_runs_device_augmentation():
    p = subprocess.run([sys.executable, "-c", MIRRORED.format(root=ROOT)], capture_output=True, text=True,
                       timeout=600, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES=""))
    assert p.returncode == 0, p.stderr[-3000:]
    # two replicas trained; each drew its own augmentation (replica seeds) from the same input
    assert p.stdout.strip().splitlines()[-1] == "2 True False"


@pytest.mark.slow
def test_device_run_sigterm_then_resume(tiny, data, tmp_path, capsys):
    import csv
    import json
    import signal
    import time

    argv = quick(data, "--epochs", "2", "--steps-per-epoch", "12", "--augment", "rotate,mixup", "--augment-on",
                 "device", "--checkpoint-every", "1", "--out", "model_save/r.h5")
    p = runner(argv, cwd=tmp_path)
    state = tmp_path / "model_save" / "r.resume" / "state.npz"
    deadline = time.time() + 300
    while p.poll() is None and not state.exists() and time.time() < deadline:
        time.sleep(0.05)
    assert p.poll() is None and state.exists(), "the run ended or never checkpointed"
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 143 and "interrupted: saved epoch" in err, err[-2000:]
    code, out, err = run_main(argv + ["--resume"], capsys)  # in this process (cwd tmp_path): no 2nd TF import
    assert code == 0 and "resuming at epoch" in err, err[-2000:]
    meta = json.load(open(tmp_path / "model_save" / "r.json"))
    assert meta["history"]["iterations"] == 24 and meta["config"]["augment_on"] == "device"
    assert [r["epoch"] for r in csv.DictReader(open(tmp_path / "log" / "r" / "epochs.csv"))] == ["0", "1"]


@pytest.mark.slow
def test_two_worker_multiworker_with_device_augmentation(tiny, data, tmp_path):
    import json

    from tests.train.test_cli import run_two_workers

    run_two_workers(quick(data, "--epochs", "1", "--strategy", "multiworker", "--augment", "rotate,mixup",
                          "--augment-on", "device", "--out", "model_save/mw.h5"), tmp_path)
    assert json.load(open(tmp_path / "w0" / "model_save" / "mw.json"))["config"]["augment_on"] == "device"
