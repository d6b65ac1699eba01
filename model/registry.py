"""Backbone registry: one table from a model name to how to build and feed it.

Like timm's `create_model`, an unknown name fails with the list of valid ones,
so a typo on the command line is a one-line error, not a KeyError.

`preprocess` names the normalisation the backbone was trained with; it is
applied INSIDE our model by `model.layers.Preprocess` (the pipeline always
yields float32 RGB in [0, 255]):
  "torch": x/255, then ImageNet mean/std        (DenseNet)
  "tf":    x/127.5 - 1, i.e. [-1, 1]            (InceptionV3)
  "caffe": RGB -> BGR, minus ImageNet BGR mean  (ResNet50)
  "none":  the backbone normalises itself       (EfficientNet, EfficientNetV2)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import keras

from utils.errors import UsageError


@dataclass(frozen=True)
class ModelSpec:
    """How to build and feed one backbone.

    Attributes:
        name: the registry (command-line) name.
        constructor: a keras.applications function (include_top=False is passed).
        default_size: the ImageNet training resolution: the sensible default input size.
        min_size: smallest input side keras.applications accepts.
        preprocess: "torch", "tf", "caffe" or "none" (see the module docstring).
    """

    name: str
    constructor: Callable
    default_size: int
    min_size: int
    preprocess: str


# name: (keras.applications attribute, default size, min size, preprocess)
_TABLE = {
    "densenet121": ("DenseNet121", 224, 32, "torch"),
    "densenet169": ("DenseNet169", 224, 32, "torch"),
    "densenet201": ("DenseNet201", 224, 32, "torch"),
    "inceptionv3": ("InceptionV3", 299, 75, "tf"),
    "resnet50": ("ResNet50", 224, 32, "caffe"),
    "efficientnetb0": ("EfficientNetB0", 224, 32, "none"),
    "efficientnetb1": ("EfficientNetB1", 240, 32, "none"),
    "efficientnetb2": ("EfficientNetB2", 260, 32, "none"),
    "efficientnetb3": ("EfficientNetB3", 300, 32, "none"),
    "efficientnetb4": ("EfficientNetB4", 380, 32, "none"),
    "efficientnetb5": ("EfficientNetB5", 456, 32, "none"),
    "efficientnetb6": ("EfficientNetB6", 528, 32, "none"),
    "efficientnetb7": ("EfficientNetB7", 600, 32, "none"),
    "efficientnetv2b0": ("EfficientNetV2B0", 224, 32, "none"),
    "efficientnetv2b1": ("EfficientNetV2B1", 240, 32, "none"),
    "efficientnetv2b2": ("EfficientNetV2B2", 260, 32, "none"),
    "efficientnetv2b3": ("EfficientNetV2B3", 300, 32, "none"),
    "efficientnetv2s": ("EfficientNetV2S", 384, 32, "none"),
}

# `import model` has loaded Keras already (model/__init__.py), so no lazy lookup is needed here
_SPECS = {
    name: ModelSpec(name, getattr(keras.applications, attr), default, minimum, prep)
    for name, (attr, default, minimum, prep) in _TABLE.items()
}


def names() -> list[str]:
    """All registered model names, in table order."""
    return list(_SPECS)


def get(name: str) -> ModelSpec:
    """The spec for `name` (case-insensitive).

    Raises:
        UsageError: an unknown name; the message lists the valid ones.
    """
    key = str(name).strip().lower()
    if key not in _SPECS:
        raise UsageError(f"unknown model {name!r}; valid names: {', '.join(names())}")
    return _SPECS[key]
