"""Makers for the detect tests: tiny saved models, image folders, dataset folders, CLI runs.

Models are built by hand (float [0, 255] input -> rescaling or our Preprocess layer ->
tiny conv -> head), trained one step (or not, or with EMA) and saved as train.py would (model file + NAME.json via model/meta.py), so the
tests do not depend on the backbones; test_cli has one slow test with model.build.
"""
import csv
import os

import keras
import numpy as np

import detect
from model.heads import output_names
from model.layers import ChannelAdapter, Preprocess
from model.meta import save_meta
from tests.conftest import encode_image, random_image, write_dataset
from utils.dataset import schema
from utils.errors import run_cli

CLASSES = ["red", "green", "blue"]


def image_bytes(seed=0, fmt="png", size=40):
    """A random blocky image (asymmetric, so flips and crops change predictions), encoded."""
    return encode_image(random_image(seed, size, size), fmt)


def write_class_folder(root, per_class=3, classes=CLASSES):
    """root/<class>/<class><i>.png, every image different."""
    for j, c in enumerate(classes):
        os.makedirs(root / c, exist_ok=True)
        for i in range(per_class):
            (root / c / f"{c}{i}.png").write_bytes(image_bytes(seed=10 * j + i))
    return root


def tiny_model(path, class_names=CLASSES, *, size=(32, 32), head="softmax", arch="conv", lam=False, seed=0,
               channels=3, preprocess="none", normalization=False, fit="step", filters=4, meta=None):
    """Build, fit, save `path` (.h5 / .keras / folder = SavedModel) and its NAME.json.

    Args:
        preprocess: "none": Rescaling(1/255) in front; a model/layers.Preprocess mode (e.g. "torch"):
            that layer, after a ChannelAdapter to 3 channels if `channels` != 3, as train.py builds.
        normalization: an adapted keras Normalization after it, as every EfficientNet has.
        fit: "step": one Adam step; "ema": two epochs with EMA, saved compiled (the file holds the
            optimizer's EMA copies too); None: random weights, saved uncompiled.
        filters: of the "conv" architecture's one strided conv.
        meta: more NAME.json fields.
    Returns:
        `path`, as a str.
    """
    keras.utils.set_random_seed(seed)
    k = len(class_names)
    inp = keras.Input((*size, channels), name="image")
    if preprocess == "none":
        x = keras.layers.Rescaling(1.0 / 255)(inp)
    else:
        x = ChannelAdapter(3, name="input_adapter")(inp) if channels != 3 else inp
        x = Preprocess(preprocess, name="preprocess")(x)
    if normalization:
        norm = keras.layers.Normalization(axis=-1, name="norm")
        norm.adapt(np.random.default_rng(5).normal(0, 2, (8, *size, 3)).astype("float32"))
        x = norm(x)
    if lam:
        x = keras.layers.Lambda(lambda t: t * 1.0, name="my_lambda")(x)
    if arch == "conv":
        x = keras.layers.Conv2D(filters, 3, strides=2, activation="relu")(x)
        x = keras.layers.GlobalAveragePooling2D()(x)
    else:   # a different architecture: pooled pixels straight into a dense layer
        x = keras.layers.AveragePooling2D(8)(x)
        x = keras.layers.Flatten()(x)
        x = keras.layers.Dense(8, activation="relu")(x)
    names = output_names(head, k, list(class_names))
    y_rng = np.random.default_rng(1)
    if head == "per-class":
        outs = [keras.layers.Dense(1, activation="sigmoid", name=n)(x) for n in names]
        loss = ["binary_crossentropy"] * k
        y = [y_rng.integers(0, 2, (4, 1)).astype("float32") for _ in names]
    else:
        outs = keras.layers.Dense(k, activation="softmax" if head == "softmax" else "sigmoid", name="probs")(x)
        loss = "categorical_crossentropy" if head == "softmax" else "binary_crossentropy"
        y = np.eye(k, dtype="float32")[[0, 1, 2, 0][:4] if k >= 3 else [0, 1, 0, 1]]
    model = keras.Model(inp, outs)
    xs = np.random.default_rng(2).uniform(0, 255, (4, *size, channels)).astype("float32")
    if fit == "step":
        model.compile(optimizer="adam", loss=loss)
        model.train_on_batch(xs, y)
    elif fit == "ema":
        model.compile(optimizer=keras.optimizers.Adam(0.01, use_ema=True, ema_momentum=0.5), loss=loss)
        model.fit(xs, y, epochs=2, batch_size=4, verbose=0)  # fit swaps the EMA weights in at its end
    path = str(path)
    if path.endswith((".h5", ".keras")):
        model.save(path)
    else:
        model.export(path, verbose=False)
    save_meta(path, {"name": os.path.basename(path), "architecture": f"tiny_{arch}", "class_names": list(class_names),
                     "input_size": list(size), "channels": channels, "planes": 1 if channels == 3 else channels,
                     "preprocess": preprocess, "head": head,
                     "multi_label": head != "softmax", "outputs": names, "thresholds": None, **(meta or {})})
    return path


def write_split(root, class_names, samples, *, split="val", multi_label=False, planes=1):
    """A data/NAME folder with one shard of `samples` = [(source_id, encoded (or planes), label ids)]."""
    records = [schema.serialize(data if planes > 1 else [data], "png", 40, 40, 1 if planes > 1 else 3, labels, sid)
               for sid, data, labels in samples]
    write_dataset(root, {split: [records]}, class_names=class_names, multi_label=multi_label, planes=planes,
                  channels=3 if planes == 1 else planes)
    return root


def run(argv, capsys):
    """detect.py in-process -> (exit code, stdout, stderr)."""
    code = run_cli(detect.main, [*argv, "--no-progress"])
    out, err = capsys.readouterr()
    return code, out, err


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def probs_of(path):
    """A --format probs CSV -> {id: probabilities}."""
    rows = read_csv(path)
    return {r[0]: np.array([float(v) for v in r[1:]]) for r in rows[1:]}
