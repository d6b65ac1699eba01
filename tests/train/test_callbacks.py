"""utils/train/callbacks.py: which score is monitored, and what counts as better."""
from utils.train.callbacks import improved, metric_names, pick_monitor


def test_monitor_choice():
    assert pick_monitor(metric_names(["accuracy", "top5"]), "softmax") == ("val_accuracy", "max")
    assert pick_monitor(metric_names({"c0": ["auc"]}), "per-class") == ("val_loss", "min")
    assert improved(0.5, None, "max") and not improved(0.4, 0.5, "max") and improved(0.4, 0.5, "min")
    assert not improved(float("nan"), None, "max")
