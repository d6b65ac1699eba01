"""Each shard entry's "images" summary (utils.dataset.manifest.add_image, counted in
utils.generate.shards.write_shard) says what its records hold: formats and the largest shorter side."""
import os

import tensorflow as tf

from tests.conftest import encode_image, random_image
from tests.generate.common import FakeSource, build
from utils.dataset import schema
from utils.dataset.manifest import IMAGES, merged_images


def test_every_shard_entry_summarises_its_own_records(tmp_path):
    entries = []
    for i, (fmt, h, w) in enumerate([("jpeg", 40, 52), ("png", 61, 30), ("jpeg", 33, 33), ("gif", 20, 70),
                                     ("jpeg", 48, 44), ("png", 36, 36)]):
        path = tmp_path / "img" / f"{i}.{fmt}"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(encode_image(random_image(i, h, w), fmt))
        entries.append((f"k{i}", f"s{i}", ["ab"[i % 2]], str(path), None))
    man = build(FakeSource(entries, classes=["a", "b"]), tmp_path / "out", shard_mb=0.001, val_fraction=0.3,
                workers=1)
    shards = [s for v in man["splits"].values() for s in v["shards"]]
    assert len(shards) >= 3
    for s in shards:
        want = {"formats": {}, "max_short_side": 0}
        for raw in tf.data.TFRecordDataset(os.path.join(tmp_path / "out", s["file"])).as_numpy_iterator():
            ex = schema.parse_numpy(raw)
            want["formats"][ex[schema.FORMAT]] = want["formats"].get(ex[schema.FORMAT], 0) + 1
            want["max_short_side"] = max(want["max_short_side"], min(ex[schema.HEIGHT], ex[schema.WIDTH]))
        assert s[IMAGES] == want and sum(want["formats"].values()) == s["count"]
    assert merged_images(shards) == {"formats": {"gif": 1, "jpeg": 3, "png": 2}, "max_short_side": 44}
