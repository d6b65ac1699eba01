"""Registry: every backbone builds at its minimum size and runs; bad names/sizes are one-line errors."""
import keras
import numpy as np
import pytest

from model import registry
from model.build import _leaf_layers, build_model, resolve_size
from utils.errors import UsageError

EXPECTED = {
    "densenet121", "densenet169", "densenet201", "inceptionv3", "resnet50",
    *(f"efficientnetb{i}" for i in range(8)), *(f"efficientnetv2b{i}" for i in range(4)), "efficientnetv2s",
}


def test_names_are_the_issue_list():
    assert set(registry.names()) == EXPECTED
    assert registry.get("inceptionv3").min_size == 75
    assert registry.get("densenet121").preprocess == "torch"
    assert registry.get("resnet50").preprocess == "caffe"
    assert registry.get("inceptionv3").preprocess == "tf"
    assert registry.get("efficientnetb3").default_size == 300
    assert registry.get("EfficientNetB0").name == "efficientnetb0"  # case-insensitive


def test_unknown_name_lists_valid_names():
    with pytest.raises(UsageError) as e:
        registry.get("densenet122")
    msg = str(e.value)
    assert "densenet122" in msg and "\n" not in msg
    for name in registry.names():
        assert name in msg


def test_size_below_minimum_is_usage_error():
    with pytest.raises(UsageError, match="inceptionv3 needs at least 75x75"):
        build_model("inceptionv3", 2, input_size=(74, 80))
    with pytest.raises(UsageError, match="at least 32x32"):
        resolve_size(registry.get("densenet121"), 31)
    assert resolve_size(registry.get("resnet50"), None) == (224, 224)
    assert resolve_size(registry.get("resnet50"), (40, 48)) == (40, 48)


@pytest.mark.slow  # 18 backbones: about a minute in all
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_backbone_builds_at_min_size_and_runs(name):
    spec = registry.get(name)
    m = build_model(name, 3, input_size=spec.min_size, weights="none")
    x = np.random.default_rng(0).uniform(0, 255, (1, spec.min_size, spec.min_size, 3)).astype("float32")
    y = np.asarray(m(x, training=False))
    assert y.shape == (1, 3)
    np.testing.assert_allclose(y.sum(axis=-1), 1.0, rtol=1e-5)
    assert m.get_layer("backbone") is not None
    # no Python lambdas anywhere: detect.py refuses them in safe mode
    assert not any(isinstance(l, keras.layers.Lambda) for l in _leaf_layers(m))
