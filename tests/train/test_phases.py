"""utils/train/phases.py: freeze-then-fine-tune as a list of Phase objects (pure)."""
from utils.train import config
from utils.train.phases import Phase, plan_phases


def cfg(**kw):
    return dict(config.defaults(), data="d", image_size=64, **kw)


def test_one_phase_without_warmup():
    assert plan_phases(cfg(epochs=5, layers="all")) == [Phase("main", 0, 5, "all", 1.0, 64)]


def test_heads_then_main_at_the_finetune_multiplier():
    heads, main = plan_phases(cfg(epochs=6, warmup_epochs=2, layers="conv5|head_", finetune_lr_mult=0.1, lr=0.01))
    assert (heads.name, heads.start, heads.end, heads.layers, heads.epochs) == ("heads", 0, 2, "heads", 2)
    assert (main.name, main.start, main.end, main.layers, main.epochs) == ("main", 2, 6, "conv5|head_", 4)
    assert heads.peak_lr(0.01) == 0.01 and main.peak_lr(0.01) == 0.01 * 0.1
    assert heads.image_size == main.image_size == 64
