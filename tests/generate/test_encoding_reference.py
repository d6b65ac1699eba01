"""The writer's fast record encoding (utils.dataset.tfrecord, cached entries, 3-byte varints) gives
the bytes of a plain protobuf encoder written out here (its varint: test_tfrecord_chunks's), for
every width of every field."""
from __future__ import annotations

import os
import random

import numpy as np

from tests.dataset.test_tfrecord_chunks import reference_varint as _varint
from utils.dataset import schema, tfrecord


def _field(number: int, payload: bytes) -> bytes:
    return _varint((number << 3) | 2) + _varint(len(payload)) + payload


def _reference(features: dict[str, tuple[str, list]]) -> bytes:
    """Example{Features{map<key, Feature>}} encoded the textbook way (nested joins)."""
    entries = b""
    for key, (kind, values) in features.items():
        if kind == "bytes":
            feature = _field(1, b"".join(_field(1, v) for v in values))
        else:
            packed = b"".join(_varint(int(v)) for v in values)
            feature = _field(3, _field(1, packed) if packed else b"")
        entries += _field(1, _field(1, key.encode()) + _field(2, feature))
    return _field(1, entries)


def test_fast_encoding_equals_the_textbook_encoding():
    rng = random.Random(1)
    sizes = [0, 1, 127, 128, 4095, 4096, 16_383, 16_384, 110_000, 2**21 - 1, 2**21]
    for _ in range(60):
        planes = [os.urandom(rng.choice(sizes)) or b"x" for _ in range(rng.randint(1, 3))]
        labels = [rng.choice([0, 5, 127, 128, 16_383, 16_384, 2**21, 2**40]) for _ in range(rng.randint(0, 3))]
        h, w = rng.choice([(1, 1), (127, 128), (16_383, 16_384), (2**21 - 1, 2**21)])
        channels = rng.choice([1, 3, np.int64(4)])   # a numpy int must encode as the int
        sid = os.urandom(rng.choice([0, 3, 200, 5000]))
        chunks = schema.serialize_chunks(planes, "jpeg", h, w, channels, labels, sid)
        want = _reference({schema.ENCODED: ("bytes", planes), schema.FORMAT: ("bytes", [b"jpeg"]),
                           schema.HEIGHT: ("int", [h]), schema.WIDTH: ("int", [w]),
                           schema.CHANNELS: ("int", [channels]), schema.LABEL: ("int", labels),
                           schema.SOURCE_ID: ("bytes", [sid])})
        assert b"".join(chunks) == want
        assert all(any(c is p for c in chunks) for p in planes if len(p) >= 4096)   # planes uncopied
        assert not any(len(a) < 4096 and len(b) < 4096 for a, b in zip(chunks, chunks[1:]))
