"""utils/errors.py: user errors become one stderr line."""

def test_run_cli_turns_os_errors_into_one_line(capsys):
    import errno

    from utils.errors import run_cli

    def main(argv):
        raise OSError(errno.ENOSPC, "No space left on device", "data/x/train-00000-of-00001.tfrecord.tmp")

    assert run_cli(main) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "No space left" in err and ".tmp" in err


def test_every_cli_parser_reports_a_bad_flag_as_one_usage_error():
    import pytest

    import detect
    import generate_dataset
    from utils.train import config
    from utils.errors import UsageError

    parsers = [detect.build_parser(), generate_dataset.build_parser(), config.build_parser("train")]
    argvs = [["--model", "m.h5", "--tta", "abc", "x.jpg"], ["src", "--out", "o", "--folds", "x"],
             ["--data", "d", "--epochs", "x"]]
    for parser, argv in zip(parsers, argvs):
        with pytest.raises(UsageError) as e:
            parser.parse_args(argv)
        assert "invalid int value" in str(e.value) and "\n" not in str(e.value) and "--help" in str(e.value)


def test_yaml_config_keys_accept_dashes(tmp_path):
    import pytest

    from utils.errors import read_yaml_mapping
    from utils.errors import UsageError

    f = tmp_path / "c.yaml"
    f.write_text("shard-mb: 5\nval_fraction: 0.1\n")
    assert read_yaml_mapping(str(f)) == {"shard_mb": 5, "val_fraction": 0.1}
    f.write_text("- a list\n")
    with pytest.raises(UsageError):
        read_yaml_mapping(str(f))
