"""utils/train/config.py: defaults < YAML < flags, validation messages, the resolved record."""
import pytest
import yaml

from utils.errors import UsageError
from utils.train import config


def parse(argv):
    return config.resolve(config.build_parser("t").parse_args(argv))


def test_defaults_yaml_and_flags_precedence(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("data: data/x\nepochs: 7\nlr: 0.05\nbatch-size: 8\nfocal: true\n")
    cfg = parse(["--config", str(y), "--lr", "0.2"])
    assert cfg["epochs"] == 7  # from YAML
    assert cfg["lr"] == 0.2  # flag beats YAML
    assert cfg["batch_size"] == 8 and cfg["focal"] is True
    assert cfg["optimizer"] == config.OPTIONS["optimizer"].default  # default untouched
    assert parse(["--config", str(y), "--no-focal"])["focal"] is False
    y.write_text("data: d\naugment:\n  rrc: {scale: [0.5, 1.0]}\n  flip:\n")
    assert parse(["--config", str(y)])["augment"] == {"rrc": {"scale": [0.5, 1.0]}, "flip": None}


def test_yaml_unknown_key_and_bad_values(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("data: d\nlearning_rate: 0.1\n")
    with pytest.raises(UsageError, match="unknown key 'learning_rate'"):
        parse(["--config", str(y)])
    y.write_text("data: d\nepochs: many\n")
    with pytest.raises(UsageError, match="epochs .* must be int"):
        parse(["--config", str(y)])
    y.write_text("data: d\noptimizer: lion\n")
    with pytest.raises(UsageError, match="one of sgd, adam, adamw"):
        parse(["--config", str(y)])


@pytest.mark.parametrize("argv, msg", [
    ([], "--data is required"),
    (["--data", "d", "--epochs", "0"], "--epochs must be >= 1"),
    (["--data", "d", "--dropout", "1.5"], "--dropout must be in"),
    (["--data", "d", "--epochs", "3", "--warmup-epochs", "3"], "must be below --epochs"),
    (["--data", "d", "--warmup-epochs", "1", "--layers", "heads"], "needs --layers all"),
    (["--data", "d", "--layers", "conv[("], "not heads, all or a valid regex"),
])
def test_validation_messages(argv, msg):
    with pytest.raises(UsageError, match=msg):
        parse(argv)


def test_every_flag_has_help():
    p = config.build_parser("t")
    for a in p._actions:
        if a.dest != "help":
            assert a.help and len(a.help) > 10, a.dest


def test_save_yaml_roundtrip(tmp_path):
    cfg = parse(["--data", "d", "--augment", "flip,rrc"])
    path = config.save_yaml(cfg, str(tmp_path / "x.config.yaml"))
    assert yaml.safe_load(open(path)) == cfg
    assert list(yaml.safe_load(open(path))) == list(cfg)  # OPTIONS order, not sorted
    assert cfg["augment"] == "flip,rrc"  # the pipeline parses the list (utils.input.augment)
    assert config.resume_mismatch(cfg, dict(cfg, early_stop=3)) == []
    assert config.resume_mismatch(cfg, dict(cfg, lr=9.0)) == ["lr"]


class Spec:  # the ModelSpec fields resolve_run reads
    name, default_size, min_size = "inceptionv3", 299, 75


def test_resolve_run_fills_head_size_and_out():
    info = {"multi_label": False}
    cfg = config.resolve_run(parse(["--data", "data/shapes/", "--fold", "2"]), info, Spec)
    assert (cfg["head"], cfg["image_size"], cfg["model"]) == ("softmax", 299, "inceptionv3")
    assert cfg["out"] == "model_save/shapes_inceptionv3_fold2.h5"
    assert config.resolve_run(parse(["--data", "d"]), {"multi_label": True}, Spec)["head"] == "sigmoid"
    with pytest.raises(UsageError, match="is multi-label: use --head sigmoid or per-class"):
        config.resolve_run(parse(["--data", "d", "--head", "softmax"]), {"multi_label": True}, Spec)
    with pytest.raises(UsageError, match="inceptionv3 needs --image-size >= 75, got 64"):
        config.resolve_run(parse(["--data", "d", "--image-size", "64"]), info, Spec)
    with pytest.raises(UsageError, match="--out must end in .h5"):
        config.resolve_run(parse(["--data", "d", "--out", "m.pt"]), info, Spec)
