"""utils/generate/outdir.py: what a run may do with the folder it writes into."""
from __future__ import annotations

import json
import os

import pytest

from utils.errors import SourceError
from utils.generate import outdir
from utils.sources.base import Source


def sig(**args):
    src = Source()
    src.kind, src.args = "folder", {"root": "/img", **args}
    return outdir.signature(src, "d", {"seed": 0})


def test_run_only_knobs_do_not_change_the_signature():
    assert outdir.comparable(sig(timeout=10, concurrency=4)) == outdir.comparable(sig())
    assert outdir.comparable(sig(label_mode="multi")) != outdir.comparable(sig())
    assert sig()["source"] == {"kind": "folder", "path": "/img", "args": {"root": "/img", "seed": 0}}


def test_states_of_a_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    assert outdir.check_out_dir(str(tmp_path), sig(), overwrite=False) == "fresh"
    os.makedirs(tmp_path / outdir.WORK)
    (tmp_path / outdir.WORK / outdir.STATE).write_text(json.dumps({"signature": sig(timeout=3)}))
    assert outdir.check_out_dir(str(tmp_path), sig(), overwrite=False) == "resume"
    with pytest.raises(SourceError, match="an unfinished build with other arguments"):
        outdir.check_out_dir(str(tmp_path), sig(label_mode="multi"), overwrite=False)
    (tmp_path / "manifest.json").write_text(json.dumps(sig()))
    assert outdir.check_out_dir(str(tmp_path), sig(), overwrite=False) == "done"
    assert outdir.check_out_dir(str(tmp_path), sig(label_mode="multi"), overwrite=True) == "fresh"
    assert os.listdir(tmp_path) == ["notes.txt"]   # ours removed, nothing else


def test_unknown_shards_are_refused_and_only_our_temps_cleaned(tmp_path):
    for n in ("train-00000-of-00002.tfrecord", "val-00000-of-00001.tfrecord.tmp", "labels.json.tmp",
              "other.tmp", "train-0-of-2.tfrecord"):
        (tmp_path / n).write_bytes(b"")
    with pytest.raises(SourceError, match="shards of an unknown build"):
        outdir.check_out_dir(str(tmp_path), sig(), overwrite=False)
    outdir.clean_temps(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["other.tmp", "train-0-of-2.tfrecord", "train-00000-of-00002.tfrecord"]


def test_plan_hash_is_one_json_dumps_per_member(tmp_path):
    # the run's identity in .work/ must not change with how it is computed: a resume of a run
    # started before would otherwise be refused
    import hashlib

    from tests.generate.common import FakeSource
    from utils.generate.index import build_index
    from utils.generate.plan import make_plan

    p = tmp_path / "x.png"
    p.write_bytes(b"\x89PNG")
    odd = ['q"uo\\te', "é\u2028\x00\t", "日本", "\ud800lone", "plain"]
    entries = [(f"{s}/{i}", f"{s}-{i % 3}", [odd[i % 2], "b"] if i % 4 else [], str(p), None)
               for i, s in enumerate(odd * 4)]
    index = build_index(FakeSource(entries, skips=[("gone", "empty file")], multi_label=True), progress=False)
    plan = make_plan(index.labels, index.source_ids, index.splits, index.sizes, val_fraction=0.25, folds=2,
                     fraction=None, shard_mb=1e-5, max_side=None, short_side=None, seed=3)
    sig = {"source": {"path": "fake"}, "name": "n"}
    want = hashlib.sha256(json.dumps(outdir.comparable(sig), sort_keys=True).encode())
    want.update(json.dumps(index.classes).encode())
    want.update(json.dumps(index.skips).encode())
    for s in plan:
        want.update(json.dumps([s.file, s.fold]).encode())
        for i in s.members:
            want.update(json.dumps([index.items[i].key, index.items[i].source_id, index.labels[i]]).encode())
    assert len(plan) > 2 and sum(len(s.members) for s in plan) == len(entries)
    assert outdir.plan_hash(sig, index, plan) == want.hexdigest()
