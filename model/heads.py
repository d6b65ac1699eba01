"""Classification heads on top of pooled backbone features.

  softmax   single label: Dense(K) + softmax, output "probs"
  sigmoid   multi-label, one output: Dense(K) + sigmoid, output "probs"
  per-class multi-label, JD-fashion style: one small head per class, each its own
            named output [B, 1] with its own loss and loss weight

Every trainable head layer is named "head_*", so `--layers 'head_|conv5'`
style regexes can select the head. The final activation runs in float32 so
mixed-precision training never produces float16 probabilities (log(0) in the loss).
"""
from __future__ import annotations

import re

import keras

from utils.errors import UsageError
from utils.input.labels import HEADS


def check_head(head: str) -> str:
    """`head` itself when it is one of utils.input.labels.HEADS.

    Raises:
        UsageError: any other name; the message lists the valid heads.
    """
    if head not in HEADS:
        raise UsageError(f"unknown head {head!r}; valid heads: {', '.join(HEADS)}")
    return head


def _sanitise(name: str, limit: int = 40) -> str:
    """A class name -> the [A-Za-z0-9_] fragment allowed in a Keras/HDF5 layer name."""
    s = re.sub(r"[^A-Za-z0-9_]+", "_", str(name)).strip("_")
    return s[:limit].rstrip("_")


def output_names(head: str, num_classes: int, class_names: list[str] | None = None) -> list[str]:
    """Model output names in order: ["probs"], or per class "c000_<sanitised name>".

    The index prefix makes names unique (two classes may sanitise alike) and keeps
    them in class order when sorted.

    Raises:
        UsageError: an unknown head, or class_names not num_classes long.
    """
    check_head(head)
    if head != "per-class":
        return ["probs"]
    if class_names is not None and len(class_names) != num_classes:
        raise UsageError(f"{len(class_names)} class names for {num_classes} classes")
    width = max(3, len(str(num_classes - 1)))
    out = []
    for i in range(num_classes):
        frag = _sanitise(class_names[i]) if class_names is not None else ""
        out.append(f"c{i:0{width}d}" + (f"_{frag}" if frag else ""))
    return out


def _features(x, dropout: float, head_bn: bool):
    """Shared regularisation on the pooled features, before any head."""
    if head_bn:
        x = keras.layers.BatchNormalization(name="head_bn")(x)
    if dropout > 0:
        x = keras.layers.Dropout(dropout, name="head_dropout")(x)
    return x


def dense_head(x, num_classes: int, activation: str, *, dropout: float = 0.2, head_bn: bool = False):
    """Softmax or sigmoid over one Dense(K): the single-output heads differ only in activation."""
    x = _features(x, dropout, head_bn)
    x = keras.layers.Dense(num_classes, name="head_logits")(x)
    return keras.layers.Activation(activation, dtype="float32", name="probs")(x)


def per_class_head(x, names: list[str], *, dropout: float = 0.2, head_bn: bool = False, units: int = 64):
    """One Dense(units, relu) -> Dropout -> Dense(1) -> sigmoid branch per class."""
    x = _features(x, dropout, head_bn)
    outputs = []
    for name in names:
        h = keras.layers.Dense(units, activation="relu", name=f"head_{name}_fc")(x)
        if dropout > 0:
            h = keras.layers.Dropout(dropout, name=f"head_{name}_dropout")(h)
        h = keras.layers.Dense(1, name=f"head_{name}_logit")(h)
        outputs.append(keras.layers.Activation("sigmoid", dtype="float32", name=name)(h))
    return outputs


def build_head(x, head: str, num_classes: int, *, dropout: float = 0.2, head_bn: bool = False,
               class_names: list[str] | None = None, units: int = 64):
    """Pooled features [B, F] -> the model output(s) for `head`.

    Args:
        head: softmax, sigmoid or per-class (module docstring).
        dropout: before the classifier (and inside each per-class branch).
        head_bn: a BatchNormalization on the pooled features first.
        class_names: name the per-class outputs (output_names).
        units: width of each per-class branch's hidden layer.

    Returns:
        one output tensor, or a list of [B, 1] tensors for per-class.

    Raises:
        UsageError: an unknown head or a dropout outside [0, 1).
    """
    check_head(head)
    if not 0.0 <= dropout < 1.0:
        raise UsageError(f"dropout must be in [0, 1), not {dropout}")
    if head != "per-class":
        return dense_head(x, num_classes, head, dropout=dropout, head_bn=head_bn)  # head name = activation
    names = output_names(head, num_classes, class_names)
    return per_class_head(x, names, dropout=dropout, head_bn=head_bn, units=units)
