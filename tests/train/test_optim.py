"""utils/train/optim.py: the warm-up schedules and the optimizer options."""
import keras
import pytest

from utils.train import config
from utils.train.optim import WarmupSchedule, make_optimizer


def lr(schedule, step):
    return float(keras.ops.convert_to_numpy(schedule(step)))


def test_schedule_warmup_cosine_step_plateau():
    cos = WarmupSchedule(1.0, total_steps=110, warmup_steps=10, kind="cosine")
    assert lr(cos, 0) == pytest.approx(0.1) and lr(cos, 9) == pytest.approx(1.0)
    assert lr(cos, 60) == pytest.approx(0.5, abs=1e-6) and lr(cos, 110) == pytest.approx(0.0, abs=1e-7)
    step = WarmupSchedule(1.0, total_steps=100, kind="step", step_every=30, step_gamma=0.1)
    assert [round(lr(step, s), 6) for s in (0, 29, 30, 61, 95)] == [1.0, 1.0, 0.1, 0.01, 0.001]
    scale = keras.Variable(1.0, trainable=False)
    flat = WarmupSchedule(2.0, total_steps=10, kind="plateau", scale=scale)
    assert lr(flat, 5) == pytest.approx(2.0)
    scale.assign(0.25)
    assert lr(flat, 5) == pytest.approx(0.5)


def test_optimizer_options():
    base = config.defaults()
    opt = make_optimizer(dict(base, optimizer="sgd", momentum=0.8, accum_steps=4, ema=True), 0.1)
    assert type(opt).__name__ == "SGD" and opt.momentum == 0.8
    assert opt.gradient_accumulation_steps == 4 and opt.use_ema
    opt = make_optimizer(dict(base, optimizer="adamw"), 0.1)
    assert opt.weight_decay == pytest.approx(0.004)
    assert make_optimizer(dict(base, optimizer="adam"), 0.1).weight_decay is None
