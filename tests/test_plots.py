"""utils/plots.py: the PNGs exist, are valid, have sensible sizes; helper maths is right."""
import numpy as np
import pytest
from PIL import Image

from utils import plots


def check_png(path, min_side=200, max_side=2000):
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        w, h = im.size
        assert min_side <= w <= max_side and min_side <= h <= max_side, (w, h)
        px = np.asarray(im.convert("L"))
    assert px.std() > 5  # something was drawn, not a blank canvas
    return w, h


def test_image_grid_rgb_gray_and_six_channels(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.uniform(0, 255, (5, 32, 32, 3)).astype(np.float32)
    w, h = check_png(plots.save_image_grid(imgs, [f"class {i}" for i in range(5)], str(tmp_path / "g" / "grid.png")))
    assert w > h  # 3 columns x 2 rows
    check_png(plots.save_image_grid(imgs[..., :1], None, str(tmp_path / "gray.png")), min_side=150)
    six = rng.uniform(0, 40, (2, 16, 16, 6)).astype(np.float32)
    check_png(plots.save_image_grid(six, ["a", "b"], str(tmp_path / "six.png")), min_side=150)
    with pytest.raises(ValueError):
        plots.save_image_grid(np.zeros((0, 8, 8, 3)), [], str(tmp_path / "none.png"))


def test_history_plot_from_epoch_csv(tmp_path):
    csv_path = tmp_path / "epochs.csv"
    lines = ["epoch,accuracy,learning_rate,loss,val_accuracy,val_loss"]
    for e in range(6):
        lines.append(f"{e},{0.5 + 0.05 * e},{0.01 / (e + 1)},{1.0 / (e + 1)},{0.45 + 0.04 * e},{1.1 / (e + 1)}")
    csv_path.write_text("\n".join(lines) + "\n")
    assert plots.history_panels(["epoch", "accuracy", "learning_rate", "loss", "val_accuracy", "val_loss"]) == [
        "loss", "accuracy"]
    w, h = check_png(plots.save_history_plot(str(csv_path), str(tmp_path / "curves.png")))
    assert w > 2 * h  # three panels in a row: loss, accuracy, learning rate
    empty = tmp_path / "empty.csv"
    empty.write_text("epoch,loss,val_loss\n")
    check_png(plots.save_history_plot(str(empty), str(tmp_path / "empty.png")), min_side=150)


def test_confusion_matrix_small_and_most_confused(tmp_path):
    cm = np.array([[5, 1, 0], [2, 7, 0], [0, 0, 9]])
    check_png(plots.save_confusion_matrix(cm, ["cat", "dog", "eel"], str(tmp_path / "cm.png")))
    big = np.diag(np.full(50, 10))
    big[3, 17] = 6
    big[40, 3] = 4
    big[8, 9] = 1
    keep = plots.most_confused(big, 4)
    assert set(keep[:4]) >= {3, 17, 40}  # the classes actually confused
    check_png(plots.save_confusion_matrix(big, [f"c{i}" for i in range(50)], str(tmp_path / "big.png"),
                                          max_classes=30))


def test_pr_curve_maths_and_png(tmp_path):
    p, r, ap = plots.pr_curve([1, 1, 0, 0], [0.9, 0.8, 0.3, 0.1])
    assert ap == pytest.approx(1.0)
    # ranking pos, neg, pos: AP = 0.5 * 1 + 0.5 * 2/3
    _, _, ap = plots.pr_curve([1, 0, 1], [0.9, 0.5, 0.2])
    assert ap == pytest.approx(0.5 + 1 / 3)
    rng = np.random.default_rng(1)
    y = (rng.random((60, 4)) < 0.3).astype(int)
    prob = np.clip(y * 0.5 + rng.random((60, 4)) * 0.6, 0, 1)
    check_png(plots.save_pr_curves(y, prob, ["a", "b", "c", "d"], str(tmp_path / "pr.png")))


def test_history_loss_axis_goes_log_only_for_a_wide_range():
    assert plots._wide_positive_range([1.9, 110.0, 0.6])
    assert not plots._wide_positive_range([1.9, 1.2, 0.6])
    assert not plots._wide_positive_range([0.0, 0.5, 0.9])  # accuracies may be 0: stay linear
