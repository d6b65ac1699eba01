"""utils/image/prepare.py: reasons for bad input, channel counts that match what
TensorFlow really decodes, and the resize / convert path (EXIF, TIFF, GIF)."""
import io
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
from PIL import Image

from tests.conftest import ROOT, encode_image, random_image
from tests.image.crafted import huge_bmp, huge_gif, huge_jpeg, huge_png
from utils.image.prepare import BadImage, ImageInfo, check_image, prepare_planes


def noise(h=24, w=32, c=3):
    return random_image(0, h, w, c, blocky=False)


def noise16(h=24, w=32, c=1):
    shape = (h, w) if c == 1 else (h, w, c)
    return np.random.default_rng(0).integers(0, 65535, shape, dtype=np.uint16)


def pil_bytes(im, fmt, **kw):
    """Encode a Pillow image as it is: the modes an array cannot say (P, CMYK, 1, LA), animations."""
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def cv(ext, arr):
    """OpenCV's encoder, for the bytes Pillow does not write: 16-bit RGB(A) PNG, BITFIELDS BMP."""
    ok, buf = cv2.imencode(ext, arr)
    assert ok
    return buf.tobytes()


def tf_decode(data):
    import tensorflow as tf

    return tf.io.decode_image(data, channels=0, dtype=tf.uint8, expand_animations=False).numpy()


# ---------------------------------------------------------------- channels

def channel_cases():
    """name -> (bytes, passes through untouched?)"""
    rgb = Image.fromarray(noise())
    gray = Image.fromarray(noise(c=1))
    pal = rgb.convert("P")
    frames = [Image.new("RGB", (32, 24), c) for c in ("red", "lime", "blue")]
    cases = {
        "jpeg_rgb": (encode_image(noise(), "jpeg"), True),
        "jpeg_gray": (encode_image(noise(c=1), "jpeg"), True),
        "jpeg_cmyk": (pil_bytes(rgb.convert("CMYK"), "JPEG"), True),
        "jpeg_progressive": (encode_image(noise(), "jpeg", progressive=True), True),
        "png_1bit": (pil_bytes(gray.convert("1"), "PNG"), True),
        "png_L": (encode_image(noise(c=1), "png"), True),
        "png_LA": (pil_bytes(gray.convert("LA"), "PNG"), True),
        "png_rgb": (encode_image(noise(), "png"), True),
        "png_rgba": (encode_image(noise(c=4), "png"), True),
        "png_palette": (pil_bytes(pal, "PNG"), True),
        "png_palette_trns": (pil_bytes(pal, "PNG", transparency=0), True),
        "png_L_trns": (encode_image(noise(c=1), "png", transparency=0), True),
        "png_rgb_trns": (encode_image(noise(), "png", transparency=(0, 0, 0)), True),
        "png_16bit_gray": (encode_image(noise16(), "png"), True),
        "png_16bit_rgb": (cv(".png", noise16(c=3)), True),
        "png_16bit_rgba": (cv(".png", noise16(c=4)), True),
        "apng": (pil_bytes(frames[0], "PNG", save_all=True, append_images=frames[1:]), True),
        "gif": (pil_bytes(pal, "GIF"), True),
        "gif_trns": (pil_bytes(pal, "GIF", transparency=0), True),
        "gif_animated": (pil_bytes(frames[0], "GIF", save_all=True, append_images=frames[1:]), True),
        "bmp_24": (encode_image(noise(), "bmp"), True),
        "bmp_32_bgra": (cv(".bmp", noise(c=4)), True),            # BITFIELDS, V4 header
        "bmp_32_pil": (encode_image(noise(c=4), "bmp"), True),    # BI_RGB
        "bmp_gray": (encode_image(noise(c=1), "bmp"), True),
        "bmp_palette": (pil_bytes(pal, "BMP"), False),      # TF would read palette indices as gray
        "bmp_1bit": (pil_bytes(gray.convert("1"), "BMP"), False),
        "webp_lossy": (encode_image(noise(), "webp"), True),
        "webp_lossless_rgba": (encode_image(noise(c=4), "webp", lossless=True), True),
        "webp_animated": (pil_bytes(frames[0], "WEBP", save_all=True, append_images=frames[1:]), False),
        "tiff_rgb": (encode_image(noise(), "tiff"), False),
        "tiff_16bit_gray": (encode_image(noise16(), "tiff"), False),
        "tiff_cmyk": (pil_bytes(rgb.convert("CMYK"), "TIFF"), False),
        "tiff_rgba_multipage": (encode_image(noise(c=4), "tiff", save_all=True,
                                             append_images=[Image.fromarray(noise(c=4))]), False),
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
    jpg = encode_image(noise(48, 64), "jpeg")
    png = encode_image(noise(48, 64), "png")
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
    samples = [encode_image(noise(40, 50), fmt) for fmt in ("tiff", "ico")]
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
    jpg = encode_image(noise(), "jpeg")
    png = encode_image(noise(), "png")
    for data in (jpg + b"\x00" * 1000, jpg + b"SEFHtrailer-after-EOI", png + b"\x00" * 50, png + b"junk"):
        assert check_image(data).width == 32


def test_unsupported_format():
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n%%EndComments\n" + b"showpage\n" * 4
    with pytest.raises(BadImage) as e:
        check_image(eps)
    assert str(e.value) == "unsupported format: eps"
    # a 12-bit JPEG: patch the SOF precision byte of an ordinary one
    jpg = bytearray(encode_image(noise(), "jpeg"))
    sof = jpg.index(b"\xff\xc0")
    jpg[sof + 4] = 12
    with pytest.raises(BadImage) as e:
        check_image(bytes(jpg))
    assert str(e.value) == "unsupported format: 12-bit jpeg"


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
    small = encode_image(noise(40, 50), "png")
    with pytest.raises(BadImage) as e:
        check_image(small, max_pixels=40 * 50 - 1)
    assert str(e.value) == "image too large: 50x40"
    assert check_image(small, max_pixels=40 * 50).width == 50
    # above Pillow's own bomb limit but below ours: the header is accepted
    assert check_image(huge_gif(), max_pixels=4_000_000_000).width == 60000


def test_planes_differ_in_size():
    a = encode_image(noise(32, 32, c=1), "png")
    b = encode_image(noise(32, 30, c=1), "png")
    with pytest.raises(BadImage) as e:
        prepare_planes([a, b])
    assert str(e.value) == "planes differ in size"


# ---------------------------------------------------------------- pass-through / resize

def test_multiplane_passthrough_untouched():
    planes = [encode_image(noise(40, 48, c=1), "png") for _ in range(6)]
    out, info = prepare_planes(planes)
    assert all(o is p for o, p in zip(out, planes))
    assert (info.fmt, info.height, info.width, info.channels) == ("png", 40, 48, 1)
    out, info = prepare_planes(planes, max_side=24)
    assert len(out) == 6 and (info.height, info.width) == (20, 24)
    assert all(tf_decode(o).shape == (20, 24, 1) for o in out)


def test_resize_keeps_aspect_never_upscales_and_keeps_format():
    jpg = encode_image(noise(48, 96), "jpeg")
    out, info = prepare_planes([jpg], max_side=32)
    assert info == ImageInfo("jpeg", 16, 32, 3, 1)
    assert out[0][:3] == b"\xff\xd8\xff" and tf_decode(out[0]).shape == (16, 32, 3)
    same, info = prepare_planes([jpg], max_side=96)       # already small enough: untouched
    assert same[0] is jpg and info.width == 96
    png = encode_image(noise(96, 48, c=4), "png")
    out, info = prepare_planes([png], max_side=40)
    assert info == ImageInfo("png", 40, 20, 4, 1) and out[0].startswith(b"\x89PNG")
    cmyk = pil_bytes(Image.fromarray(noise(48, 96)).convert("CMYK"), "JPEG")
    out, info = prepare_planes([cmyk], max_side=32)
    assert info == ImageInfo("jpeg", 16, 32, 3, 1) and tf_decode(out[0]).shape == (16, 32, 3)


def test_short_side_limit_keeps_aspect_and_combines_with_max_side():
    jpg = encode_image(noise(150, 400), "jpeg")                      # 400 wide, 150 high
    out, info = prepare_planes([jpg], short_side=60)
    assert (info.height, info.width) == (60, 160) and tf_decode(out[0]).shape == (60, 160, 3)
    out, info = prepare_planes([jpg], short_side=60, max_side=120)   # both limits hold
    assert (info.height, info.width) == (45, 120)
    same, info = prepare_planes([jpg], short_side=150)    # shorter side already <= N: untouched
    assert same[0] is jpg
    # the exact N even where the scale factor is not a round number (300 * 224/300)
    out, info = prepare_planes([encode_image(noise(300, 457), "jpeg")], short_side=224)
    assert min(info.height, info.width) == 224 and min(tf_decode(out[0]).shape[:2]) == 224
    with pytest.raises(ValueError, match="short_side"):
        prepare_planes([jpg], short_side=0)


def test_16bit_scaled_like_tensorflow():
    arr = np.full((40, 40), 0x8040, np.uint16)
    png16 = encode_image(arr, "png")
    assert tf_decode(png16)[0, 0, 0] == 0x80
    out, info = prepare_planes([png16], max_side=20)
    assert info.channels == 1 and tf_decode(out[0])[5, 5, 0] == 0x80
    tif16 = encode_image(arr, "tiff")
    out, info = prepare_planes([tif16])
    assert (info.fmt, info.channels) == ("png", 1) and tf_decode(out[0])[5, 5, 0] == 0x80


def test_tiff_becomes_png():
    arr = noise(24, 32)
    out, info = prepare_planes([encode_image(arr, "tiff")])
    assert info == ImageInfo("png", 24, 32, 3, 1) and out[0].startswith(b"\x89PNG")
    np.testing.assert_array_equal(tf_decode(out[0]), arr)     # lossless conversion


def exif_jpeg(orientation):
    # stored 80 wide x 40 high: left half red, right half blue
    arr = np.zeros((40, 80, 3), np.uint8)
    arr[:, :40] = (255, 0, 0)
    arr[:, 40:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode_image(arr, "jpeg", exif=exif.tobytes(), quality=95)


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
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0
