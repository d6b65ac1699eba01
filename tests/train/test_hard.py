"""Hard-example retraining: the sampler's rate, losses.csv, the losses-file checks, the flow end to end.

detect.py --split train --evaluate writes PREFIX.eval/losses.csv; train.py
--hard-examples reads it (utils/train/hard.py) and draws the hard records more
often (utils/input/sampling.py). The end-to-end run uses test_cli's tiny backbone.
"""
import csv
import math

import numpy as np
import pytest

from tests.train.test_cli import CLASSES, quick, run_main, shapes_dataset, tiny  # noqa: F401 - fixture
from utils.errors import DatasetError, UsageError
from utils.train import hard


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return shapes_dataset(str(tmp_path_factory.mktemp("ds") / "shapes"), n_train=30)


def write_losses(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["source_id", "labels", "loss", "predicted"])
        w.writerows([sid, "red", loss, "red"] for sid, loss in rows)
    return str(path)


def train_ids():
    """The source ids shapes_dataset gives its 30 train records (train0-i, train1-i)."""
    return [f"train0-{i}" for i in range(15)] + [f"train1-{i}" for i in range(15)]


def test_hard_probability_and_hardest_ids():
    assert hard.hard_probability(6, 24, 3) == pytest.approx(18 / 42)
    assert hard.hard_probability(5, 5, 1) == 0.5
    rows = [("a", 0.1), ("b", 2.0), ("c", 0.5), ("d", 2.0), ("e", 0.0)]
    assert hard.hardest_ids(rows, 0.4) == {"b", "d"}
    assert hard.hardest_ids(rows, 0.5) == {"b", "d", "c"}     # ceil(2.5) = 3
    assert hard.hardest_ids(rows, 0.01) == {"b"}              # at least one; ties: first in file


@pytest.mark.slow
def test_sampler_draws_hard_records_at_the_asked_rate(data):
    """Count source ids over many draws: the hard share is p within a binomial tolerance,
    and within each kind every record turns up (nothing but the mix changed)."""
    from utils.input.pipeline import make_dataset
    from utils.input.sampling import mixer

    hard_ids = set(train_ids()[::5])  # 6 of 30
    p = hard.hard_probability(6, 24, 3.0)
    ds = make_dataset(data, "train", image_size=16, batch_size=50, training=True, repeat=True, seed=1,
                      with_ids=True, augment="none", records_fn=mixer(hard_ids, p, seed=1))
    ids = [s.decode() for _, _, batch in ds.take(24).as_numpy_iterator() for s in batch]
    n = len(ids)
    assert n == 1200
    share = sum(i in hard_ids for i in ids) / n
    assert abs(share - p) < 4 * math.sqrt(p * (1 - p) / n), (share, p)   # 4 sigma: 0.43 +- 0.057
    assert set(ids) == set(train_ids())
    counts = {i: ids.count(i) for i in set(ids)}
    per_hard = np.mean([c for i, c in counts.items() if i in hard_ids])
    per_rest = np.mean([c for i, c in counts.items() if i not in hard_ids])
    assert 2.0 < per_hard / per_rest < 4.5  # each hard record about 3x as often


def test_losses_csv_columns_and_losses_equal_sample_losses(tmp_path):
    from utils.detect.evaluate import write_losses as write
    from utils.detect.report import sample_losses

    y = np.eye(3)[[0, 1, 2]]
    p = np.array([[.7, .2, .1], [.6, .3, .1], [.1, .1, .8]])
    losses = sample_losses(y, p, False)
    assert write(str(tmp_path / "l.csv"), ["x", "y", "z"], y, p, losses, CLASSES, multi_label=False) == 3
    rows = list(csv.DictReader(open(tmp_path / "l.csv")))
    assert list(rows[0]) == ["source_id", "labels", "loss", "predicted"]
    assert [(r["source_id"], r["labels"], r["predicted"]) for r in rows] == [
        ("x", "red", "red"), ("y", "green", "red"), ("z", "blue", "blue")]
    np.testing.assert_allclose([float(r["loss"]) for r in rows], losses, rtol=1e-5)
    assert hard.read_losses(str(tmp_path / "l.csv"))[1] == ("y", pytest.approx(-math.log(0.3), rel=1e-5))
    # multi-label: names above the thresholds, mean BCE
    ym, pm = np.array([[1, 0, 1]]), np.array([[.9, .6, .2]])
    write(str(tmp_path / "m.csv"), ["q"], ym, pm, sample_losses(ym, pm, True), CLASSES, multi_label=True,
          thresholds=[0.5, 0.5, 0.1])
    r = next(csv.DictReader(open(tmp_path / "m.csv")))
    assert r["labels"] == "red blue" and r["predicted"] == "red green blue"
    assert float(r["loss"]) == pytest.approx(sample_losses(ym, pm, True)[0], rel=1e-5)


def test_bad_losses_files(tmp_path):
    (tmp_path / "nocol.csv").write_text("id,score\na,1\n")
    with pytest.raises(UsageError, match="no source_id, loss column"):
        hard.read_losses(str(tmp_path / "nocol.csv"))
    (tmp_path / "nan.csv").write_text("source_id,labels,loss,predicted\na,red,high,red\n")
    with pytest.raises(UsageError, match="line 2: loss 'high' is not a number"):
        hard.read_losses(str(tmp_path / "nan.csv"))
    with pytest.raises(UsageError, match="No such file"):
        hard.read_losses(str(tmp_path / "absent.csv"))


def test_losses_file_of_another_dataset_is_one_error_line(tiny, data, tmp_path, capsys):  # noqa: F811
    path = write_losses(tmp_path / "other.csv", [(f"prod{i}", float(i)) for i in range(10)])
    code, out, err = run_main(quick(data, "--hard-examples", path, "--epochs", "1"), capsys)
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines() == [
        f"error: --hard-examples {path}: 10 of 10 source ids are not in {data} (first: 'prod0'); "
        "was it written for another dataset?"]
    with pytest.raises(DatasetError, match="no hard record in the training split"):
        hard.prepare({"hard_examples": write_losses(tmp_path / "val.csv", [("val-0", 9.0), ("train0-1", 0.1)]),
                      "hard_fraction": 0.5, "hard_weight": 3.0, "data": data, "fold": None, "seed": 0})
    code, _, err = run_main(quick(data, "--hard-fraction", "1.5"), capsys)
    assert code == 2 and err.startswith("error: --hard-fraction must be in (0, 1)")


@pytest.mark.slow
def test_detect_losses_then_train_on_hard_examples(tiny, data, capsys):  # noqa: F811
    import detect
    from utils.errors import run_cli

    code, _, err = run_main(quick(data, "--epochs", "1", "--out", "model_save/first.h5"), capsys)
    assert code == 0, err
    assert run_cli(detect.main, ["--model", "model_save/first.h5", data, "--split", "train", "--evaluate",
                                 "--out", "pred/train.csv", "--no-progress"]) == 0
    capsys.readouterr()
    rows = list(csv.DictReader(open("pred/train.eval/losses.csv")))
    assert len(rows) == 30 and {r["source_id"] for r in rows} == set(train_ids())
    code, out, err = run_main(quick(data, "--epochs", "1", "--out", "model_save/hard.h5", "--ohem", "0.5",
                                    "--hard-examples", "pred/train.eval/losses.csv"), capsys)
    assert code == 0, err
    import json

    assert json.load(open("model_save/hard.json"))["config"]["ohem"] == 0.5
    p = hard.hard_probability(6, 24, 3.0)
    assert f"hard examples: 6 of 30 training records (the top 20% of 30 losses in pred/train.eval/losses.csv) " \
           f"drawn 3x as often: {p:.0%} of each batch" in out


def test_ohem_keeps_the_hardest_fraction_of_each_batch():
    import keras

    from model import losses

    y = np.eye(3, dtype="float32")[[0, 1, 2, 0]]
    p = np.array([[.9, .05, .05], [.5, .4, .1], [.2, .2, .6], [.1, .1, .8]], "float32")
    per = -np.log(p[np.arange(4), [0, 1, 2, 0]])
    loss, _ = losses.make_loss("softmax", 3, ["probs"], ohem=0.5)
    assert float(loss(y, p)) == pytest.approx(np.sort(per)[-2:].mean(), rel=1e-5)
    full, _ = losses.make_loss("softmax", 3, ["probs"])
    assert float(full(y, p)) == pytest.approx(per.mean(), rel=1e-5)
    assert float(losses.make_loss("softmax", 3, ["probs"], ohem=0.1)[0](y, p)) == pytest.approx(per.max(), rel=1e-5)
    bce, _ = losses.make_loss("sigmoid", 3, ["probs"], ohem=0.25)
    per_b = -(y * np.log(p) + (1 - y) * np.log(1 - p)).mean(axis=1)
    assert float(bce(y, p)) == pytest.approx(per_b.max(), rel=1e-5)
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert again.ohem == 0.5 and float(again(y, p)) == pytest.approx(float(loss(y, p)))
    with pytest.raises(UsageError, match="ohem must be in"):
        losses.make_loss("softmax", 3, ["probs"], ohem=1.5)
