"""utils/generate/verify.py: an intact dataset has no problems; a flipped byte is found."""
from __future__ import annotations

import os

from tests.generate.common import FakeSource, build, make_images
from utils.generate.verify import verify_dataset


def test_verify_detects_a_flipped_byte(tmp_path):
    entries = make_images(tmp_path / "img", {"a": 5, "b": 5})
    man = build(FakeSource(entries), tmp_path / "out", val_fraction=0.2)
    out = str(tmp_path / "out")
    assert verify_dataset(out, progress=False) == []
    path = os.path.join(out, man["splits"]["train"]["shards"][0]["file"])
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(path, "wb").write(bytes(data))
    problems = verify_dataset(out, progress=False)
    assert any("sha256" in p for p in problems)


def test_verify_reports_counts_and_missing_shards(tmp_path):
    import json

    entries = make_images(tmp_path / "img", {"a": 3, "b": 3})
    man = build(FakeSource(entries), tmp_path / "out", val_fraction=0.5)
    out = tmp_path / "out"
    os.remove(out / man["splits"]["val"]["shards"][0]["file"])
    man["splits"]["train"]["shards"][0]["count"] += 1
    man["inputs"] += 1
    (out / "manifest.json").write_text(json.dumps(man))
    problems = verify_dataset(str(out), progress=False)
    train, val = man["splits"]["train"]["shards"][0]["file"], man["splits"]["val"]["shards"][0]["file"]
    assert f"{val}: missing" in problems
    assert f"{train}: 3 records, manifest says 4" in problems
    assert "train: shard counts do not add up to 3" in problems
    assert "records (6) + skipped (0) != inputs (7)" in problems


def test_verify_recounts_each_shards_image_summary(tmp_path):
    import json

    entries = make_images(tmp_path / "png", {"a": 3}) + make_images(tmp_path / "jpg", {"b": 2}, ext=".jpg")
    man = build(FakeSource(entries), tmp_path / "out", val_fraction=0)
    out = tmp_path / "out"
    assert verify_dataset(str(out), progress=False) == []
    (shard,) = man["splits"]["train"]["shards"]
    assert shard["images"] == {"formats": {"jpeg": 2, "png": 3}, "max_short_side": 32}

    # a summary that says every record is a JPEG (the pipeline would skip the general decode)
    shard["images"] = {"formats": {"jpeg": 5}, "max_short_side": 32}
    (out / "manifest.json").write_text(json.dumps(man))
    assert verify_dataset(str(out), progress=False) == [
        f"{shard['file']}: image summary differs from the manifest: records hold jpeg 2, png 3, "
        "shorter side <= 32 px, manifest says jpeg 5, shorter side <= 32 px"]
    # one that understates the largest shorter side
    shard["images"] = {"formats": {"png": 3, "jpeg": 2}, "max_short_side": 24}
    (out / "manifest.json").write_text(json.dumps(man))
    assert verify_dataset(str(out), progress=False) == [
        f"{shard['file']}: image summary differs from the manifest: records hold jpeg 2, png 3, "
        "shorter side <= 32 px, manifest says jpeg 2, png 3, shorter side <= 24 px"]
    # a manifest written before the summary has none: nothing to check
    del shard["images"]
    (out / "manifest.json").write_text(json.dumps(man))
    assert verify_dataset(str(out), progress=False) == []
