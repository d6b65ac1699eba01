"""utils/train/distribute.py: strategy choice from --strategy and TF_CONFIG, the chief."""
import pytest
import tensorflow as tf

from utils.errors import UsageError
from utils.train import distribute


def test_strategy_and_chief(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert distribute.is_chief() and not distribute.is_distributed(distribute.make_strategy("auto"))
    assert distribute.make_strategy("none") is tf.distribute.get_strategy()
    with pytest.raises(UsageError, match="needs TF_CONFIG"):
        distribute.make_strategy("multiworker")
    cluster = {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}
    assert distribute.is_chief({"cluster": cluster, "task": {"type": "worker", "index": 0}})
    assert not distribute.is_chief({"cluster": cluster, "task": {"type": "worker", "index": 1}})
    assert not distribute.is_chief({"cluster": dict(cluster, chief=["h:3"]), "task": {"type": "worker", "index": 0}})
