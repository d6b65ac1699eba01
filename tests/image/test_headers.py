"""utils/image/headers.py on its own: the struct-level walkers and structure checks."""
import io
import struct
import subprocess
import sys

import pytest
from PIL import Image

from tests.conftest import ROOT, encode_image, random_image
from tests.image.crafted import huge_jpeg, huge_png, png_chunk
from utils.image.headers import (
    STRUCTURE_CHECKS,
    BadImage,
    bmp_header,
    check_bmp,
    check_gif,
    check_jpeg,
    check_png,
    check_webp,
    end_without_zero_padding,
    jpeg_header,
    png_header,
    refuse_size,
    sniff,
    webp_animated,
)

BIG = 10**9


def image(fmt, c=3, **kw):
    return encode_image(random_image(0, 24, 32, c), fmt, **kw)


def pil_png(im, **kw):
    buf = io.BytesIO()
    im.save(buf, "PNG", **kw)
    return buf.getvalue()


def reason(fn, *args):
    with pytest.raises(BadImage) as e:
        fn(*args)
    return str(e.value)


def test_headers_need_neither_pillow_nor_numpy():
    code = "import sys, utils.image.headers; sys.exit(bool({'PIL', 'numpy', 'tensorflow'} & set(sys.modules)))"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


def test_sniff():
    got = {fmt: sniff(image(fmt)) for fmt in ("jpeg", "png", "gif", "bmp", "tiff", "webp")}
    assert got == {"jpeg": "JPEG", "png": "PNG", "gif": "GIF", "bmp": "BMP", "tiff": "TIFF", "webp": "WEBP"}
    assert sniff(b"RIFF\x10\x00\x00\x00WAVEfmt ") is None
    assert sniff(b"id,label\n") is None and sniff(b"") is None


def test_refuse_size():
    refuse_size(50, 40, 2000)
    assert reason(refuse_size, 50, 40, 1999) == "image too large: 50x40"
    assert reason(refuse_size, 0, 40, BIG) == "corrupt image"
    assert reason(refuse_size, 50, -1, BIG) == "corrupt image"


def test_end_without_zero_padding():
    assert end_without_zero_padding(b"abc\0\0") == 3
    assert end_without_zero_padding(b"\0" * 10) == 0 and end_without_zero_padding(b"") == 0
    assert end_without_zero_padding(b"x" + b"\0" * 200_000) == 1     # padding longer than one 64 KiB look


# ------------------------------------------------------------------ JPEG

def test_jpeg_header_size_components_and_scan_offset():
    rgb = image("jpeg")
    w, h, comps, scan = jpeg_header(rgb, BIG)
    assert (w, h, comps) == (32, 24, 3)
    sos = rgb.rfind(b"\xff\xda", 0, scan)
    assert sos > 0 and scan == sos + 2 + struct.unpack_from(">H", rgb, sos + 2)[0]
    check_jpeg(rgb, scan)
    assert jpeg_header(image("jpeg", c=1), BIG)[2] == 1
    cmyk = io.BytesIO()
    Image.fromarray(random_image(0, 24, 32)).convert("CMYK").save(cmyk, "JPEG")
    assert jpeg_header(cmyk.getvalue(), BIG)[2] == 4


def test_jpeg_header_refusals():
    rgb = image("jpeg")
    assert reason(jpeg_header, huge_jpeg(), 100) == "image too large: 60000x60000"
    assert reason(jpeg_header, rgb[:20], BIG) == "truncated image"
    assert reason(jpeg_header, b"\xff\xd8\xff\xd9" + b"\0" * 8, BIG) == "corrupt image"      # EOI first
    sof = rgb.index(b"\xff\xc0")
    twelve = bytearray(rgb)
    twelve[sof + 4] = 12
    assert reason(jpeg_header, bytes(twelve), BIG) == "unsupported format: 12-bit jpeg"
    sos = rgb.index(b"\xff\xda")
    scan_first = rgb[:sof] + rgb[sos:]                   # a scan with no frame header before it
    assert reason(jpeg_header, scan_first, BIG) == "corrupt image"


def test_check_jpeg_wants_eoi_after_the_scan():
    rgb = image("jpeg")
    scan = jpeg_header(rgb, BIG)[3]
    check_jpeg(rgb + b"SEFHtrailer", scan)
    assert reason(check_jpeg, rgb[:-2], scan) == "truncated image"
    assert reason(check_jpeg, rgb[:-2] + b"\0" * 64, scan) == "truncated image"


# ------------------------------------------------------------------ PNG

def test_png_header_channels_frames_and_idat():
    gray = Image.fromarray(random_image(0, 24, 32, 1))
    pal = Image.fromarray(random_image(0, 24, 32)).convert("P")
    frames = [Image.new("RGB", (32, 24), c) for c in ("red", "lime", "blue")]
    cases = {
        "gray": (image("png", c=1), 1, 1),
        "gray_trns": (image("png", c=1, transparency=0), 1, 1),     # libpng ignores tRNS on gray
        "rgb": (image("png"), 3, 1),
        "rgba": (image("png", c=4), 4, 1),
        "la": (pil_png(gray.convert("LA")), 2, 1),
        "palette": (pil_png(pal), 3, 1),
        "palette_trns": (pil_png(pal, transparency=0), 4, 1),
        "apng": (pil_png(frames[0], save_all=True, append_images=frames[1:]), 3, 3),
    }
    for name, (data, channels, n_frames) in cases.items():
        w, h, c, f, idat = png_header(data, BIG)
        assert (w, h, c, f) == (32, 24, channels, n_frames), name
        assert data[idat + 4 : idat + 8] == b"IDAT", name


def test_png_header_refusals():
    png = image("png")
    assert reason(png_header, huge_png(), 100) == "image too large: 60000x60000"
    assert reason(png_header, png[:20], BIG) == "truncated image"
    assert reason(png_header, png[:40], BIG) == "truncated image"    # past IHDR, before IDAT
    bad_crc = bytearray(png)
    bad_crc[20] ^= 1                                                 # width byte inside IHDR
    assert reason(png_header, bytes(bad_crc), BIG) == "corrupt image"
    assert reason(png_header, png[:33] + png_chunk(b"IEND", b""), BIG) == "corrupt image"   # no pixel data


def test_check_png_wants_iend():
    png = image("png")
    for ok in (png, png + b"\0" * 50, png + b"junk"):
        check_png(ok)
    assert reason(check_png, png[:-12]) == "truncated image"
    assert reason(check_png, png[: len(png) // 2]) == "truncated image"


# ------------------------------------------------------------------ GIF, BMP, WebP

def test_check_gif_wants_the_trailer():
    gif = image("gif")
    check_gif(gif)
    check_gif(gif + b"\0" * 10)
    assert reason(check_gif, gif[:-1]) == "truncated image"
    assert reason(check_gif, b"\0" * 10) == "truncated image"


def test_bmp_header_and_length_check():
    bmp = image("bmp")
    assert bmp_header(bmp) == (54, 32, 24, 24, 0)
    check_bmp(bmp)
    assert reason(check_bmp, bmp[:-100]) == "truncated image"
    assert reason(check_bmp, bmp[:20]) == "truncated image"
    with pytest.raises(struct.error):
        bmp_header(bmp[:20])
    os2 = b"BM" + struct.pack("<IHHI", 0, 0, 0, 26) + struct.pack("<IHHHH", 12, 5, 3, 1, 24)
    assert bmp_header(os2) == (26, 5, 3, 24, 0)
    assert reason(check_bmp, os2) == "truncated image"                  # 3 rows of 16 bytes missing
    check_bmp(os2 + b"\0" * 48)


def test_check_webp_and_animation_flag():
    still = image("webp")
    check_webp(still)
    assert reason(check_webp, still[:-20]) == "truncated image"
    assert reason(check_webp, still[:8]) == "truncated image"
    frames = [Image.new("RGB", (32, 24), c) for c in ("red", "lime")]
    buf = io.BytesIO()
    frames[0].save(buf, "WEBP", save_all=True, append_images=frames[1:])
    assert webp_animated(buf.getvalue()) and not webp_animated(still)


def test_structure_checks_cover_the_formats_pillow_opens():
    assert STRUCTURE_CHECKS == {"png": check_png, "gif": check_gif, "bmp": check_bmp, "webp": check_webp}
