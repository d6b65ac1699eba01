"""Exports (SavedModel, ONNX, LiteRT) checked against Keras on the same pixels, and their predictors.

Tiny functional models (tests/detect/common.tiny_model: Preprocess layer -> one strided conv -> head),
saved as train.py saves them (NAME.h5 / NAME.keras + NAME.json), so every format
round-trips in about a second; one slow test exports a real model.build backbone.
"""
import json
import os
import sys

import numpy as np
import pytest

import keras
import tensorflow as tf

from model.meta import save_meta
from tests.conftest import encode_image, random_image, write_image
from tests.detect import common
from utils.detect import export as ex
from utils.detect.runtimes import (LiteRTPredictor, OnnxPredictor, SavedModelPredictor, export_meta_path,
                                   open_exported)
from utils.errors import UsageError
from utils.input.pipeline import eval_image

CLASSES = ["cat", "dog", "bird"]
SIZE = (32, 32)
OUT = {"saved_model": "sm", "onnx": "m.onnx", "litert": "m.tflite"}
PREDICTOR = {"saved_model": SavedModelPredictor, "onnx": OnnxPredictor, "litert": LiteRTPredictor}


def tiny_model(path, head="softmax", *, ema=False, **kw):
    """common.tiny_model as train.py builds it (Preprocess("torch") in front), random weights
    (`ema`: fit with EMA), a resolved config in NAME.json (exports leave it out)."""
    return common.tiny_model(path, CLASSES, size=SIZE, head=head, preprocess="torch", filters=8,
                             fit="ema" if ema else None, meta={"config": {"lr": 0.01}}, **kw)


def keras_probs(model_path, x):
    """What detect.py computes from the Keras file: outputs concatenated in order."""
    m = keras.models.load_model(model_path, compile=False, safe_mode=False)
    out = m(x, training=False)
    return np.concatenate([np.asarray(o) for o in (out if isinstance(out, list) else [out])], axis=-1)


def pixels(encoded_list, channels=3, planes=1):
    return np.stack([eval_image(tf.constant(e if isinstance(e, list) else [e]), SIZE, channels, planes).numpy()
                     for e in encoded_list])


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {head: tiny_model(root / f"{head}.h5", head) for head in ("softmax", "sigmoid", "per-class")}


@pytest.fixture(scope="module")
def check_files(tmp_path_factory):
    """A JPEG, a PNG of another size and a grayscale PNG: what serve_bytes and predictors see."""
    root = tmp_path_factory.mktemp("imgs")
    return [write_image(root / "a.jpg", random_image(1, 40, 48)),
            write_image(root / "b.png", random_image(2, 29, 35, blocky=False)),
            write_image(root / "g.png", random_image(3, 32, 32, c=1))]


def one_line(e: pytest.ExceptionInfo) -> str:
    text = str(e.value)
    assert text and "\n" not in text
    return text


# ----------------------------------------------------------------------------- round trips

@pytest.mark.parametrize("head", ["softmax", "sigmoid", "per-class"])
@pytest.mark.parametrize("fmt", ["saved_model", "onnx", "litert"])
def test_round_trip_equals_keras(models, check_files, tmp_path, capsys, fmt, head):
    out = str(tmp_path / OUT[fmt])
    result = ex.export_model(models[head], out, fmt, check_images=check_files)
    printed = capsys.readouterr().out
    assert f"{fmt}: max |prob - keras| on 3 images" in printed and "bound 0.0001" in printed
    assert result["images"] == 3 and max(result["max_abs_diff"].values()) <= 1e-4
    assert set(result["max_abs_diff"]) == ({"serve", "serve_bytes"} if fmt == "saved_model" else {"serve"})
    assert os.path.exists(out) and not any(".tmp-export" in n for n in os.listdir(tmp_path))

    meta = json.load(open(result["meta_path"]))
    assert result["meta_path"] == export_meta_path(out)
    assert meta["class_names"] == CLASSES and meta["input_size"] == list(SIZE) and meta["head"] == head
    assert meta["outputs"] == ["probs"] and meta["format"] == fmt and "config" not in meta
    assert meta["check"]["max_abs_diff"] == result["max_abs_diff"]

    # an independent run: the predictor from the path alone equals Keras on eval_image's pixels
    x = pixels([open(p, "rb").read() for p in check_files])
    want = keras_probs(models[head], x)
    pred = open_exported(out)
    assert isinstance(pred, PREDICTOR[fmt]) and pred.meta["class_names"] == CLASSES
    got = pred(x)
    assert got.shape == (3, 3) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(pred(tf.constant(x[:1])), want[:1], atol=1e-5)  # tensors and batch 1 too


def test_serve_bytes_on_jpeg_png_gray_equals_keras(models, tmp_path):
    out = str(tmp_path / "sm")
    ex.export_model(models["softmax"], out, "saved_model")
    encoded = [encode_image(random_image(4, 50, 60), "jpeg", quality=90),
               encode_image(random_image(5, 20, 24, blocky=False), "png"),
               encode_image(random_image(6, 32, 32, c=1), "png"),
               encode_image(np.dstack([random_image(7, 33, 31), np.full((33, 31), 128, np.uint8)]), "png")]  # RGBA
    want = keras_probs(models["softmax"], pixels(encoded))
    loaded = tf.saved_model.load(out)
    assert set(loaded.signatures) == {"serving_default", "serve", "serve_bytes"}
    res = loaded.signatures["serve_bytes"](images=tf.constant(encoded))
    np.testing.assert_allclose(res["probs"].numpy(), want, atol=1e-6)
    assert [v.decode() for v in res["label"].numpy()] == [CLASSES[i] for i in want.argmax(1)]
    # the float signature (serving_default, what TF Serving calls without a signature name)
    res = loaded.signatures["serving_default"](image=tf.constant(pixels(encoded)))
    np.testing.assert_allclose(res["probs"].numpy(), want, atol=1e-6)
    np.testing.assert_allclose(SavedModelPredictor(out).predict_bytes(encoded), want, atol=1e-6)


def test_six_channel_model_exports_with_planes(tmp_path):
    path = tiny_model(tmp_path / "six.keras", "sigmoid", channels=6)
    sample = [encode_image(random_image(10 + i, 36, 30, c=1), "png") for i in range(6)]
    want = keras_probs(path, pixels([sample], channels=6, planes=6))
    for fmt in ("saved_model", "onnx"):
        out = str(tmp_path / OUT[fmt])
        result = ex.export_model(path, out, fmt)
        assert max(result["max_abs_diff"].values()) <= 1e-4
        np.testing.assert_allclose(open_exported(out)(pixels([sample], 6, 6)), want, atol=1e-5)
    pred = SavedModelPredictor(str(tmp_path / "sm"))
    assert pred.meta["planes"] == 6 and pred.meta["input"]["shape"] == [None, *SIZE, 6]
    np.testing.assert_allclose(pred.predict_bytes([sample]), want, atol=1e-5)   # [B, planes] strings


def test_ema_trained_model_exports_its_saved_weights(tmp_path):
    path = tiny_model(tmp_path / "ema.keras", "per-class", ema=True)
    x = pixels([encode_image(random_image(20), "png")])
    result = ex.export_model(path, str(tmp_path / "m.onnx"), "onnx")
    assert result["max_abs_diff"]["serve"] <= 1e-4
    np.testing.assert_allclose(open_exported(str(tmp_path / "m.onnx"))(x), keras_probs(path, x), atol=1e-5)


def test_adapted_normalization_layer_exports_to_onnx(tmp_path):
    # without export_formats._normalization_as_constants the .onnx asks for .../Sub/y:0 as an input
    path = tiny_model(tmp_path / "norm.h5", normalization=True)
    result = ex.export_model(path, str(tmp_path / "m.onnx"), "onnx")
    assert result["max_abs_diff"]["serve"] <= 1e-4
    pred = open_exported(str(tmp_path / "m.onnx"))
    assert [i.name for i in pred.session.get_inputs()] == ["image"]


def test_tuned_thresholds_go_into_the_metadata(models, tmp_path):
    from utils.detect.thresholds import save_thresholds, thresholds_path

    src = str(tmp_path / "ml.h5")
    tiny_model(src, "sigmoid")
    save_thresholds(thresholds_path(src), CLASSES, [0.3, 0.6, 0.45], "f1", 0.8)
    ex.export_model(src, str(tmp_path / "m.tflite"), "litert")
    assert open_exported(str(tmp_path / "m.tflite")).meta["thresholds"] == [0.3, 0.6, 0.45]


@pytest.mark.parametrize("quantize", ["dynamic", "float16"])
def test_quantized_litert_within_its_looser_bound(models, tmp_path, capsys, quantize):
    out = str(tmp_path / f"{quantize}.tflite")
    result = ex.export_model(models["per-class"], out, "litert", quantize=quantize)
    assert result["bound"] == ex.QUANT_BOUND[quantize] and result["max_abs_diff"]["serve"] <= result["bound"]
    assert f"litert ({quantize}): max |prob - keras|" in capsys.readouterr().out
    assert open_exported(out).meta["quantize"] == quantize


def test_keras_saved_model_folder_opens_with_its_name_json(models, tmp_path):
    # detect.py already reads `model.export()` folders with model_save/x.json beside them
    m = keras.models.load_model(models["per-class"], compile=False)
    folder = str(tmp_path / "plain")
    m.export(folder, verbose=False)
    save_meta(folder, json.load(open(models["per-class"][:-3] + ".json")))
    x = pixels([encode_image(random_image(30), "png"), encode_image(random_image(31), "png")])
    pred = open_exported(folder)
    assert not pred.has_bytes_signature
    np.testing.assert_allclose(pred(x), keras_probs(models["per-class"], x), atol=1e-6)  # output_0.. in order


# ----------------------------------------------------------------------------- bad input

def test_bad_requests_are_one_line_each(models, tmp_path):
    src = models["softmax"]
    with pytest.raises(UsageError) as e:
        ex.export_model(src, str(tmp_path / "x"), "tensorrt")
    assert one_line(e).startswith("unknown export format 'tensorrt'; valid formats: saved_model, onnx, litert")
    with pytest.raises(UsageError) as e:
        ex.export_model(src, str(tmp_path / "x.bin"), "onnx")
    assert "ending in .onnx" in one_line(e)
    with pytest.raises(UsageError) as e:
        ex.export_model(src, str(tmp_path / "x.onnx"), "onnx", quantize="dynamic")
    assert "--quantize is for the litert format" in one_line(e)
    with pytest.raises(UsageError) as e:
        ex.export_model(src, str(tmp_path / "x.tflite"), "litert", quantize="int4")
    assert "unknown --quantize 'int4'" in one_line(e)
    with pytest.raises(UsageError) as e:
        ex.export_model(str(tmp_path / "missing.h5"), str(tmp_path / "x.onnx"), "onnx")
    assert one_line(e) == f"model not found: {tmp_path / 'missing.h5'}"
    bare = tmp_path / "bare.h5"
    keras.models.load_model(src, compile=False).save(bare)
    with pytest.raises(UsageError) as e:
        ex.export_model(str(bare), str(tmp_path / "x.onnx"), "onnx")
    assert one_line(e).startswith(f"no metadata for {bare}")
    assert os.listdir(tmp_path) == ["bare.h5"]


def test_existing_output_needs_overwrite_and_is_replaced_only_by_a_checked_one(models, tmp_path):
    out = tmp_path / "m.onnx"
    out.write_bytes(b"old")
    with pytest.raises(UsageError) as e:
        ex.export_model(models["softmax"], str(out), "onnx")
    assert one_line(e) == f"{out} exists: pass --overwrite to replace it"
    ex.export_model(models["softmax"], str(out), "onnx", overwrite=True)
    assert out.read_bytes() != b"old" and isinstance(open_exported(str(out)), OnnxPredictor)
    folder = tmp_path / "sm"
    folder.mkdir()
    with pytest.raises(UsageError):
        ex.export_model(models["softmax"], str(folder), "saved_model")
    ex.export_model(models["softmax"], str(folder), "saved_model", overwrite=True)
    assert (folder / "saved_model.pb").is_file() and (folder / "metadata.json").is_file()


def test_failed_check_fails_in_one_line_and_leaves_nothing(models, tmp_path, monkeypatch):
    monkeypatch.setattr(ex, "FLOAT_BOUND", -1.0)
    for fmt in ("saved_model", "litert"):
        out = tmp_path / OUT[fmt]
        with pytest.raises(UsageError) as e:
            ex.export_model(models["sigmoid"], str(out), fmt)
        assert one_line(e).startswith(f"{fmt} export differs from Keras by ") and one_line(e).endswith("not written")
    assert os.listdir(tmp_path) == []
    # a failed check keeps the previous artifact
    monkeypatch.setattr(ex, "FLOAT_BOUND", 1e-4)
    ex.export_model(models["sigmoid"], str(tmp_path / "m.onnx"), "onnx")
    before = (tmp_path / "m.onnx").read_bytes()
    monkeypatch.setattr(ex, "FLOAT_BOUND", -1.0)
    with pytest.raises(UsageError):
        ex.export_model(models["softmax"], str(tmp_path / "m.onnx"), "onnx", overwrite=True)
    assert (tmp_path / "m.onnx").read_bytes() == before and sorted(os.listdir(tmp_path)) == ["m.onnx", "m.onnx.json"]


def test_lambda_layer_refused_unless_unsafe(tmp_path):
    path = tiny_model(tmp_path / "lam.h5", lam=True)
    with pytest.raises(UsageError) as e:
        ex.export_model(path, str(tmp_path / "m.onnx"), "onnx")
    assert one_line(e).startswith(f"refusing {path}: it contains a Lambda layer (my_lambda)")
    assert "--unsafe" in one_line(e)
    result = ex.export_model(path, str(tmp_path / "m.onnx"), "onnx", unsafe=True)
    assert result["max_abs_diff"]["serve"] <= 1e-4


@pytest.mark.parametrize("fmt,module", [("onnx", "onnxruntime"), ("onnx", "tf2onnx"),
                                        ("litert", "ai_edge_litert.interpreter")])
def test_runtime_not_installed_is_one_line(models, tmp_path, monkeypatch, fmt, module):
    monkeypatch.setitem(sys.modules, module, None)   # `import module` now raises ImportError
    with pytest.raises(UsageError) as e:
        ex.export_model(models["softmax"], str(tmp_path / OUT[fmt]), fmt)
    assert f"needs the {module} package, which is not installed (pip install " in one_line(e)
    assert os.listdir(tmp_path) == []


def test_open_exported_refuses_what_it_cannot_run(models, tmp_path):
    with pytest.raises(UsageError) as e:
        open_exported(models["softmax"])
    assert "not an exported model" in one_line(e)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError) as e:
        open_exported(str(tmp_path / "empty"))
    assert "without saved_model.pb" in one_line(e)
    with pytest.raises(UsageError) as e:
        open_exported(str(tmp_path / "nothing.onnx"))
    assert one_line(e) == f"model not found: {tmp_path / 'nothing.onnx'}"
    ex.export_model(models["softmax"], str(tmp_path / "m.onnx"), "onnx")
    os.remove(tmp_path / "m.onnx.json")
    with pytest.raises(UsageError) as e:
        open_exported(str(tmp_path / "m.onnx"))
    assert one_line(e).startswith(f"no metadata for {tmp_path / 'm.onnx'}")


# ----------------------------------------------------------------------------- a real backbone

@pytest.mark.slow
def test_real_backbone_per_class_six_channels_in_every_format(tmp_path):
    """EfficientNetB0 (Normalization layer inside) behind the 6 -> 3 ChannelAdapter, per-class head."""
    from model.build import build_model
    from model.heads import output_names

    m = build_model("efficientnetb0", 3, input_size=32, channels=6, weights="none", head="per-class",
                    class_names=CLASSES)
    path = str(tmp_path / "effb0.keras")
    m.save(path)
    save_meta(path, {"class_names": CLASSES, "input_size": [32, 32], "channels": 6, "planes": 6,
                     "head": "per-class", "multi_label": True, "outputs": output_names("per-class", 3, CLASSES)})
    loaded = ex.load_for_export(path)  # once: the three exports share the loaded backbone
    for fmt in ("saved_model", "onnx", "litert"):
        result = ex.export_model(path, str(tmp_path / OUT[fmt]), fmt, loaded=loaded)
        assert max(result["max_abs_diff"].values()) <= 1e-4, result
