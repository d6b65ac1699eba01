"""utils/dataset/manifest.py: the shard file names of the on-disk layout."""
import re

from utils.dataset import manifest


def test_shard_names_are_numbered_per_split_and_match_the_pattern():
    names = [manifest.shard_name(split, i, 12) for split in manifest.SPLITS for i in range(12)]
    assert names[:2] == ["train-00000-of-00012.tfrecord", "train-00001-of-00012.tfrecord"]
    assert all(re.fullmatch(manifest.SHARD_PATTERN, n) for n in names)
    assert not re.fullmatch(manifest.SHARD_PATTERN, "extra-00000-of-00001.tfrecord")
    assert not re.fullmatch(manifest.SHARD_PATTERN, "train-0-of-1.tfrecord")
