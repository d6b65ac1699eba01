"""bench/opencv_ref.py: OpenCV's kernels timed for bench/augment.py's reference column."""
import os
import re

from tests.conftest import ROOT, random_image, write_image

BENCH = os.path.join(ROOT, "bench")


def test_reference_times_each_op_and_leaves_the_affinity_and_threads_as_they_were(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(BENCH)
    import cv2
    import opencv_ref

    for i in range(3):
        write_image(str(tmp_path / "c" / f"{i}.jpg"), random_image(i, 40 + 8 * i, 56, blocky=False))
    affinity, threads = os.sched_getaffinity(0), cv2.getNumThreads()
    cpu = sorted(affinity)[-1]
    seen = []
    real = opencv_ref._ms_per_image

    def spy(fn, images, rounds):
        seen.append((os.sched_getaffinity(0), cv2.getNumThreads(), {im.shape[:2] for im in images}, rounds))
        return real(fn, images, rounds)

    monkeypatch.setattr(opencv_ref, "_ms_per_image", spy)
    got = opencv_ref.reference(str(tmp_path), 32, cpu, rounds=2)
    assert set(got) == {"flip", "rotate", "rrc"}
    for name in ("flip", "rotate"):
        u8, f32 = map(float, re.fullmatch(r"uint8 (\S+) / float32 (\S+) ms", got[name]).groups())
        assert u8 >= 0 and f32 >= 0
    assert float(re.fullmatch(r"(\S+) ms", got["rrc"]).group(1)) >= 0
    assert len(seen) == 5 and all(a == {cpu} and t == 1 and r == 2 for a, t, _, r in seen)
    assert all(shapes == {(32, 32)} for _, _, shapes, _ in seen[:4])        # flip and rotate: SIZE x SIZE
    assert all(min(s) == 32 for s in seen[4][2]) and len(seen[4][2]) > 1     # rrc: the short-side photos
    assert os.sched_getaffinity(0) == affinity and cv2.getNumThreads() == threads
