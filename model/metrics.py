"""Compile metrics per head.

  softmax    accuracy, and top-5 accuracy when there are at least 10 classes
  sigmoid    macro F1 and F2 at threshold 0.5 (the iMet metric is F2), and AUC
             over all labels (multi_label=True: one ROC per class, averaged)
  per-class  per output: binary accuracy and AUC, as a dict keyed by output name

Fresh metric objects every call: Keras metrics hold state and must not be shared
between outputs or models.
"""
from __future__ import annotations

import keras

from model.heads import check_head


def make_metrics(head: str, num_classes: int, output_names):
    """Fresh compile() metrics for `head` (module docstring): a list, or per-class a dict.

    Raises:
        UsageError: an unknown head.
    """
    check_head(head)
    if head == "softmax":
        metrics = [keras.metrics.CategoricalAccuracy(name="accuracy")]
        if num_classes >= 10:
            metrics.append(keras.metrics.TopKCategoricalAccuracy(k=5, name="top5"))
        return metrics
    if head == "sigmoid":
        return [
            keras.metrics.F1Score(average="macro", threshold=0.5, name="f1"),
            keras.metrics.FBetaScore(average="macro", beta=2.0, threshold=0.5, name="f2"),
            keras.metrics.AUC(multi_label=True, num_labels=num_classes, name="auc"),
        ]
    return {
        name: [keras.metrics.BinaryAccuracy(name="acc"), keras.metrics.AUC(name="auc")]
        for name in output_names
    }
