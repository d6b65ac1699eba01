"""Saving/loading, weights files, ImageNet without network, in-model preprocessing, 6 channels."""
import os
import subprocess
import sys
import urllib.error

import keras
import numpy as np
import pytest

import model  # noqa: F401
from model.build import build_model, get_backbone, save_backbone_weights
from model.heads import output_names
from model.layers import ChannelAdapter, Preprocess, group_average_kernel
from model.losses import make_loss
from model.metrics import make_metrics
from tests.conftest import ROOT
from utils.errors import UsageError

SIZE = 32


def _images(n=2, c=3, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (n, SIZE, SIZE, c)).astype("float32")


def _weights_equal(a, b):
    wa, wb = a.get_weights(), b.get_weights()
    return len(wa) == len(wb) and all(np.array_equal(x, y) for x, y in zip(wa, wb))


# ------------------------------------------------------------------ save / load

def _predict(m, x):
    """Eager call: one batch does not repay tracing a predict function."""
    out = m(x, training=False)
    return np.concatenate([np.asarray(o) for o in out], axis=-1) if isinstance(out, list) else np.asarray(out)


# (arch, head): DenseNet with a softmax head; EfficientNet (its own Normalization
# layers inside the backbone) with the multi-output per-class head
CASES = [("densenet121", "softmax"), ("efficientnetb0", "per-class")]


FRESH_LOAD = (
    "import sys, numpy as np, keras, model\n"
    "for d in sys.argv[1:]:\n"
    "    x = np.load(d + '/x.npy'); want = np.load(d + '/want.npy')\n"
    "    for ext in ('h5', 'keras'):\n"
    "        m = keras.models.load_model(f'{d}/m.{ext}')\n"  # safe_mode on: no lambdas
    "        out = m(x, training=False)\n"
    "        got = np.concatenate(out, axis=-1) if isinstance(out, list) else np.asarray(out)\n"
    "        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)\n"
    "        loss = m.loss if not isinstance(m.loss, dict) else next(iter(m.loss.values()))\n"
    "        assert type(loss).__name__.startswith('Weighted'), type(loss)\n"
    "        print(d.rsplit('/', 1)[-1], f'm.{ext}', m.get_layer('preprocess').mode, type(m.optimizer).__name__)\n"
)


@pytest.fixture(scope="module")
def fresh_loads(tmp_path_factory):
    """Every CASE built, compiled and saved (.keras, .h5), then loaded in ONE fresh interpreter
    (a second one would import TensorFlow again for 10-15 s). Returns {case dir name: (returncode,
    its stdout lines, stderr)}."""
    dirs = []
    for arch, head in CASES:
        d = tmp_path_factory.mktemp(f"{arch}_{head}")
        x = _images()
        np.save(d / "x.npy", x)
        names = ["a", "b", "c"]
        m = build_model(arch, 3, input_size=SIZE, head=head, class_names=names, head_bn=True)
        outs = output_names(head, 3, names)
        loss, lw = make_loss(head, 3, outs, class_weights=[1.0, 2.0, 3.0], label_smoothing=0.1)
        m.compile(optimizer="adam", loss=loss, loss_weights=lw, metrics=make_metrics(head, 3, outs))
        np.save(d / "want.npy", _predict(m, x))
        # .keras first: a legacy .h5 save drops "optimizer" from the compile config in place
        m.save(d / "m.keras")
        m.save(d / "m.h5")
        dirs.append(d)
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    r = subprocess.run([sys.executable, "-c", FRESH_LOAD, *map(str, dirs)], capture_output=True, text=True,
                       env=env, cwd=str(dirs[0]), timeout=300)
    lines = [ln.split(" ", 1) for ln in r.stdout.splitlines()]
    return {d.name: (r.returncode, [rest for name, rest in lines if name == d.name], r.stderr) for d in dirs}


@pytest.mark.slow  # a fresh interpreter loads TensorFlow again: 10-15 s (once for both cases: fresh_loads)
@pytest.mark.parametrize("arch,head", CASES)
def test_save_h5_and_keras_then_load_in_fresh_process(fresh_loads, arch, head):
    # a fresh interpreter proves `import model` alone registers everything load_model needs
    (code, lines, err), = [v for k, v in fresh_loads.items() if k.startswith(f"{arch}_{head}")]
    assert code == 0, err[-3000:]
    mode = {"densenet121": "torch", "efficientnetb0": "none"}[arch]
    assert lines == [f"m.h5 {mode} Adam", f"m.keras {mode} Adam"]


# ------------------------------------------------------------------ weights files

@pytest.mark.parametrize("arch,fname", [pytest.param("densenet121", "bb.weights.h5", marks=pytest.mark.slow),
                                        ("efficientnetb0", "bb.h5")])
def test_local_weights_file_loads_into_backbone(tmp_path, arch, fname):
    src = build_model(arch, 2, input_size=SIZE)
    path = save_backbone_weights(src, str(tmp_path / fname))
    m = build_model(arch, 4, input_size=48, weights=path)  # conv weights do not depend on size
    assert _weights_equal(get_backbone(m), get_backbone(src))
    fresh = build_model(arch, 4, input_size=48)
    assert not _weights_equal(get_backbone(fresh), get_backbone(src))


def test_save_backbone_weights_from_name(tmp_path):
    path = save_backbone_weights("resnet50", str(tmp_path / "r.weights.h5"), input_size=SIZE)
    m = build_model("resnet50", 2, input_size=SIZE, weights=path)
    assert m.output_shape == (None, 2)
    with pytest.raises(UsageError, match=".weights.h5 or .h5"):
        save_backbone_weights("resnet50", str(tmp_path / "r.bin"), input_size=SIZE)


@pytest.mark.filterwarnings("ignore::UserWarning")  # keras warns per unmatched layer before raising
def test_bad_weights_files_are_one_line_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="weights file not found"):
        build_model("densenet121", 2, input_size=SIZE, weights=str(tmp_path / "missing.h5"))
    junk = tmp_path / "junk.h5"
    junk.write_text("not hdf5")
    other = save_backbone_weights("resnet50", str(tmp_path / "resnet.weights.h5"), input_size=SIZE)
    for bad in (str(junk), other):
        with pytest.raises(UsageError) as e:
            build_model("densenet121", 2, input_size=SIZE, weights=bad)
        assert "not a no-top densenet121 weights file" in str(e.value)
        assert "\n" not in str(e.value)


@pytest.mark.parametrize("failure", [
    Exception("URL fetch failure on https://storage.googleapis.com/x.h5: None -- [Errno -3] "
              "Temporary failure in name resolution"),
    urllib.error.URLError("no route"),
])
def test_imagenet_without_network(monkeypatch, failure):
    from keras.src.utils import file_utils

    def offline(*args, **kwargs):
        raise failure

    monkeypatch.setattr(file_utils, "get_file", offline)
    with pytest.raises(UsageError) as e:
        build_model("densenet121", 2, input_size=SIZE, weights="imagenet")
    msg = str(e.value)
    assert msg.startswith("could not download ImageNet weights for densenet121")
    assert "--weights PATH" in msg and "--weights none" in msg and "\n" not in msg


# ------------------------------------------------------------------ preprocessing layers

def test_preprocess_modes():
    x = np.array([[[[0.0, 127.5, 255.0]]]], np.float32)
    torch = np.asarray(Preprocess("torch")(x))[0, 0, 0]
    np.testing.assert_allclose(torch, [(0 - 0.485) / 0.229, (0.5 - 0.456) / 0.224, (1 - 0.406) / 0.225], rtol=1e-5)
    np.testing.assert_allclose(np.asarray(Preprocess("tf")(x))[0, 0, 0], [-1, 0, 1], atol=1e-6)
    # caffe: BGR order, ImageNet BGR means subtracted
    np.testing.assert_allclose(np.asarray(Preprocess("caffe")(x))[0, 0, 0],
                               [255 - 103.939, 127.5 - 116.779, 0 - 123.68], rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(Preprocess("none")(x)), x)
    with pytest.raises(ValueError):
        Preprocess("bgr")


def test_group_average_kernel():
    np.testing.assert_allclose(group_average_kernel(6), [[.5, 0, 0], [.5, 0, 0], [0, .5, 0],
                                                         [0, .5, 0], [0, 0, .5], [0, 0, .5]])
    np.testing.assert_allclose(group_average_kernel(1), [[1, 1, 1]])
    np.testing.assert_allclose(group_average_kernel(4).sum(axis=0), [1, 1, 1])


@pytest.mark.slow
def test_six_channel_model_builds_runs_and_starts_as_group_average(tmp_path):
    m = build_model("densenet121", 3, input_size=SIZE, channels=6)
    assert m.input_shape == (None, SIZE, SIZE, 6)
    x = _images(c=6)
    assert _predict(m, x).shape == (2, 3)
    adapter = m.get_layer("input_adapter")
    assert isinstance(adapter, ChannelAdapter)
    rgb = np.asarray(adapter(x))
    np.testing.assert_allclose(rgb, x.reshape(2, SIZE, SIZE, 3, 2).mean(axis=-1), rtol=1e-5, atol=1e-3)
    m.save(tmp_path / "six.keras")
    again = keras.models.load_model(tmp_path / "six.keras")
    np.testing.assert_allclose(_predict(again, x), _predict(m, x), rtol=1e-5, atol=1e-6)


def test_bad_build_arguments():
    with pytest.raises(UsageError, match="unknown head"):
        build_model("densenet121", 2, input_size=SIZE, head="softmaxx")
    with pytest.raises(UsageError, match="at least 2"):
        build_model("densenet121", 1, input_size=SIZE)
    with pytest.raises(UsageError, match="unknown model"):
        build_model("vgg16", 2)


def test_mixed_precision_outputs_stay_float32():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        m = build_model("resnet50", 3, input_size=SIZE, channels=6, head="per-class")
        out = m(_images(c=6), training=False)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert len(out) == 3 and all(o.dtype.name == "float32" for o in out)
    assert all(np.isfinite(np.asarray(o)).all() for o in out)
    assert m.get_layer("head_c000_logit").compute_dtype == "float16"  # the policy did apply
