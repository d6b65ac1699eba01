"""generate_dataset.py as a user runs it: subprocesses, exit codes, one-line errors,
kill -9 and resume. The subprocesses that import TensorFlow (verify) are slow."""
from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time

import cv2
import pytest

import generate_dataset as cli
from tests.conftest import ROOT, random_image, write_image
from tests.generate.common import FakeSource, build, huge_png, make_images, records
from utils.dataset import schema
from utils.errors import SourceError, UsageError
from utils.generate.outdir import LOCK
from utils.sources import detect_kind

SCRIPT = os.path.join(ROOT, "generate_dataset.py")


def run(*args, timeout=300):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    return subprocess.run([sys.executable, SCRIPT, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)


def folder_dataset(root, n_per_class=(3, 3), size=32, seed=0):
    """root/<class>/NNNN.jpg noise images."""
    n = 0
    for c, count in zip(("cat", "dog", "emu"), n_per_class):
        for j in range(count):
            write_image(os.path.join(root, c, f"{j:04d}.jpg"), random_image(seed * 100_000 + n, size, size, blocky=False))
            n += 1
    return str(root)


def test_help_documents_every_flag():
    r = run("--help")
    assert r.returncode == 0
    assert "first frame" in r.stdout and "untouched" in r.stdout
    for a in cli.build_parser()._actions:
        assert a.help, f"{a.dest} has no --help text"
    assert run("verify", "--help").returncode == 0


def test_missing_input_is_one_line(tmp_path):
    r = run(tmp_path / "nope", "--out", tmp_path / "out")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"error: input not found: {tmp_path / 'nope'}"]
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()


def test_bad_flag_value_is_one_line(tmp_path):  # verify refuses a missing folder before importing TensorFlow
    src = tmp_path / "src"
    src.mkdir()
    r = run("verify", tmp_path / "nothing")
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "Traceback" not in r.stderr


def test_detect_kind(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "x.bson").write_bytes(b"")
    (tmp_path / "u.txt").write_text("1,https://example.com/a.jpg,0,1\n")
    (tmp_path / "l.csv").write_text("id,label\n1,cat\n")
    assert detect_kind(str(tmp_path / "d")) == "folder"
    assert detect_kind(str(tmp_path / "x.bson")) == "bson"
    assert detect_kind(str(tmp_path / "u.txt")) == "urls"
    with pytest.raises(UsageError):
        detect_kind(str(tmp_path / "l.csv"))
    with pytest.raises(SourceError, match="input not found"):
        detect_kind(str(tmp_path / "missing"))


def test_config_supplies_defaults_and_flags_override(tmp_path):
    conf = tmp_path / "c.yaml"
    conf.write_text("out: data/x\nval_fraction: 0.3\nshard-mb: 5\n")
    p = cli.build_parser()
    argv = ["SRC", "--config", str(conf), "--shard-mb", "7"]
    cli.apply_config(p, argv)
    a = p.parse_args(argv)
    assert (a.out, a.val_fraction, a.shard_mb, a.source) == ("data/x", 0.3, 7.0, "SRC")
    conf.write_text("bogus_flag: 1\n")
    with pytest.raises(UsageError, match="bogus_flag"):
        cli.apply_config(cli.build_parser(), ["SRC", "--config", str(conf)])


@pytest.mark.slow   # the verify subprocess imports TensorFlow
def test_verify_cli_ok_then_fails_after_a_flipped_byte(tmp_path):
    entries = make_images(tmp_path / "img", {"a": 4, "b": 4})
    man = build(FakeSource(entries), tmp_path / "out", val_fraction=0.25)
    r = run("verify", tmp_path / "out", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().startswith("OK")
    shard = tmp_path / "out" / man["splits"]["val"]["shards"][0]["file"]
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0x01
    shard.write_bytes(bytes(data))
    r = run("verify", tmp_path / "out", "--no-progress")
    assert r.returncode == 1
    assert "sha256" in r.stderr and "Traceback" not in r.stderr


def test_different_dataset_in_out_is_refused(tmp_path):
    a = folder_dataset(tmp_path / "a")
    b = folder_dataset(tmp_path / "b", seed=1)
    out = tmp_path / "out"
    assert run(a, "--out", out, "--no-progress").returncode == 0
    before = {p: (os.path.getmtime(p), open(p, "rb").read()) for p in glob.glob(str(out / "*"))}
    r = run(b, "--out", out, "--no-progress")
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("error: ")
    after = {p: (os.path.getmtime(p), open(p, "rb").read()) for p in glob.glob(str(out / "*"))}
    assert after == before
    r = run(a, "--out", out, "--no-progress")
    assert r.returncode == 0 and "already built" in r.stderr


@pytest.mark.slow   # the verify subprocess imports TensorFlow
def test_folder_end_to_end_with_bad_files(tmp_path):
    src = folder_dataset(tmp_path / "src", (6, 5, 4))
    (tmp_path / "src" / "cat" / "empty.jpg").write_bytes(b"")
    good = open(tmp_path / "src" / "cat" / "0000.jpg", "rb").read()
    (tmp_path / "src" / "dog" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (tmp_path / "src" / "dog" / "notes.txt").write_text("not an image")
    (tmp_path / "src" / "emu" / "fake.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    (tmp_path / "src" / "emu" / "huge.png").write_bytes(huge_png())
    out = tmp_path / "out"
    r = run(src, "--out", out, "--val-fraction", "0.2", "--no-progress")
    assert r.returncode == 0, r.stderr
    man = json.load(open(out / "manifest.json"))
    recs = sum(v["count"] for v in man["splits"].values())
    assert recs == 15 and man["inputs"] == 20 and man["skipped"]["count"] == 5
    rows = open(out / "skipped.csv").read().splitlines()[1:]
    assert len(rows) == 5
    assert run("verify", out, "--no-progress").returncode == 0


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["1", "2"])   # 2: shards written side by side (utils.generate.apart)
def test_kill_9_and_resume_gives_the_clean_result(tmp_path, workers):
    src = folder_dataset(tmp_path / "src", (150, 150, 100), size=32)
    args = ["--val-fraction", "0.2", "--shard-mb", "0.01", "--workers", workers, "--no-progress"]
    clean = tmp_path / "clean"
    assert run(src, "--out", clean, *args).returncode == 0
    out = tmp_path / "out"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    p = subprocess.Popen([sys.executable, SCRIPT, src, "--out", str(out), *args], cwd=ROOT, env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and p.poll() is None and not glob.glob(str(out / "*.tfrecord")):
        time.sleep(0.002)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not (out / "manifest.json").exists(), "the run finished before it could be killed"
    assert glob.glob(str(out / "*.tfrecord"))
    r = run(src, "--out", out, *args)
    assert r.returncode == 0, r.stderr
    assert "resuming" in r.stderr
    m1, m2 = json.load(open(clean / "manifest.json")), json.load(open(out / "manifest.json"))
    assert m1["splits"] == m2["splits"] and m1["skipped"] == m2["skipped"] and m1["inputs"] == m2["inputs"]
    assert sorted(records(out)) == sorted(records(clean))
    left = [n for n in os.listdir(out) if n.endswith(".tmp") or (n.startswith(".") and n != LOCK)]
    assert left == []


def test_demo_without_arguments(tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "DEMO_SRC", str(tmp_path / "demo_src"))
    monkeypatch.setattr(cli, "DEMO_OUT", str(tmp_path / "demo"))
    assert cli.main([]) == 0
    man = json.load(open(tmp_path / "demo" / "manifest.json"))
    assert man["splits"]["train"]["count"] > 0 and man["splits"]["val"]["count"] > 0
    assert man["num_classes"] >= 2


def test_argparse_errors_are_one_line(tmp_path):
    r = run(tmp_path, "--shard-mb", "lots")
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("error: ")
    assert "--shard-mb" in r.stderr


@pytest.mark.parametrize("flag,value", [("--workers", "0"), ("--concurrency", "0"), ("--timeout", "0"),
                                        ("--timeout", "-1"), ("--timeout", "nan")])
def test_run_knobs_out_of_range_are_usage_errors(tmp_path, flag, value):
    with pytest.raises(UsageError, match=flag):
        cli.main([str(tmp_path), "--out", str(tmp_path / "out"), flag, value])
    assert not (tmp_path / "out").exists()


def test_open_source_builds_each_kind(tmp_path):
    import argparse

    import bson

    from utils.sources import open_source

    folder = folder_dataset(tmp_path / "f")
    ns = lambda **kw: argparse.Namespace(**{**dict(labels=None, channels=None, label_names=None,  # noqa: E731
                                                   categories=None, out=str(tmp_path / "out"),
                                                   concurrency=3, timeout=2.0), **kw})
    assert open_source(None, folder, ns()).kind == "folder"
    flat = tmp_path / "flat"
    flat.mkdir()
    write_image(flat / "001.png", random_image(0, 8, 8, c=1))
    (tmp_path / "l.csv").write_text("id,label\n001,cat\n")
    assert open_source(None, str(flat), ns(labels=str(tmp_path / "l.csv"))).kind == "csv"
    write_image(flat / "s1_w1.png", random_image(1, 8, 8, c=1))
    write_image(flat / "s1_w2.png", random_image(2, 8, 8, c=1))
    assert open_source(None, str(flat), ns(channels="w1,w2")).kind == "multichannel"
    (tmp_path / "t.bson").write_bytes(bson.encode({"_id": 1, "imgs": [], "category_id": 5}))
    assert open_source(None, str(tmp_path / "t.bson"), ns()).kind == "bson"
    (tmp_path / "u.txt").write_text("a1,http://127.0.0.1:9/a.jpg,0,1\n")
    u = open_source(None, str(tmp_path / "u.txt"), ns(label_names="x,y"))
    assert u.kind == "urls" and u.classes == ["x", "y"]
    assert u.cache_dir == os.path.join(str(tmp_path / "out"), "cache")
    assert u.fetch_opts["progress"] is True
    assert open_source(None, str(tmp_path / "u.txt"), ns(no_progress=True)).fetch_opts["progress"] is False
    with pytest.raises(UsageError):
        open_source("csv", folder, ns())


def test_short_side_stores_the_smallest_copy_that_fills_the_input(tmp_path):
    src = folder_dataset(tmp_path / "src", size=64)
    with pytest.raises(UsageError, match="--short-side"):
        cli.main([src, "--out", str(tmp_path / "bad"), "--short-side", "0", "--no-progress"])
    out = tmp_path / "out"
    assert cli.main([src, "--out", str(out), "--short-side", "40", "--no-progress"]) == 0
    man = json.loads((out / "manifest.json").read_text())
    assert man["source"]["args"]["short_side"] == 40
    import tensorflow as tf

    shards = [str(out / s["file"]) for sp in man["splits"].values() for s in sp["shards"]]  # val by default too
    sides = [(r[schema.HEIGHT], r[schema.WIDTH])
             for r in map(schema.parse_numpy, tf.data.TFRecordDataset(shards).as_numpy_iterator())]
    assert sides == [(40, 40)] * 6


@pytest.mark.slow   # the verify subprocess imports TensorFlow
def test_verify_lists_near_duplicates_across_splits_and_labels(tmp_path):
    import csv

    from tests.generate.test_neardup import photo

    src = tmp_path / "src"
    for split, cls, name, img in [
        ("train", "cat", "a", photo(1)), ("train", "cat", "b", photo(2)), ("train", "dog", "c", photo(3)),
        ("train", "dog", "d", photo(4)), ("val", "cat", "e", photo(5)),
        ("train", "cat", "a_copy", photo(1)),                                      # same picture, same class
        ("val", "cat", "c_small", cv2.resize(photo(3), (100, 75), interpolation=cv2.INTER_AREA)),  # leak + conflict
    ]:
        os.makedirs(src / split / cls, exist_ok=True)
        cv2.imwrite(str(src / split / cls / f"{name}.png"), img)
    out = tmp_path / "out"
    assert cli.main([str(src), "--out", str(out), "--no-progress"]) == 0
    report = tmp_path / "near.csv"
    r = run("verify", out, "--near-duplicates", report, "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "near-duplicates: 2 pair(s) within 4 bits, 1 across splits, 1 with different labels" in r.stdout
    rows = list(csv.DictReader(open(report, newline="")))
    got = sorted(sorted([(x["split_a"], x["source_id_a"], x["labels_a"]), (x["split_b"], x["source_id_b"], x["labels_b"])])
                 for x in rows)
    assert got == [[("train", "a", "cat"), ("train", "a_copy", "cat")], [("train", "c", "dog"), ("val", "c_small", "cat")]]
    assert rows[0]["distance"] == "0"
    r = run("verify", out, "--near-duplicates", report, "--max-distance", "40")
    assert r.returncode == 2 and r.stderr.strip().splitlines() == ["error: --max-distance must be in 0..31 bits, got 40"]
