"""MultiChannelSource: one sample spread over several grayscale files."""
import io

import numpy as np
import pytest
from PIL import Image

from tests.conftest import write_image
from tests.sources.helpers import collect, write_text
from utils.image.prepare import prepare_planes
from utils.sources.base import SourceError
from utils.sources.multichannel import MultiChannelSource


def test_multichannel_recursion_layout(tmp_path):
    root = tmp_path / "train"
    for plate in ("Plate1", "Plate2"):
        for w, value in (("w1", 10), ("w2", 20), ("w3", 30)):
            write_image(root / "HEPG2-01" / plate / f"B02_s1_{w}.png", np.full((24, 32), value, np.uint8))
    write_image(root / "HEPG2-01" / "Plate1" / "B03_s1_w1.png", c=1)
    write_image(root / "HEPG2-01" / "Plate1" / "B03_s1_w2.png", c=1)
    write_image(root / "HEPG2-01" / "Plate1" / "B04_s1_w9.png", c=1)
    write_image(root / "noid.png", c=1)
    write_text(root / "README.txt", "x")
    src = MultiChannelSource(str(root), ["w3", "w1", "w2"])
    assert src.kind == "multichannel" and src.classes is None
    out, items, skips = collect(src)
    groups = 3   # Plate1/B02_s1, Plate2/B02_s1, Plate1/B03_s1
    stray = 3    # w9, noid, README
    assert len(out) == groups + stray
    assert sorted(items) == ["HEPG2-01/Plate1/B02_s1", "HEPG2-01/Plate2/B02_s1"]
    assert skips == {"HEPG2-01/Plate1/B03_s1": "missing channel w3",
                     "HEPG2-01/Plate1/B04_s1_w9.png": "unknown channel: w9",
                     "noid.png": "no channel suffix in file name",
                     "README.txt": "unsupported file type: .txt"}
    it = items["HEPG2-01/Plate2/B02_s1"]
    assert it.split == "test" and it.labels == () and it.source_id == "HEPG2-01/Plate2/B02_s1"
    planes = it.load()
    assert len(planes) == 3 and it.size == sum(map(len, planes))
    # planes come in the order of `channels`: w3 (30), w1 (10), w2 (20)
    decoded = [np.asarray(Image.open(io.BytesIO(p)))[0, 0] for p in planes]
    assert decoded == [30, 10, 20]
    stored, info = prepare_planes(planes)
    assert stored == planes and info.channels == 1


def test_multichannel_hpa_with_labels(tmp_path):
    root = tmp_path / "hpa"
    colours = ["red", "green", "blue", "yellow"]
    for sid in ("00070df0-bbc3", "000a6c98-bb9b", "nolabel"):
        for c in colours:
            write_image(root / f"{sid}_{c}.png", c=1)
    write_image(root / "sub" / "000a6c98-bb9b_red.png", c=1)   # incomplete group in a sub-folder
    csv = write_text(tmp_path / "train.csv", "Id,Target\n00070df0-bbc3,16 0\n000a6c98-bb9b,7 1 2 0\n"
                     "ghost,5\n")
    src = MultiChannelSource(str(root), colours, str(csv))
    assert src.multi_label
    out, items, skips = collect(src)
    assert len(out) == 4 + 1   # 4 groups + 1 CSV row without images
    assert {k: (v.labels, v.split) for k, v in items.items()} == {
        "00070df0-bbc3": (("16", "0"), None), "000a6c98-bb9b": (("7", "1", "2", "0"), None)}
    assert skips == {"nolabel": "no CSV row for image", "sub/000a6c98-bb9b": "missing channel green",
                     "ghost": "no image for CSV row"}


def test_multichannel_labels_by_group_id_and_names(tmp_path):
    root = tmp_path / "r"
    for plate in ("P1", "P2"):
        for w in ("w1", "w2"):
            write_image(root / plate / f"A01_{w}.png", c=1)
    csv = write_text(tmp_path / "l.csv", "id,sirna\nP1/A01,s2\nP2/A01,s9\n")
    names = write_text(tmp_path / "n.txt", "s1\ns2\n")
    src = MultiChannelSource(str(root), ["w1", "w2"], str(csv), str(names))
    assert src.classes == ["s1", "s2"]
    out, items, skips = collect(src)
    assert {k: v.labels for k, v in items.items()} == {"P1/A01": ("s2",)}
    assert skips == {"P2/A01": "label not in label list: s9"}


def test_multichannel_bad_arguments(tmp_path):
    with pytest.raises(SourceError, match="input not found"):
        MultiChannelSource(str(tmp_path / "nope"), ["w1"])
    with pytest.raises(SourceError, match="twice"):
        MultiChannelSource(str(tmp_path), ["w1", "w1"])
    with pytest.raises(SourceError, match="channel suffixes"):
        MultiChannelSource(str(tmp_path), [])
