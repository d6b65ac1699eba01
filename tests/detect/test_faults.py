"""detect.py when things go wrong: a second run on one --out, a kill -9 then --resume,
a corrupted or cut shard in a dataset-folder input. Runs that must overlap or be
killed are subprocesses; the rest run in-process (tests/detect/common.run)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT, encode_image, kill_9_when, random_image
from tests.detect.common import CLASSES, image_bytes, read_csv, run, tiny_model
from tests.gated_server import (gated_server, open_gate, race, third_run_is_refused,  # noqa: F401  (a fixture)
                                url_list)

SCRIPT = os.path.join(ROOT, "detect.py")
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")


def detect_cmd(*args):
    return [sys.executable, SCRIPT, *map(str, args), "--no-progress"]


# ----------------------------------------------------------------------------- one writer per --out

@pytest.mark.slow   # three detect.py subprocesses (TensorFlow)
def test_second_run_on_one_out_is_refused_and_touches_nothing(h5_model, gated_server, tmp_path):
    lst = url_list(tmp_path / "list.csv", 6, gated_server.base, labels=3)
    out_dir = tmp_path / "o"
    out = out_dir / "p.csv"
    cmd = detect_cmd("--model", h5_model, lst, "--out", out, "--cache-dir", tmp_path / "cache", "--format", "probs")
    winner, loser = race(cmd, ENV, ROOT, timeout=120)
    line = f"error: {out} is being written by another run (pid {winner.pid}); wait for it or choose another --out"
    assert (loser.returncode, loser.stderr.read().strip().splitlines()) == (2, [line])
    assert gated_server.asked.wait(120), "the winner never started downloading"
    third_run_is_refused(cmd, ENV, ROOT, out_dir, line, winner, timeout=120)
    open_gate(gated_server, winner)
    rows = read_csv(out)
    assert rows[0] == ["id", *CLASSES] and [r[0] for r in rows[1:]] == [f"im{i}" for i in range(6)]


# ----------------------------------------------------------------------------- --resume after kill -9

def write_bson(path, n_products: int) -> dict:
    """A test.bson of n products with 1-3 photos; every 97th photo is not an image and every
    500th product has none readable. Returns {"photos": n, "bad": set of photo ids}."""
    import bson

    photos, bad = 0, set()
    with open(path, "wb") as f:
        for pid in range(n_products):
            pics = []
            for i in range(1 + pid % 3):
                if pid % 500 == 7 or (photos + i) % 97 == 5:
                    pics.append(b"not a jpeg")
                    bad.add(f"{pid}#{i}")
                else:
                    pics.append(encode_image(random_image(photos + i, 32, 32), "jpeg", quality=90))
            photos += len(pics)
            f.write(bson.encode({"_id": pid, "imgs": [{"picture": p} for p in pics]}))
    return {"photos": photos, "bad": bad}


@pytest.mark.slow   # three detect.py runs over ~3,000 photos (only the killed one a subprocess)
def test_resume_after_kill_9_gives_the_clean_csv(tmp_path, capsys):
    pytest.importorskip("bson")
    cats = ["1000010653", "1000010654", "1000010655"]
    model = tiny_model(tmp_path / "cd.h5", class_names=cats)
    dump = tmp_path / "test.bson"
    info = write_bson(dump, 1500)
    args = ["--model", model, dump, "--format", "cdiscount", "--batch-size", "16"]
    clean = tmp_path / "clean.csv"
    code, _, err = run([*map(str, args), "--out", str(clean)], capsys)
    assert code == 0, err
    out = tmp_path / "sub.csv"
    p = subprocess.Popen(detect_cmd(*args, "--out", out), cwd=ROOT, env=ENV,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = tmp_path / "sub.csv.partial.json"
    kill_9_when(state, p, timeout=300, poll=0.005)
    assert not out.exists(), "the run finished before it could be killed"
    done = json.load(open(state))["rows"]
    assert 0 < done < 1500
    code, _, err = run([*map(str, args), "--out", str(out), "--resume"], capsys)
    assert code == 0, err
    assert f"resuming {out} after {done} rows" in err
    assert out.read_bytes() == clean.read_bytes()
    assert len(read_csv(out)) == 1501                 # every product, the unreadable ones too
    skipped = {row[0] for row in read_csv(tmp_path / "sub.skipped.csv")[1:]}
    assert skipped == {row[0] for row in read_csv(tmp_path / "clean.skipped.csv")[1:]} == info["bad"]
    assert not [n for n in os.listdir(tmp_path) if ".partial" in n]


@pytest.mark.slow   # three in-process runs
def test_resume_refuses_other_arguments_and_starts_fresh_without_a_partial(h5_model, images, tmp_path, capsys):
    out = str(tmp_path / "p.csv")
    code, _, err = run(["--model", h5_model, str(images), "--out", out, "--resume"], capsys)
    assert code == 0 and "no unfinished run" in err and len(read_csv(out)) == 10
    with open(out + ".partial", "w") as f:
        f.write("id,label\n")
    with open(out + ".partial.json", "w") as f:
        json.dump({"run": {"other": 1}, "bytes": 9, "rows": 0, "samples": 0, "skipped": [], "carry": {}}, f)
    code, _, err = run(["--model", h5_model, str(images), "--out", out, "--resume"], capsys)
    assert code == 2 and err.strip().splitlines() == [
        f"error: the unfinished {out}.partial was written with other models, inputs or format options: "
        "rerun them, or drop --resume to start over"]
    code, _, err = run(["--model", h5_model, str(images), "--out", out, "--resume", "--evaluate"], capsys)
    assert code == 2 and "--resume continues plain prediction" in err


# ----------------------------------------------------------------------------- corrupted and cut shards

def two_shard_dataset(root, per_shard=4):
    """data/NAME with two val shards of `per_shard` records -> (folder, [[record bytes]] per shard)."""
    from tests.conftest import write_dataset
    from utils.dataset import schema

    shards = [[schema.serialize([image_bytes(10 * s + i)], "png", 40, 40, 3, [i % 3], f"s{s}r{i}")
               for i in range(per_shard)] for s in range(2)]
    write_dataset(root, {"val": shards}, class_names=CLASSES)
    return str(root), shards


def flip_byte(path, offset):
    blob = bytearray(open(path, "rb").read())
    blob[offset] ^= 0xFF
    open(path, "wb").write(bytes(blob))


def test_corrupted_shard_is_one_line_naming_file_offset_and_fix(h5_model, tmp_path, capsys):
    data, shards = two_shard_dataset(tmp_path / "data" / "pets")
    shard = os.path.join(data, "val-00001-of-00002.tfrecord")
    start = sum(16 + len(r) for r in shards[1][:2])        # record 2 of shard 1
    flip_byte(shard, start + 12 + len(shards[1][2]) // 2)  # inside its payload: TF names payload start
    out = str(tmp_path / "p.csv")
    code, _, err = run(["--model", h5_model, data, "--out", out, "--format", "probs"], capsys)
    assert code == 2
    assert err.strip().splitlines() == [
        f"error: {shard} is corrupted near byte {start + 12}: run 'generate_dataset.py verify {data}', "
        "then rebuild or restore that shard"]
    assert not os.path.exists(out)

    code, _, err = run(["--model", h5_model, data, "--out", out, "--format", "probs", "--skip-corrupt-shards"],
                       capsys)
    assert code == 0, err
    assert f"warning: {shard} is corrupted near byte {start + 12}: skipped its last 2 of 4 records " \
           "(--skip-corrupt-shards)" in err.splitlines()
    assert [r[0] for r in read_csv(out)[1:]] == ["s0r0", "s0r1", "s0r2", "s0r3", "s1r0", "s1r1"]


def test_shard_cut_short_or_missing_is_caught_when_the_dataset_opens(h5_model, tmp_path, capsys):
    data, _ = two_shard_dataset(tmp_path / "pets")
    shard = os.path.join(data, "val-00000-of-00002.tfrecord")
    size = os.path.getsize(shard)
    with open(shard, "r+b") as f:
        f.truncate(size - 10)
    out = str(tmp_path / "p.csv")
    code, _, err = run(["--model", h5_model, data, "--out", out], capsys)
    assert code == 2 and err.strip().splitlines() == [
        f"error: {shard} is {size - 10:,d} bytes, manifest.json says {size:,d}: run 'generate_dataset.py verify "
        f"{data}', then rebuild or restore that shard"]
    os.remove(shard)
    code, _, err = run(["--model", h5_model, data, "--out", out], capsys)
    assert code == 2 and err.strip().splitlines() == [
        f"error: {shard} is listed in manifest.json but missing: run 'generate_dataset.py verify {data}', "
        "then rebuild or restore that shard"]
