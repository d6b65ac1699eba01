"""--progressive / --progressive-batch: the spec, the parts, the one LR schedule, a run
whose dataset changes size at the right epochs, and kill -9 + --resume into the right size."""
import csv
import json
import math
import os
import signal
import time

import pytest

from tests.train.test_cli import bad, data, quick, run_main, runner, tiny  # noqa: F401 - fixtures
from utils.errors import UsageError
from utils.train import config
from utils.train.phases import Phase, parse_progressive, plan_phases, scaled_batch, warp_segments


def cfg(**kw):
    return dict(config.defaults(), data="d", **kw)


def test_parse_progressive():
    assert parse_progressive("128:4,192:4,224", 10) == [(128, 0), (192, 4), (224, 8)]
    assert parse_progressive("224", 3) == [(224, 0)]


@pytest.mark.parametrize("spec, message", [
    ("128:x,224", "bad entry '128:x'"),
    ("128,224", "bad entry '128'"),
    ("192:2,128", "sizes must increase, got 192 then 128"),
    ("128:2,224:3", "the last entry runs to --epochs: write 224, not 224:3"),
    ("128:5,192:5,224", "uses 10 epochs before its last size; --epochs is 10"),
    ("128:0,224", "sizes and epochs must be >= 1"),
])
def test_bad_progressive_spec(spec, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(")):
        parse_progressive(spec, 10)


def test_parts_cut_the_warmup_and_main_phases_with_scaled_batches():
    phases = plan_phases(cfg(epochs=6, warmup_epochs=1, image_size=64, progressive="32:2,48:2,64",
                             progressive_batch=True, batch_size=8))
    assert phases == [Phase("heads", 0, 1, "heads", 1.0, 32, 32), Phase("main", 1, 2, "all", 0.1, 32, 32),
                      Phase("main", 2, 4, "all", 0.1, 48, 14), Phase("main", 4, 6, "all", 0.1, 64, 8)]
    assert scaled_batch(8, 48, 64, replicas=4) == 16  # 14.2 -> a multiple of the replicas
    # without --progressive-batch every part keeps --batch-size
    assert {p.batch_size for p in plan_phases(cfg(epochs=6, image_size=64, progressive="32:2,64"))} == {32}


def test_warp_moves_the_schedule_by_epochs():
    # 2 epochs of 3 steps, then 2 of 4: at the boundary (step 6) the schedule is at 2 epochs = 8 ref steps
    segments = warp_segments([(2, 3), (2, 4)], 4)
    assert segments == [(0, 6, 4 / 3), (6, 8, 1.0)]

    def virtual(step):
        return sum(min(max(step - s, 0), n) * k for s, n, k in segments)

    assert virtual(6) == pytest.approx(8) and virtual(14) == pytest.approx(16) and virtual(3) == pytest.approx(4)


def test_bad_progressive_flags_one_line(tiny, data, capsys):
    assert "sizes must increase" in bad(quick(data, "--progressive", "32:1,24"), capsys)
    assert "tinynet needs sizes >= 16" in bad(quick(data, "--progressive", "8:1,32"), capsys)
    assert "not --progressive's final size 48" in bad(quick(data, "--progressive", "24:1,48"), capsys)
    assert "give --progressive too" in bad(quick(data, "--progressive-batch"), capsys)


def shapes_per_part(monkeypatch):
    """Spy on loop.fit_phase: (first epoch, end, the batch shape its train dataset yields) per call."""
    from utils.train import loop

    seen, fit = [], loop.fit_phase

    def spy(model, phase, datasets, **kw):
        x, _ = next(iter(datasets[0]))
        seen.append((kw["initial_epoch"], phase.end, tuple(x.shape), kw["steps"]))
        fit(model, phase, datasets, **kw)

    monkeypatch.setattr(loop, "fit_phase", spy)
    return seen


@pytest.mark.slow
def test_sizes_change_at_the_right_epochs_under_one_schedule(tiny, data, capsys, monkeypatch):
    import keras

    seen = shapes_per_part(monkeypatch)
    # 30 train records: batch 32 at 16 px (1 step), 14 at 24 px (3 steps), 8 at 32 px (4 steps)
    argv = ["--data", data, "--model", "tinynet", "--weights", "none", "--batch-size", "8", "--epochs", "4",
            "--warmup-epochs", "1", "--finetune-lr-mult", "1", "--lr", "0.01", "--augment", "flip,rrc",
            "--progressive", "16:2,24:1,32", "--progressive-batch", "--out", "model_save/pg.h5"]
    code, out, err = run_main(argv, capsys)
    assert code == 0, err
    assert seen == [(0, 1, (32, 16, 16, 3), 1), (1, 2, (32, 16, 16, 3), 1), (2, 3, (14, 24, 24, 3), 3),
                    (3, 4, (8, 32, 32, 3), 4)]
    assert "progressive: epochs 3-3 at 24 px, batch 14" in err
    rows = list(csv.DictReader(open("log/pg/epochs.csv")))
    assert [r["epoch"] for r in rows] == ["0", "1", "2", "3"]
    # main is ONE cosine over its 3 epochs, moved by epochs although steps per epoch differ:
    # after epoch 2 (1 of 3 main epochs) lr = 0.01 * 0.5 * (1 + cos(pi / 3)), after epoch 3 cos(2 pi / 3)
    lrs = [float(r["lr"]) for r in rows]
    assert lrs[1:] == pytest.approx([0.01 * 0.5 * (1 + math.cos(math.pi * k / 3)) for k in (1, 2, 3)], abs=1e-7)
    meta = json.load(open("model_save/pg.json"))
    assert meta["input_size"] == [32, 32] and meta["history"]["iterations"] == 1 + 3 + 4  # main's optimizer ran on
    assert keras.models.load_model("model_save/pg.h5").input_shape == (None, 32, 32, 3)


@pytest.mark.slow
def test_kill_9_then_resume_in_the_right_size(tiny, data, tmp_path, capsys):
    from utils.train.checkpoint import load_state

    argv = quick(data, "--epochs", "3", "--steps-per-epoch", "30", "--progressive", "16:1,24:1,32",
                 "--out", "model_save/pr.h5")
    state = tmp_path / "model_save" / "pr.resume" / "state.npz"
    p = runner(argv, cwd=tmp_path)
    deadline = time.time() + 200
    while time.time() < deadline and p.poll() is None and not state.exists():
        time.sleep(0.02)
    assert p.poll() is None, "the run ended before it could be killed: " + p.stderr.read()[-500:]
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    done = load_state(str(state.parent))["run"]["epoch"]
    assert done in (1, 2)

    code, _, err = run_main(argv + ["--resume"], capsys)  # in this process (cwd tmp_path): no 2nd TF import
    assert code == 0, err[-2000:]
    assert f"resuming after epoch {done}" in err
    size = {1: 24, 2: 32}[done]
    assert f"progressive: epochs {done + 1}-{done + 1} at {size} px" in err
    assert "at 16 px" not in err  # the finished first size is not trained again
    rows = list(csv.DictReader(open(tmp_path / "log" / "pr" / "epochs.csv")))
    assert [r["epoch"] for r in rows] == ["0", "1", "2"]
    meta = json.load(open(tmp_path / "model_save" / "pr.json"))
    assert meta["input_size"] == [32, 32] and meta["history"]["iterations"] == 3 * 30
