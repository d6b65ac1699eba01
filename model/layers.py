"""Custom layers that live inside saved models (registered, no Python lambdas).

Everything a saved model needs to turn pipeline pixels (float32 RGB in [0, 255])
into what its backbone expects is a layer here, so `import model` followed by
`keras.models.load_model(path)` gives a model that detect.py can feed raw pixels,
and Keras's safe_mode (which refuses Lambda layers) still loads it.

Inputs with other than 3 channels (6-channel microscopy): we put a learned 1x1
projection C -> 3 (`ChannelAdapter`) in FRONT of an unchanged backbone, rather
than rebuilding the backbone's first convolution. Why:
  * the backbone stays exactly the keras.applications graph, so ImageNet or
    local weights load into it untouched, for every architecture alike (first-conv
    surgery differs per family, and EfficientNet normalises with 3-channel
    statistics before its stem, which a 6-channel stem would bypass);
  * it is initialised as an average of channel groups (6 channels -> RGB = means
    of channels {0,1}, {2,3}, {4,5}), so at step 0 the backbone sees a plausible
    image in [0, 255] and the pretrained features are immediately useful;
  * a learned per-input-channel gain (init 1) comes first, applied to x/255:
    microscopy stains differ in brightness, and working at [0, 1] scale keeps
    the projection's gradients comparable to the rest of the network instead of
    255x larger.
"""
from __future__ import annotations

import keras
import numpy as np
from keras import ops

PACKAGE = "imgcls"

# ImageNet statistics as the original training code used them.
_TORCH_MEAN = (0.485, 0.456, 0.406)  # RGB, of x/255
_TORCH_STD = (0.229, 0.224, 0.225)
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)  # BGR, of x in [0, 255]

PREPROCESS_MODES = ("torch", "tf", "caffe", "none")


@keras.saving.register_keras_serializable(package=PACKAGE)
class Preprocess(keras.layers.Layer):
    """Backbone normalisation of float RGB in [0, 255]; see model/registry.py for modes."""

    def __init__(self, mode: str = "none", **kwargs):
        super().__init__(**kwargs)
        if mode not in PREPROCESS_MODES:
            raise ValueError(f"preprocess mode must be one of {PREPROCESS_MODES}, not {mode!r}")
        self.mode = mode

    def call(self, x):
        if self.mode == "torch":
            mean = ops.convert_to_tensor(np.array(_TORCH_MEAN) * 255.0, dtype=x.dtype)
            std = ops.convert_to_tensor(np.array(_TORCH_STD) * 255.0, dtype=x.dtype)
            return (x - mean) / std
        if self.mode == "tf":
            return x / 127.5 - 1.0
        if self.mode == "caffe":
            mean = ops.convert_to_tensor(_CAFFE_MEAN_BGR, dtype=x.dtype)
            return ops.flip(x, axis=-1) - mean
        return x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


def group_average_kernel(in_channels: int, out_channels: int = 3) -> np.ndarray:
    """[C_in, C_out] matrix whose output j is the mean of a contiguous group of inputs.

    C_in >= C_out: inputs split into C_out near-equal consecutive groups.
    C_in <  C_out: output j copies input j % C_in (gray -> R=G=B).
    """
    k = np.zeros((in_channels, out_channels), np.float32)
    if in_channels >= out_channels:
        groups = [c * out_channels // in_channels for c in range(in_channels)]
        for c, g in enumerate(groups):
            k[c, g] = 1.0 / groups.count(g)
    else:
        for j in range(out_channels):
            k[j % in_channels, j] = 1.0
    return k


@keras.saving.register_keras_serializable(package=PACKAGE)
class ChannelAdapter(keras.layers.Layer):
    """[B, H, W, C] in [0, 255] -> [B, H, W, 3] in about [0, 255] (see module docstring).

    out = 255 * ((x / 255 * gain) @ kernel + bias); gain init 1, kernel init
    group averages, bias init 0.
    """

    def __init__(self, out_channels: int = 3, **kwargs):
        super().__init__(**kwargs)
        self.out_channels = int(out_channels)

    def build(self, input_shape):
        c = int(input_shape[-1])
        self.gain = self.add_weight(name="gain", shape=(c,), initializer="ones")
        self.kernel = self.add_weight(
            name="kernel",
            shape=(c, self.out_channels),
            initializer=keras.initializers.Constant(group_average_kernel(c, self.out_channels)),
        )
        self.bias = self.add_weight(name="bias", shape=(self.out_channels,), initializer="zeros")

    def call(self, x):
        y = (x / 255.0) * ops.cast(self.gain, x.dtype)
        z = ops.matmul(y, ops.cast(self.kernel, x.dtype)) + ops.cast(self.bias, x.dtype)
        return z * 255.0

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.out_channels)

    def get_config(self):
        return {**super().get_config(), "out_channels": self.out_channels}
