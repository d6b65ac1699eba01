"""utils/dataset/manifest.py: the shard file names of the on-disk layout."""
import re

from utils.dataset import manifest


def test_shard_names_are_numbered_per_split_and_match_the_pattern():
    names = [manifest.shard_name(split, i, 12) for split in manifest.SPLITS for i in range(12)]
    assert names[:2] == ["train-00000-of-00012.tfrecord", "train-00001-of-00012.tfrecord"]
    assert all(re.fullmatch(manifest.SHARD_PATTERN, n) for n in names)
    assert not re.fullmatch(manifest.SHARD_PATTERN, "extra-00000-of-00001.tfrecord")
    assert not re.fullmatch(manifest.SHARD_PATTERN, "train-0-of-1.tfrecord")


def test_image_summary_counts_formats_and_keeps_the_largest_shorter_side():
    a, b = manifest.images_summary(), manifest.images_summary()
    for fmt, h, w in [("jpeg", 300, 224), ("png", 100, 500), ("jpeg", 224, 224)]:
        manifest.add_image(a, fmt, h, w)
    manifest.add_image(b, "jpeg", 230, 900)
    assert a == {"formats": {"jpeg": 2, "png": 1}, "max_short_side": 224}
    shards = [{manifest.IMAGES: a}, {manifest.IMAGES: b}, {manifest.IMAGES: manifest.images_summary()}]
    assert manifest.merged_images(shards) == {"formats": {"jpeg": 3, "png": 1}, "max_short_side": 230}
    assert manifest.merged_images(shards + [{"file": "written-before-the-summary"}]) is None
