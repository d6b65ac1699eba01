"""--find-lr: the sweep's LRs, smoothing, stop on divergence, the suggestion, the CLI run."""
import csv
import math
import os
import re

import numpy as np
import pytest

from tests.train.test_cli import bad, data, quick, run_main, tiny  # noqa: F401 - fixtures
from utils.errors import UsageError
from utils.train import config, lr_finder


def test_lr_steps_are_exponential_from_min_to_max():
    lrs = [lr_finder.lr_at(i, 5, 1e-4, 1.0) for i in range(5)]
    assert lrs == pytest.approx([1e-4, 1e-3, 1e-2, 1e-1, 1.0])


def test_smoothing_is_bias_corrected():
    assert lr_finder.smooth([2.0, 2.0, 2.0]) == pytest.approx([2.0, 2.0, 2.0])  # no pull towards 0
    assert lr_finder.diverged(4.1, 1.0) and not lr_finder.diverged(3.9, 1.0) and lr_finder.diverged(math.nan, 1.0)


def test_suggestion_is_the_steepest_descent_before_the_minimum():
    lrs = np.logspace(-6, 0, 61)
    x = np.log10(lrs)
    # falls fastest at lr 1e-3 (a logistic step centred there), minimum at 1e-1, rises after
    loss = 2.0 - 1.0 / (1 + np.exp(-4 * (x + 3))) + np.where(x > -1, (x + 1) ** 2 * 5, 0)
    assert lr_finder.suggest(lrs, loss) == pytest.approx(1e-3, rel=0.3)
    assert lr_finder.suggest([1e-3, 1e-2], [1.0, 2.0]) == 1e-3  # too few points: the minimum's LR


class Exploding:
    """A stand-in model: loss 1 until the LR passes 1, then it grows with the LR."""

    class Opt:
        learning_rate = None

    def __init__(self):
        self.optimizer = self.Opt()

    def train_on_batch(self, x, y, return_dict):
        lr = self.optimizer.learning_rate
        return {"loss": 1.0 if lr < 1 else 1.0 + lr}


def test_sweep_stops_when_the_loss_diverges():
    batches = iter(lambda: (None, None), 0)
    out = lr_finder.sweep(Exploding(), batches, 1e-3, 1e6, 100)
    assert out["diverged"] and len(out["lr"]) < 100
    assert out["smoothed"][-1] > 4 * min(out["smoothed"])
    assert 1e-3 <= lr_finder.suggest(out["lr"][:-1], out["smoothed"][:-1]) <= 1e6


def test_bad_lr_range_and_resume():
    with pytest.raises(UsageError, match="0 < MIN < MAX"):
        config.parse_lr_range("10,1e-7")
    with pytest.raises(UsageError, match="must be MIN,MAX"):
        config.parse_lr_range("fast")


def test_find_lr_with_resume_is_one_line(tiny, data, capsys):
    assert "--find-lr starts from fresh weights and saves nothing: drop --resume" in \
        bad(quick(data, "--find-lr", "--resume"), capsys)


@pytest.mark.slow
def test_find_lr_run_diverges_writes_the_plot_and_saves_no_model(tiny, data, capsys):
    code, out, err = run_main(quick(data, "--find-lr", "--find-lr-range", "1e-4,1e8", "--find-lr-steps", "60",
                                    "--optimizer", "sgd", "--out", "model_save/f.h5"), capsys)
    assert code == 0, err
    rows = list(csv.DictReader(open("log/f/lr_find.csv")))
    assert 2 <= len(rows) < 60 and "stopped: the loss diverged" in out  # a huge LR range must blow up
    suggested = float(re.search(r"suggested --lr (\S+)", out).group(1))
    assert 1e-4 <= suggested <= float(rows[-1]["lr"])
    assert os.path.getsize("log/f/lr_find.png") > 1000
    assert not [f for f in os.listdir("model_save") if f.startswith("f.")]  # nothing saved, no resume state
