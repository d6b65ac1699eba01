"""train.py end to end on a tiny dataset: artefacts, resume after kill -9, folds, preview,
bad input, two-worker MultiWorkerMirroredStrategy.

Speed: a registry backbone's first train step takes 1-2 minutes just to trace
on 2 busy cores, so these tests register a tiny conv backbone ("tinynet") in
model.registry (test-only) and train it at 32 px for a few steps. Subprocess
tests go through `runner()`, which registers it in the child too. The runs
that train are marked slow; the preview and the bad-input checks stay fast.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import ROOT, encode_image, free_ports, kill_9_when, write_dataset

CLASSES = ["red", "green", "blue"]
COLOURS = [(220, 30, 30), (30, 200, 40), (40, 60, 230)]


# ----------------------------------------------------------------- fixtures


def tinynet(weights=None, include_top=False, input_shape=None, pooling="avg", name="backbone", **_):
    """keras.applications-style constructor of a 2-conv backbone (test only)."""
    import keras

    inp = keras.Input(input_shape)
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", name="t_conv1")(inp)
    x = keras.layers.BatchNormalization(name="t_bn1")(x)
    x = keras.layers.ReLU(name="t_relu1")(x)
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", name="t_conv2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="t_pool")(x)
    return keras.Model(inp, x, name=name)


def tiny_spec():
    from model import registry

    return registry.ModelSpec("tinynet", tinynet, 32, 16, "torch")


def register_tiny():
    """For the subprocess runs; in this process the `tiny` fixture registers it and removes it again."""
    from model import registry

    registry._SPECS["tinynet"] = tiny_spec()


def shape_record(label: int, rng, key: str, size: int = 32) -> bytes:
    """A dark noisy square image with a square of the class's colour, as a serialized record."""
    from utils.dataset import schema

    img = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
    a, b = rng.integers(4, 12), rng.integers(20, 28)
    img[a:b, a:b] = COLOURS[label]
    return schema.serialize([encode_image(img, "png")], "png", size, size, 3, [label], key)


def shapes_dataset(root, *, n_train=30, n_val=12, folds=0, val=True, seed=0) -> str:
    """data/NAME in the generate_dataset.py layout: 2 train shards (or one per fold) + 1 val shard."""
    rng = np.random.default_rng(seed)
    k = len(CLASSES)

    def shard(name, labels):
        return [shape_record(c, rng, f"{name}-{i}") for i, c in enumerate(labels)]

    if folds:
        splits = {"train": [(shard(f"train{f}", [i % k for i in range(n_train // folds)]), f)
                            for f in range(folds)]}
    else:
        labels = [i % k for i in range(n_train)]
        splits = {"train": [shard("train0", labels[::2]), shard("train1", labels[1::2])]}
    if val and not folds:
        splits["val"] = [shard("val", [i % k for i in range(n_val)])]
    return write_dataset(root, splits, class_names=CLASSES, folds=folds)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return shapes_dataset(str(tmp_path_factory.mktemp("ds") / "shapes"))


@pytest.fixture
def tiny(monkeypatch, tmp_path):
    from model import registry

    monkeypatch.setitem(registry._SPECS, "tinynet", tiny_spec())
    monkeypatch.chdir(tmp_path)  # log/NAME and model_save/ land here
    yield
    import keras

    keras.mixed_precision.set_global_policy("float32")


def quick(data, *extra):
    return ["--data", data, "--model", "tinynet", "--weights", "none", "--image-size", "32",
            "--batch-size", "8", "--steps-per-epoch", "2", "--augment", "flip", *extra]


def run_main(argv, capsys):
    import train
    from utils.errors import run_cli

    code = run_cli(train.main, argv)
    out, err = capsys.readouterr()
    return code, out, err


def epoch_rows(data, name, capsys, *flags) -> list[dict]:
    """Train with `flags` and --out model_save/NAME.h5 (must exit 0) -> the rows of log/NAME/epochs.csv."""
    code, _, err = run_main(quick(data, *flags, "--out", f"model_save/{name}.h5"), capsys)
    assert code == 0, err
    return csv_rows(f"log/{name}/epochs.csv")


# ----------------------------------------------------------------- end to end


@pytest.mark.slow
def test_end_to_end_artefacts_and_reload(tiny, data, capsys, tmp_path, monkeypatch):
    import keras

    import model  # noqa: F401 - registers our layers for load_model
    from model.meta import load_meta
    from utils.train import config, loop

    y = tmp_path / "run.yaml"
    y.write_text("epochs: 2\nlr: 0.01\noptimizer: sgd\n")
    argv = quick(data, "--config", str(y), "--out", "model_save/t.h5")
    cfg = config.resolve(config.build_parser("t").parse_args(argv))
    runs, real_run = [], loop.run  # one training, through the CLI; loop.run's result (the model) kept

    def keep(resolved):
        runs.append(real_run(resolved))
        return runs[-1]

    monkeypatch.setattr(loop, "run", keep)
    code, stdout, _ = run_main(argv, capsys)
    assert code == 0 and len(runs) == 1
    out = runs[0]
    files = sorted(os.listdir("model_save"))
    assert files == ["t.best.h5", "t.best.keras", "t.config.yaml", "t.h5", "t.json", "t.keras"]
    assert sorted(os.listdir("log/t"))[:2] == ["curves.png", "epochs.csv"]
    assert any(p.startswith(("train", "validation")) for p in os.listdir("log/t"))  # TensorBoard
    with open("log/t/epochs.csv") as f:
        header, *rows = f.read().splitlines()
    assert len(rows) == 2 and "val_accuracy" in header and "lr" in header

    meta = load_meta("model_save/t.h5")
    assert meta["class_names"] == CLASSES and meta["input_size"] == [32, 32] and meta["head"] == "softmax"
    assert meta["outputs"] == ["probs"] and meta["config"]["epochs"] == 2 and meta["config"]["lr"] == 0.01
    assert meta["history"]["val_metric"] == "val_accuracy" and meta["history"]["iterations"] == 4
    import yaml

    assert yaml.safe_load(open("model_save/t.config.yaml"))["optimizer"] == "sgd"
    page = open("log/t/report.html").read()   # the run as one page: result, curves, epochs, config
    assert page.count("data:image/png;base64,") == 1 and 'id="epochs"' in page and 'id="config"' in page
    assert ">optimizer</td>" in page and ">sgd</td>" in page
    assert page.count("<tr>") >= 2 + len(cfg)   # the epochs' rows and one row per config key

    x = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    want = out["model"].predict(x, verbose=0)
    for f in ("model_save/t.h5", "model_save/t.keras"):
        got = keras.models.load_model(f).predict(x, verbose=0)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)

    # the CLI prints the validation score last: the best epoch's, as the metadata records it
    history = meta["history"]
    assert stdout.strip().splitlines()[-1] == \
        f"val_accuracy {history['val_score']:.3f} (best epoch {history['best_epoch']})"
    assert history["best_epoch"] in (1, 2)


@pytest.mark.slow
def test_head_warmup_then_finetune(tiny, data, capsys):
    import keras

    rows = epoch_rows(data, "w", capsys, "--epochs", "2", "--warmup-epochs", "1", "--ema", "--accum-steps", "2",
                      "--optimizer", "adamw", "--schedule", "constant", "--finetune-lr-mult", "0.1")
    assert [r["epoch"] for r in rows] == ["0", "1"]
    # heads at --lr, then everything at lr * --finetune-lr-mult
    assert [float(r["lr"]) for r in rows] == pytest.approx([1e-3, 1e-4], rel=1e-5)
    keras.models.load_model("model_save/w.h5")


@pytest.mark.slow
def test_mixed_precision_jit_cache_step_early_stop(tiny, data, capsys):
    import keras

    rows = epoch_rows(data, "mp", capsys, "--epochs", "4", "--mixed-precision", "--jit", "--cache", "--schedule",
                      "step", "--step-epochs", "1", "--early-stop", "1", "--lr", "1e-6")
    meta = json.load(open("model_save/mp.json"))
    assert meta["config"]["mixed_precision"] and meta["config"]["jit"]
    if meta["history"]["early_stopped"]:  # at lr 1e-6 the score rarely improves twice in a row
        assert len(rows) < 4
    lrs = [float(r["lr"]) for r in rows]
    assert lrs[:2] == pytest.approx([1e-7, 1e-8], rel=1e-3)  # x0.1 every epoch
    assert keras.models.load_model("model_save/mp.h5").predict(np.zeros((1, 32, 32, 3), "float32"),
                                                               verbose=0).shape == (1, 3)


@pytest.mark.slow
@pytest.mark.parametrize("head, monitor", [("sigmoid", "val_f1"), ("per-class", "val_loss")])
def test_multi_label_heads(tiny, data, capsys, head, monitor):
    import keras

    code, out, err = run_main(quick(data, "--epochs", "1", "--head", head, "--class-weights", "balanced",
                                    "--out", "model_save/h.h5"), capsys)
    assert code == 0, err
    assert out.strip().splitlines()[-1].startswith(monitor + " ")
    meta = json.load(open("model_save/h.json"))
    want = ["probs"] if head == "sigmoid" else ["c000_red", "c001_green", "c002_blue"]
    assert meta["outputs"] == want and meta["head"] == head
    pred = keras.models.load_model("model_save/h.keras").predict(np.zeros((2, 32, 32, 3), "float32"), verbose=0)
    assert (len(pred) == 3) if head == "per-class" else pred.shape == (2, 3)


@pytest.mark.slow
def test_fold_trains_on_other_folds(tiny, tmp_path, capsys):
    data = shapes_dataset(str(tmp_path / "kf"), n_train=30, folds=3)
    code, out, err = run_main(quick(data, "--epochs", "1", "--fold", "1"), capsys)
    assert code == 0, err
    assert os.path.isfile("model_save/kf_tinynet_fold1.h5")


def test_fold_out_of_range_is_one_line(tiny, tmp_path, capsys):
    data = shapes_dataset(str(tmp_path / "kf"), n_train=30, folds=3)
    code, out, err = run_main(quick(data, "--epochs", "1", "--fold", "3"), capsys)
    assert code == 2 and err.startswith("error: fold 3 does not exist") and "Traceback" not in err


def test_preview_writes_png(tiny, data, capsys):
    code, out, err = run_main(quick(data, "--preview", "--augment", "flip,rrc", "--out", "model_save/p.h5"), capsys)
    assert code == 0, err
    assert os.path.getsize("log/p/preview.png") > 1000
    assert not os.path.exists("model_save/p.h5")


# ----------------------------------------------------------------- bad input


def bad(argv, capsys):
    code, out, err = run_main(argv, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_bad_input_one_line(tiny, data, tmp_path, capsys):
    assert "no dataset folder" in bad(quick(str(tmp_path / "missing")), capsys)
    assert "unknown model 'resnet9000'" in bad(quick(data, "--model", "resnet9000"), capsys)
    assert "inceptionv3 needs --image-size >= 75" in bad(quick(data, "--model", "inceptionv3"), capsys)
    assert "has no folds" in bad(quick(data, "--fold", "0"), capsys)
    assert "--epochs must be >= 1" in bad(quick(data, "--epochs", "0"), capsys)
    assert "invalid choice: 'lion'" in bad(quick(data, "--optimizer", "lion"), capsys)
    assert "--lr: invalid float value" in bad(quick(data, "--lr", "fast"), capsys)
    y = tmp_path / "bad.yaml"
    y.write_text("epochz: 3\n")
    assert "unknown key 'epochz'" in bad(quick(data, "--config", str(y)), capsys)


def test_imagenet_without_network(tiny, data, monkeypatch, capsys):
    cached = os.path.expanduser("~/.keras/models/densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5")
    if os.path.exists(cached):
        pytest.skip("ImageNet weights are cached: no download would happen")
    for k in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(k, "http://127.0.0.1:9")  # nothing listens: the download fails at once
    monkeypatch.setenv("no_proxy", "")
    line = bad(quick(data, "--model", "densenet121", "--weights", "imagenet"), capsys)
    assert "pass --weights PATH" in line and "none" in line


# ----------------------------------------------------------------- subprocesses

RUNNER = ("import sys; sys.path.insert(0, {root!r}); from tests.train.test_cli import register_tiny; "
          "register_tiny(); import train; from utils.errors import run_cli; sys.exit(run_cli(train.main))")


def runner(argv, cwd, env=None, **kw):
    code = RUNNER.format(root=ROOT)
    e = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="", PYTHONUNBUFFERED="1", **(env or {}))
    return subprocess.Popen([sys.executable, "-c", code, *argv], cwd=cwd, env=e, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def csv_rows(path):
    import csv

    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_kill_9_then_resume(tiny, data, tmp_path, capsys):
    """kill -9 after epoch 1's checkpoint; --resume finishes with each epoch logged once,
    and LR per epoch + the optimizer step count equal an uninterrupted run's."""
    from utils.train.checkpoint import load_state

    argv = quick(data, "--epochs", "5", "--steps-per-epoch", "24", "--lr", "0.05", "--lr-warmup-epochs", "1",
                 "--out", "model_save/r.h5")
    state = tmp_path / "model_save" / "r.resume"
    p = runner(argv, cwd=tmp_path)
    kill_9_when(state / "state.npz", p, timeout=150)
    done = load_state(str(state))["run"]["epoch"]
    assert 1 <= done < 5
    assert not os.path.exists(tmp_path / "model_save" / "r.h5")

    code, _, err = run_main(argv + ["--resume"], capsys)  # in this process (cwd tmp_path): no 2nd TF import
    assert code == 0, err[-2000:]
    assert f"resuming after epoch {done}" in err
    resumed = csv_rows(tmp_path / "log" / "r" / "epochs.csv")
    assert [r["epoch"] for r in resumed] == ["0", "1", "2", "3", "4"]
    assert not state.exists()

    # the same run, uninterrupted, in this process
    code, _, err = run_main(argv[:-1] + ["model_save/ref.h5"], capsys)
    assert code == 0, err
    ref = csv_rows(tmp_path / "log" / "ref" / "epochs.csv")
    assert [float(r["lr"]) for r in resumed] == pytest.approx([float(r["lr"]) for r in ref], rel=1e-5)
    meta_r = json.load(open(tmp_path / "model_save" / "r.json"))
    meta_ref = json.load(open(tmp_path / "model_save" / "ref.json"))
    assert meta_r["history"]["iterations"] == meta_ref["history"]["iterations"] == 5 * 24


def worker_tf_configs(n: int = 2) -> list[str]:
    """TF_CONFIG of each worker of an n-worker cluster on free 127.0.0.1 ports (worker 0 is the chief)."""
    cluster = {"worker": [f"127.0.0.1:{p}" for p in free_ports(n)]}
    return [json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}}) for i in range(n)]


def start_two_workers(argv, tmp_path) -> list:
    """train.py `argv` as a two-worker MultiWorkerMirroredStrategy cluster on 127.0.0.1,
    worker i in tmp_path/wi (w0 is the chief; made when missing). Returns the two processes."""
    procs = []
    for i, tf_config in enumerate(worker_tf_configs(2)):
        cwd = tmp_path / f"w{i}"
        cwd.mkdir(exist_ok=True)
        procs.append(runner(argv, cwd=cwd, env={"TF_CONFIG": tf_config}))
    return procs


def run_two_workers(argv, tmp_path) -> list[tuple[str, str]]:
    """start_two_workers, waited for: both must exit 0 and the chief print its val line last.
    Returns [(stdout, stderr)] of the chief and the other worker."""
    procs = start_two_workers(argv, tmp_path)
    outs = [p.communicate(timeout=400) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    assert outs[0][0].strip().splitlines()[-1].startswith("val_accuracy")
    return outs


@pytest.mark.slow
def test_two_worker_multiworker_mirrored(tiny, data, tmp_path):
    outs = run_two_workers(quick(data, "--epochs", "2", "--strategy", "multiworker", "--out", "model_save/mw.h5"),
                           tmp_path)
    chief, other = tmp_path / "w0", tmp_path / "w1"
    assert sorted(os.listdir(chief / "model_save")) == ["mw.best.h5", "mw.best.keras", "mw.config.yaml", "mw.h5",
                                                        "mw.json", "mw.keras"]
    assert len(csv_rows(chief / "log" / "mw" / "epochs.csv")) == 2
    assert not (other / "model_save").exists() and not (other / "log").exists()
    assert outs[1][0].strip() == ""  # the non-chief prints nothing


def test_flipped_byte_in_a_shard_is_one_line_naming_it(tiny, data, tmp_path, capsys):
    import shutil

    copy = str(tmp_path / "flipped")
    shutil.copytree(data, copy)
    shard = sorted(f for f in os.listdir(copy) if f.startswith("train-"))[0]
    path = os.path.join(copy, shard)
    raw = bytearray(open(path, "rb").read())
    raw[len(raw) // 2] ^= 0xFF            # same size: only the record CRC can tell
    open(path, "wb").write(bytes(raw))
    line = bad(quick(copy, "--epochs", "1", "--steps-per-epoch", "4", "--batch-size", "16"), capsys)
    assert line.startswith(f"error: {path} is corrupted near byte "), line
    assert f"run 'generate_dataset.py verify {copy}'" in line
