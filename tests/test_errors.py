"""utils/errors.py: user errors become one stderr line."""

def test_run_cli_turns_os_errors_into_one_line(capsys):
    import errno

    from utils.errors import run_cli

    def main(argv):
        raise OSError(errno.ENOSPC, "No space left on device", "data/x/train-00000-of-00001.tfrecord.tmp")

    assert run_cli(main) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "No space left" in err and ".tmp" in err
