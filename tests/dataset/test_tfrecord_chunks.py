"""utils/dataset/tfrecord.py: records encoded and framed as chunks, the image planes never copied."""
from __future__ import annotations

import os
import random

from utils.dataset import schema, tfrecord


def test_chunks_join_to_the_record_and_keep_the_planes_uncopied():
    rng = random.Random(0)
    for _ in range(200):
        planes = [os.urandom(rng.choice([1, 100, 4095, 4096, 30_000])) for _ in range(rng.randint(1, 3))]
        labels = [rng.choice([0, 1, 127, 128, 300, 16_383, 16_384, 2**31]) for _ in range(rng.randint(0, 3))]
        sid = os.urandom(rng.choice([0, 5, 300, 5000]))
        h, w = rng.choice([(1, 1), (127, 128), (16_383, 16_384)])
        chunks = schema.serialize_chunks(planes, "jpeg", h, w, 3, labels, sid)
        rec = schema.serialize(planes, "jpeg", h, w, 3, labels, sid)
        assert b"".join(chunks) == rec
        big = [p for p in planes + [sid] if len(p) >= 4096]
        assert all(any(c is p for c in chunks) for p in big)      # the same objects: not copied
        assert not any(len(a) < 4096 and len(b) < 4096 for a, b in zip(chunks, chunks[1:]))   # small runs joined
        header, footer = tfrecord.frame_parts(rec)
        assert b"".join(tfrecord.frame_chunks(chunks)) == header + rec + footer


def reference_varint(n: int) -> bytes:
    """A protobuf varint the textbook way (int64 two's complement, 7 bits a byte)."""
    n &= 0xFFFFFFFFFFFFFFFF
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def test_varint_matches_protobuf_for_every_width():
    for n in [*range(0, 20_000, 7), 127, 128, 16_383, 16_384, 2**21, 2**35, 2**63 - 1, -1, -300]:
        assert tfrecord._varint(n) == reference_varint(n), n
