"""utils/imagecheck.py: reasons for bad input, channel counts that match what
TensorFlow really decodes, and the resize / convert path (EXIF, TIFF, GIF)."""
import io
import struct
import subprocess
import sys
import time
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from utils.image.prepare import BadImage, ImageInfo, check_image, prepare_planes

RNG = np.random.default_rng(0)


def pil_bytes(im, fmt, **kw):
    b = io.BytesIO()
    im.save(b, fmt, **kw)
    return b.getvalue()


def noise(h=24, w=32, c=3, dtype=np.uint8, hi=255):
    shape = (h, w) if c == 1 else (h, w, c)
    return RNG.integers(0, hi, shape, dtype=dtype)


def cv(ext, arr):
    ok, buf = cv2.imencode(ext, arr)
    assert ok
    return buf.tobytes()


def tf_decode(data):
    import tensorflow as tf

    return tf.io.decode_image(data, channels=0, dtype=tf.uint8, expand_animations=False).numpy()


def png_chunk(ctype, payload):
    return struct.pack(">I", len(payload)) + ctype + payload + struct.pack(">I", zlib.crc32(ctype + payload))


# ---------------------------------------------------------------- channels

def channel_cases():
    """name -> (bytes, passes through untouched?)"""
    rgb = Image.fromarray(noise())
    rgba = Image.fromarray(noise(c=4))
    gray = Image.fromarray(noise(c=1))
    pal = rgb.convert("P")
    frames = [Image.new("RGB", (32, 24), c) for c in ("red", "lime", "blue")]
    cases = {
        "jpeg_rgb": (cv(".jpg", noise()), True),
        "jpeg_gray": (cv(".jpg", noise(c=1)), True),
        "jpeg_cmyk": (pil_bytes(rgb.convert("CMYK"), "JPEG"), True),
        "jpeg_progressive": (pil_bytes(rgb, "JPEG", progressive=True), True),
        "png_1bit": (pil_bytes(gray.convert("1"), "PNG"), True),
        "png_L": (pil_bytes(gray, "PNG"), True),
        "png_LA": (pil_bytes(gray.convert("LA"), "PNG"), True),
        "png_rgb": (cv(".png", noise()), True),
        "png_rgba": (cv(".png", noise(c=4)), True),
        "png_palette": (pil_bytes(pal, "PNG"), True),
        "png_palette_trns": (pil_bytes(pal, "PNG", transparency=0), True),
        "png_L_trns": (pil_bytes(gray, "PNG", transparency=0), True),
        "png_rgb_trns": (pil_bytes(rgb, "PNG", transparency=(0, 0, 0)), True),
        "png_16bit_gray": (cv(".png", noise(c=1, dtype=np.uint16, hi=65535)), True),
        "png_16bit_rgb": (cv(".png", noise(dtype=np.uint16, hi=65535)), True),
        "png_16bit_rgba": (cv(".png", noise(c=4, dtype=np.uint16, hi=65535)), True),
        "apng": (pil_bytes(frames[0], "PNG", save_all=True, append_images=frames[1:]), True),
        "gif": (pil_bytes(pal, "GIF"), True),
        "gif_trns": (pil_bytes(pal, "GIF", transparency=0), True),
        "gif_animated": (pil_bytes(frames[0], "GIF", save_all=True, append_images=frames[1:]), True),
        "bmp_24": (cv(".bmp", noise()), True),
        "bmp_32_bgra": (cv(".bmp", noise(c=4)), True),
        "bmp_32_pil": (pil_bytes(rgba, "BMP"), True),
        "bmp_gray": (cv(".bmp", noise(c=1)), True),
        "bmp_palette": (pil_bytes(pal, "BMP"), False),      # TF would read palette indices as gray
        "bmp_1bit": (pil_bytes(gray.convert("1"), "BMP"), False),
        "webp_lossy": (pil_bytes(rgb, "WEBP"), True),
        "webp_lossless_rgba": (pil_bytes(rgba, "WEBP", lossless=True), True),
        "webp_animated": (pil_bytes(frames[0], "WEBP", save_all=True, append_images=frames[1:]), False),
        "tiff_rgb": (pil_bytes(rgb, "TIFF"), False),
        "tiff_16bit_gray": (pil_bytes(Image.fromarray(noise(c=1, dtype=np.uint16, hi=65535)), "TIFF"), False),
        "tiff_cmyk": (pil_bytes(rgb.convert("CMYK"), "TIFF"), False),
        "tiff_rgba_multipage": (pil_bytes(rgba, "TIFF", save_all=True, append_images=[rgba]), False),
    }
    return cases


CASES = channel_cases()


@pytest.mark.parametrize("name", sorted(CASES))
def test_channels_match_tensorflow(name):
    data, passthrough = CASES[name]
    info = check_image(data)
    out, pinfo = prepare_planes([data])
    assert (out[0] is data) == passthrough, "pass-through decision"
    assert pinfo == info or not passthrough
    # what TF gives for the stored bytes is what the record says
    img = tf_decode(out[0])
    assert img.shape == (pinfo.height, pinfo.width, pinfo.channels), (name, pinfo)
    assert (pinfo.height, pinfo.width) == (24, 32)
    if passthrough:
        assert info.channels == img.shape[-1]
        assert pinfo.fmt == info.fmt
    else:
        assert pinfo.fmt == "png"


def test_expected_channel_table():
    # the mapping promised in the docs, spelled out
    want = {"jpeg_gray": 1, "jpeg_cmyk": 3, "png_L": 1, "png_LA": 2, "png_rgba": 4, "png_palette": 3,
            "png_palette_trns": 4, "png_16bit_gray": 1, "png_1bit": 1, "gif_trns": 3, "bmp_32_bgra": 4,
            "webp_lossless_rgba": 4, "tiff_16bit_gray": 1, "tiff_cmyk": 3}
    got = {k: check_image(CASES[k][0]).channels for k in want}
    assert got == want
    assert {k: check_image(CASES[k][0]).fmt for k in ("jpeg_rgb", "gif", "bmp_24", "webp_lossy", "tiff_rgb")} == {
        "jpeg_rgb": "jpeg", "gif": "gif", "bmp_24": "bmp", "webp_lossy": "webp", "tiff_rgb": "tiff"}


def test_frames_counted_and_first_frame_used():
    data = CASES["gif_animated"][0]
    info = check_image(data)
    assert info.frames == 3
    # pass-through: TF shows the first frame (red)
    px = tf_decode(prepare_planes([data])[0][0])[12, 16]
    assert px[0] > 200 and px[1] < 50 and px[2] < 50
    # resized: Pillow re-encodes the first frame too
    out, rinfo = prepare_planes([data], max_side=16)
    assert (rinfo.width, rinfo.height, rinfo.frames) == (16, 12, 1)
    px = tf_decode(out[0])[6, 8]
    assert px[0] > 200 and px[1] < 50 and px[2] < 50
    # animated WebP (TF cannot decode it safely): first frame as PNG
    out, winfo = prepare_planes([CASES["webp_animated"][0]])
    assert winfo.fmt == "png" and check_image(CASES["webp_animated"][0]).frames == 3
    px = tf_decode(out[0])[12, 16]
    assert px[0] > 200 and px[1] < 50 and px[2] < 50


# ---------------------------------------------------------------- bad input

def test_bad_input_reasons():
    jpg = cv(".jpg", noise(48, 64))
    png = cv(".png", noise(48, 64))
    gif = CASES["gif_animated"][0]
    bmp = CASES["bmp_24"][0]
    webp = CASES["webp_lossy"][0]
    bad = {
        b"": "empty file",
        b"hello, this is text\n": "not an image",
        b"id,label\n1,cat\n": "not an image",
        bytes(range(256)) * 4: "not an image",
        b"\x00" * 100: "not an image",
        jpg[: len(jpg) // 2]: "truncated image",
        jpg[:-2]: "truncated image",                       # no EOI
        jpg[:-2] + b"\x00" * 64: "truncated image",        # padded, still no EOI
        jpg[:20]: "truncated image",                       # inside the headers
        png[: len(png) // 2]: "truncated image",
        png[:-12]: "truncated image",                      # no IEND
        png[:20]: "truncated image",
        gif[: len(gif) - 40]: "truncated image",
        gif[:-1]: "truncated image",                       # no trailer
        bmp[:-100]: "truncated image",
        webp[:-20]: "truncated image",
    }
    for data, reason in bad.items():
        with pytest.raises(BadImage) as e:
            check_image(data)
        assert str(e.value) == reason, (data[:16], str(e.value))
        with pytest.raises(BadImage):
            prepare_planes([data])


def test_damaged_tiff_and_ico_print_no_warnings():
    # Pillow warns once per bad tag; in a writer run those lines cut through the progress bar
    import random
    import warnings

    r = random.Random(0)
    samples = [pil_bytes(Image.fromarray(noise(40, 50)), fmt) for fmt in ("TIFF", "ICO")]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for data in samples:
            for trial in range(150):
                d = bytearray(data[: r.randrange(8, len(data))] if trial % 2 else data)
                d[r.randrange(min(len(d), 200))] = r.randrange(256)
                for max_side in (None, 16):
                    try:
                        prepare_planes([bytes(d)], max_side=max_side)
                    except BadImage:
                        pass
    assert not caught, sorted({str(w.message) for w in caught})[:5]


def test_tolerated_tails():
    jpg = cv(".jpg", noise())
    png = cv(".png", noise())
    for data in (jpg + b"\x00" * 1000, jpg + b"SEFHtrailer-after-EOI", png + b"\x00" * 50, png + b"junk"):
        assert check_image(data).width == 32


def test_unsupported_format():
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n%%EndComments\n" + b"showpage\n" * 4
    with pytest.raises(BadImage) as e:
        check_image(eps)
    assert str(e.value) == "unsupported format: eps"
    # a 12-bit JPEG: patch the SOF precision byte of an ordinary one
    jpg = bytearray(cv(".jpg", noise()))
    sof = jpg.index(b"\xff\xc0")
    jpg[sof + 4] = 12
    with pytest.raises(BadImage) as e:
        check_image(bytes(jpg))
    assert str(e.value) == "unsupported format: 12-bit jpeg"


def huge_png():
    ihdr = struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IEND", b"")


def huge_jpeg():
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, 60000, 60000, 3) + b"\x01\x22\x00\x02\x11\x01\x03\x11\x01"
    return b"\xff\xd8" + b"\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00" + sof + b"\xff\xd9"


def huge_gif():
    return b"GIF89a" + struct.pack("<HHBBB", 60000, 60000, 0, 0, 0) + b",\x00\x00\x00\x00" + struct.pack(
        "<HH", 60000, 60000) + b"\x00\x02\x02\x44\x01\x00;"


def huge_bmp():
    return b"BM" + struct.pack("<IHHI", 54, 0, 0, 54) + struct.pack("<IiiHHIIiiII", 40, 60000, 60000, 1, 24, 0, 0, 0, 0, 0, 0)


@pytest.mark.parametrize("make", [huge_png, huge_jpeg, huge_gif, huge_bmp])
def test_absurd_header_refused_before_allocation(make):
    data = make()
    assert len(data) < 200
    t = time.perf_counter()
    with pytest.raises(BadImage) as e:
        prepare_planes([data], max_side=64)
    assert time.perf_counter() - t < 0.5
    assert str(e.value) == "image too large: 60000x60000"
    with pytest.raises(BadImage) as e:
        check_image(data, max_pixels=100)
    assert str(e.value) == "image too large: 60000x60000"


def test_our_limit_not_pillows():
    small = cv(".png", noise(40, 50))
    with pytest.raises(BadImage) as e:
        check_image(small, max_pixels=40 * 50 - 1)
    assert str(e.value) == "image too large: 50x40"
    assert check_image(small, max_pixels=40 * 50).width == 50
    # above Pillow's own bomb limit but below ours: the header is accepted
    assert check_image(huge_gif(), max_pixels=4_000_000_000).width == 60000


def test_planes_differ_in_size():
    a = cv(".png", noise(32, 32, c=1))
    b = cv(".png", noise(32, 30, c=1))
    with pytest.raises(BadImage) as e:
        prepare_planes([a, b])
    assert str(e.value) == "planes differ in size"


# ---------------------------------------------------------------- pass-through / resize

def test_multiplane_passthrough_untouched():
    planes = [cv(".png", noise(40, 48, c=1)) for _ in range(6)]
    out, info = prepare_planes(planes)
    assert all(o is p for o, p in zip(out, planes))
    assert (info.fmt, info.height, info.width, info.channels) == ("png", 40, 48, 1)
    out, info = prepare_planes(planes, max_side=24)
    assert len(out) == 6 and (info.height, info.width) == (20, 24)
    assert all(tf_decode(o).shape == (20, 24, 1) for o in out)


def test_resize_keeps_aspect_never_upscales_and_keeps_format():
    jpg = cv(".jpg", noise(48, 96))
    out, info = prepare_planes([jpg], max_side=32)
    assert info == ImageInfo("jpeg", 16, 32, 3, 1)
    assert out[0][:3] == b"\xff\xd8\xff" and tf_decode(out[0]).shape == (16, 32, 3)
    same, info = prepare_planes([jpg], max_side=96)       # already small enough: untouched
    assert same[0] is jpg and info.width == 96
    png = cv(".png", noise(96, 48, c=4))
    out, info = prepare_planes([png], max_side=40)
    assert info == ImageInfo("png", 40, 20, 4, 1) and out[0].startswith(b"\x89PNG")
    cmyk = pil_bytes(Image.fromarray(noise(48, 96)).convert("CMYK"), "JPEG")
    out, info = prepare_planes([cmyk], max_side=32)
    assert info == ImageInfo("jpeg", 16, 32, 3, 1) and tf_decode(out[0]).shape == (16, 32, 3)


def test_short_side_limit_keeps_aspect_and_combines_with_max_side():
    jpg = cv(".jpg", noise(150, 400))                      # 400 wide, 150 high
    out, info = prepare_planes([jpg], short_side=60)
    assert (info.height, info.width) == (60, 160) and tf_decode(out[0]).shape == (60, 160, 3)
    out, info = prepare_planes([jpg], short_side=60, max_side=120)   # both limits hold
    assert (info.height, info.width) == (45, 120)
    same, info = prepare_planes([jpg], short_side=150)    # shorter side already <= N: untouched
    assert same[0] is jpg
    # the exact N even where the scale factor is not a round number (300 * 224/300)
    out, info = prepare_planes([cv(".jpg", noise(300, 457))], short_side=224)
    assert min(info.height, info.width) == 224 and min(tf_decode(out[0]).shape[:2]) == 224
    with pytest.raises(ValueError, match="short_side"):
        prepare_planes([jpg], short_side=0)


def test_16bit_scaled_like_tensorflow():
    arr = np.full((40, 40), 0x8040, np.uint16)
    png16 = cv(".png", arr)
    assert tf_decode(png16)[0, 0, 0] == 0x80
    out, info = prepare_planes([png16], max_side=20)
    assert info.channels == 1 and tf_decode(out[0])[5, 5, 0] == 0x80
    tif16 = pil_bytes(Image.fromarray(arr), "TIFF")
    out, info = prepare_planes([tif16])
    assert (info.fmt, info.channels) == ("png", 1) and tf_decode(out[0])[5, 5, 0] == 0x80


def test_tiff_becomes_png():
    arr = noise(24, 32)
    out, info = prepare_planes([pil_bytes(Image.fromarray(arr), "TIFF")])
    assert info == ImageInfo("png", 24, 32, 3, 1) and out[0].startswith(b"\x89PNG")
    np.testing.assert_array_equal(tf_decode(out[0]), arr)     # lossless conversion


def exif_jpeg(orientation):
    # stored 80 wide x 40 high: left half red, right half blue
    arr = np.zeros((40, 80, 3), np.uint8)
    arr[:, :40] = (255, 0, 0)
    arr[:, 40:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = orientation
    return pil_bytes(Image.fromarray(arr), "JPEG", exif=exif.tobytes(), quality=95)


def test_exif_orientation_applied_when_resizing_only():
    data = exif_jpeg(6)   # 6: display = stored rotated 90 degrees clockwise
    # pass-through keeps the stored bytes and orientation (TF ignores EXIF)
    out, info = prepare_planes([data])
    assert out[0] is data and (info.width, info.height) == (80, 40)
    # resized: rotated upright, 20 wide x 40 high, left half (red) now on top
    out, info = prepare_planes([data], max_side=40)
    assert (info.width, info.height) == (20, 40)
    img = tf_decode(out[0])
    assert img.shape == (40, 20, 3)
    top, bottom = img[5, 10], img[35, 10]
    assert top[0] > 200 and top[2] < 60, top
    assert bottom[2] > 200 and bottom[0] < 60, bottom


def test_no_tensorflow_import():
    code = "import sys, utils.image.prepare; sys.exit('tensorflow' in sys.modules)"
    root = __file__.rsplit("/tests/", 1)[0]
    assert subprocess.run([sys.executable, "-c", code], cwd=root).returncode == 0
