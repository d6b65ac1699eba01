"""utils/detect/models.py: model configs, the Lambda refusal, output matrices, ensembles."""
import pytest

from tests.detect.common import tiny_model
from utils.detect.models import (Member, check_ensemble, lambda_layers, open_predictor, outputs_to_matrix,
                                 parse_weights, read_model_config)
from utils.errors import UsageError


def test_savedmodel_outputs_in_numeric_order():
    import tensorflow as tf

    out = {f"output_{i}": tf.fill([2, 1], float(i)) for i in range(12)}
    m = outputs_to_matrix(out, ["c000_a"]).numpy()
    assert m.shape == (2, 12) and m[0].tolist() == [float(i) for i in range(12)]


def test_lambda_layers_found_in_nested_configs():
    config = {"class_name": "Functional", "config": {"layers": [
        {"class_name": "Dense", "config": {"name": "d"}},
        {"class_name": "Functional", "config": {"layers": [{"class_name": "Lambda", "config": {"name": "inner"}}]}}]}}
    assert lambda_layers(config) == ["inner"]


def test_model_file_checks_without_keras(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    with pytest.raises(UsageError, match="folder without saved_model.pb"):
        read_model_config(str(folder))
    weights_only = tmp_path / "w.h5"
    import h5py

    with h5py.File(weights_only, "w") as f:
        f.attrs["other"] = 1
    with pytest.raises(UsageError, match="weights only"):
        read_model_config(str(weights_only))


def test_parse_weights():
    assert parse_weights(None, 4) == [0.25] * 4
    assert parse_weights("3,1", 2) == [0.75, 0.25]
    for text, msg in (("a,b", "numbers separated"), ("1", "1 values for 2"), ("0,0", "not all 0"), ("-1,2", ">= 0")):
        with pytest.raises(UsageError, match=msg):
            parse_weights(text, 2)


class _Meta:
    def __init__(self, path, **meta):
        self.path, self.meta = path, {"class_names": ["a", "b"], "input_size": [8, 8], **meta}


def test_ensemble_members_must_agree():
    check_ensemble([Member(_Meta("x")), Member(_Meta("y", channels=1, input_size=[16, 16]))])
    with pytest.raises(UsageError, match=r"class lists differ: x has 2 classes, y has 3 \(first difference at index 2\)"):
        check_ensemble([Member(_Meta("x")), Member(_Meta("y", class_names=["a", "b", "c"]))])
    with pytest.raises(UsageError, match="reads 1 planes per sample, y reads 6"):
        check_ensemble([Member(_Meta("x")), Member(_Meta("y", planes=6))])
    with pytest.raises(UsageError, match="cannot average a multi-label and a single-label"):
        check_ensemble([Member(_Meta("x")), Member(_Meta("y", head="sigmoid"))])


def test_open_predictor_follows_the_contract(tmp_path):
    """A Keras model becomes predictor(x) -> [B, K] with .meta and .path; metadata problems are one line."""
    import numpy as np

    path = tiny_model(tmp_path / "t.keras", head="per-class")
    predictor = open_predictor(path)
    assert predictor.path == path and predictor.meta["head"] == "per-class"
    out = np.asarray(predictor(np.zeros((2, 32, 32, 3), np.float32)))
    assert out.shape == (2, 3)
    (tmp_path / "t.json").write_text("{")
    with pytest.raises(UsageError, match="t.json is not valid JSON"):
        open_predictor(path)
    (tmp_path / "t.json").write_text('{"class_names": ["a"]}')
    with pytest.raises(UsageError, match="lacks input_size"):
        open_predictor(path)
    (tmp_path / "t.json").unlink()
    with pytest.raises(UsageError, match="no metadata for"):
        open_predictor(path)
