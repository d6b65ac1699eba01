"""Is this a usable image, and what will TensorFlow make of it? Cheaply.

The writer calls `prepare_planes` once per sample, often in worker processes,
so this module never imports TensorFlow and never decodes pixels on the
common path:

* `check_image` reads only the header (size, channels, frames; nothing is
  allocated, so a header claiming 60,000 x 60,000 pixels is refused in
  microseconds) and then runs the structural checks of utils.image.headers,
  which cost a memory scan at most. JPEG and PNG (the bulk of every dataset)
  are read there with `struct` alone; every other format goes through
  Pillow's lazy `Image.open`.
* `prepare_planes` passes the original bytes through untouched when TF can
  decode them and no resize is asked (the fast path: no decode, no re-encode),
  and otherwise decodes with Pillow, honours EXIF orientation, resizes and
  re-encodes.

EXIF orientation: honoured only when we re-encode (resize or conversion).
Passed-through JPEGs keep their bytes, and `tf.io.decode_image` ignores EXIF,
so a camera photo stored sideways stays sideways; `--max-side` fixes that.

`ImageInfo.channels` is what `tf.io.decode_image(data, channels=0,
expand_animations=False)` returns for the bytes that end up in the record
(verified against TensorFlow in tests/image/test_prepare.py).
"""
from __future__ import annotations

import contextlib
import io
import struct
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from utils.image.headers import (
    STRUCTURE_CHECKS,
    BadImage,
    bmp_header,
    check_jpeg,
    check_png,
    jpeg_header,
    png_header,
    refuse_size,
    sniff,
    webp_animated,
)
from utils.image.scale import gray_to_8bit, target_size

# Formats TensorFlow's decode_image reads; everything else is converted to PNG.
TF_FORMATS = ("jpeg", "png", "gif", "bmp", "webp")
# Raster formats Pillow decodes by itself that we convert; anything else Pillow
# recognises (EPS needs Ghostscript, XBM/XPM are text, fonts, ...) is refused.
CONVERTIBLE = ("tiff", "ppm", "ico", "tga", "pcx", "psd", "jpeg2000", "dds", "sgi", "qoi")
DEFAULT_MAX_PIXELS = 100_000_000
JPEG_QUALITY = 95
PNG_COMPRESS_LEVEL = 4   # zlib level: a fair size/speed trade for freshly resized images


@dataclass
class ImageInfo:
    """What a record stores about its image: format, size after any resize, channels, frames."""

    fmt: str          # lowercase: jpeg, png, gif, bmp, webp, tiff, ...
    height: int
    width: int
    channels: int     # what tf.io.decode_image(channels=0) gives for the stored bytes
    frames: int       # > 1 for animations; only the first frame is used


# ---------------------------------------------------------------- opening

def _open(data: bytes, plugin: str | None) -> Image.Image:
    """Lazy Image.open (header only) where OUR max_pixels, not Pillow's, decides.

    Pillow warns above MAX_IMAGE_PIXELS and raises above twice that. We check
    the size ourselves right after opening, so the warning is noise; the error
    only fires for images we refuse anyway unless max_pixels was raised past
    Pillow's limit, in which case we open without Pillow's check.
    """
    formats = [plugin] if plugin else None
    with _quiet():
        try:
            return Image.open(io.BytesIO(data), formats=formats)
        except Image.DecompressionBombError:
            return _open_unchecked(data, formats)


def _open_unchecked(data: bytes, formats: list[str] | None) -> Image.Image:
    """Image.open's plugin loop without its decompression-bomb check."""
    Image.init()
    for name in formats or Image.ID:
        factory, accept = Image.OPEN[name]
        ok = accept is None or accept(data[:16])
        if ok and not isinstance(ok, str):   # a str is Pillow's "almost, but no" message
            try:
                return factory(io.BytesIO(data), "")
            except (SyntaxError, IndexError, TypeError, struct.error):
                continue
    raise Image.UnidentifiedImageError("cannot identify image")


@contextlib.contextmanager
def _quiet():
    """No Pillow warnings: a damaged TIFF / ICO warns once per bad tag ("Tag data
    larger than file", "Corrupt EXIF data"), lines that would run through the
    progress bar for an image that then either works or is skipped with a reason."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _pil_fmt(im: Image.Image) -> str:
    fmt = (im.format or "").lower()
    return "jpeg" if fmt == "mpo" else fmt   # camera "MPO" files are JPEGs to TF (first picture)


# ------------------------------------------------------------- channels

def _converted_mode(im: Image.Image) -> str:
    """The mode we re-encode to: one of L, LA, RGB, RGBA (what TF can give back)."""
    mode = im.mode
    if mode in ("1", "L", "I", "F") or mode.startswith("I;"):
        return "L"
    if mode in ("LA", "La"):
        return "LA"
    if mode == "P":
        return "RGBA" if "transparency" in im.info else "RGB"
    if mode in ("RGBA", "RGBa", "PA"):
        return "RGBA"
    return "RGB"   # RGB, RGBX, CMYK, YCbCr, LAB, HSV


_MODE_CHANNELS = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4}


def _pil_tf_channels(fmt: str, im: Image.Image, data: bytes) -> int:
    """What tf.io.decode_image(channels=0) returns for pass-through GIF / BMP / WebP."""
    if fmt == "gif":
        return 3                                   # TF's GIF decoder is always RGB
    if fmt == "bmp":
        return bmp_header(data)[3] // 8           # 8 -> 1, 24 -> 3, 32 -> 4 (even X8R8G8B8)
    return 4 if im.mode == "RGBA" else 3           # webp


def _pil_passthrough_ok(fmt: str, im: Image.Image, data: bytes) -> bool:
    """GIF / BMP / WebP bytes TF decodes correctly as they are (else: PNG)."""
    if fmt == "gif":
        return True
    if fmt == "webp":
        # TF 2.21 corrupts its heap decoding animated WebP (free(): invalid size):
        # such files always get their first frame re-encoded.
        return not webp_animated(data)
    if fmt == "bmp":
        # TF reads 8-bit BMPs as gray (ignoring the palette) and refuses 1/4/16-bit and RLE.
        _, _, _, bpp, comp = bmp_header(data)
        return (bpp == 24 and comp == 0) or (bpp == 32 and comp in (0, 3)) or (
            bpp == 8 and comp == 0 and im.mode == "L"
        )
    return False


# ------------------------------------------------------------- inspect

@dataclass
class _Inspected:
    info: ImageInfo
    passthrough: bool               # TF decodes these bytes as they are
    plugin: str | None              # Pillow format to open them with when re-encoding
    image: Image.Image | None = None   # already opened lazily (non JPEG/PNG)


def _reason_for_open_error(data: bytes, plugin: str | None, err: Exception) -> str:
    if plugin is None:
        return "not an image"
    check = STRUCTURE_CHECKS.get(plugin.lower())
    if check is not None:
        try:
            check(data)
        except BadImage as bad:
            return str(bad)
    if isinstance(err, (EOFError, struct.error)) or "truncat" in str(err).lower():
        return "truncated image"
    return "corrupt image"


def _inspect_jpeg(data: bytes, max_pixels: int) -> _Inspected:
    width, height, comps, scan_start = jpeg_header(data, max_pixels)
    if comps not in (1, 3, 4):
        raise BadImage("corrupt image")
    check_jpeg(data, scan_start)
    # one component -> gray; YCbCr / CMYK / YCCK all come out of TF as RGB
    return _Inspected(ImageInfo("jpeg", height, width, 1 if comps == 1 else 3, 1), True, "JPEG")


def _inspect_png(data: bytes, max_pixels: int) -> _Inspected:
    width, height, channels, frames, idat = png_header(data, max_pixels)
    check_png(data, idat)
    return _Inspected(ImageInfo("png", height, width, channels, frames), True, "PNG")


def _inspect_pil(data: bytes, plugin: str | None, max_pixels: int) -> _Inspected:
    try:
        im = _open(data, plugin)
    except Exception as e:   # Pillow raises many types on bad headers
        raise BadImage(_reason_for_open_error(data, plugin, e)) from None
    fmt = _pil_fmt(im)
    refuse_size(*im.size, max_pixels)
    if fmt not in TF_FORMATS and fmt not in CONVERTIBLE:
        raise BadImage(f"unsupported format: {fmt or 'unknown'}")
    if fmt in STRUCTURE_CHECKS:
        STRUCTURE_CHECKS[fmt](data)
    try:
        with _quiet():     # counting frames reads every TIFF IFD
            frames = int(getattr(im, "n_frames", 1))
            im.seek(0)
    except Exception:
        raise BadImage("truncated image") from None
    passthrough = fmt in TF_FORMATS and _pil_passthrough_ok(fmt, im, data)
    channels = _pil_tf_channels(fmt, im, data) if passthrough else _MODE_CHANNELS[_converted_mode(im)]
    return _Inspected(ImageInfo(fmt, im.height, im.width, channels, frames), passthrough, im.format, im)


def _inspect(data: bytes, max_pixels: int) -> _Inspected:
    if not data:
        raise BadImage("empty file")
    plugin = sniff(data)
    if plugin == "JPEG":
        return _inspect_jpeg(data, max_pixels)
    if plugin == "PNG":
        return _inspect_png(data, max_pixels)
    return _inspect_pil(data, plugin, max_pixels)


def check_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageInfo:
    """Header + structure check, no pixel decode.

    Returns:
        The image's info; for formats TF cannot read (TIFF, ...) `channels` is
        that of the PNG that `prepare_planes` converts them to.
    Raises:
        BadImage: the skipped.csv reason ("truncated image", "image too large: WxH", ...).
    """
    return _inspect(data, max_pixels).info


# ------------------------------------------------------------- re-encode

def _to_mode(im: Image.Image, mode: str) -> Image.Image:
    """Convert, scaling high-bit-depth gray to 8 bits the way TF does (>> 8)."""
    if mode == "L" and (im.mode in ("I", "F") or im.mode.startswith("I;")):
        return Image.fromarray(gray_to_8bit(np.asarray(im)), "L")
    return im if im.mode == mode else im.convert(mode)


def _reencode(data: bytes, seen: _Inspected, max_side: int | None,
              short_side: int | None = None) -> tuple[bytes, ImageInfo]:
    """Decode with Pillow (first frame, EXIF orientation applied), resize, encode."""
    info = seen.info
    try:
        im = seen.image if seen.image is not None else _open(data, seen.plugin)
    except Exception:
        raise BadImage("corrupt image") from None
    mode = _converted_mode(im)
    if info.fmt == "jpeg" and (max_side or short_side):
        # Let libjpeg decode at 1/2, 1/4 or 1/8 scale (DCT scaling): most of the
        # resize then costs nothing. draft() keeps the size >= the request.
        # The request is in stored (un-rotated) orientation, as is `im.size`
        # (a rotation swaps the sides, not which one is shorter).
        im.draft(im.mode if im.mode in ("L", "RGB", "CMYK") else None,
                 target_size(*im.size, max_side, short_side))
    try:
        with _quiet():
            im.load()
            ImageOps.exif_transpose(im, in_place=True)   # no-op (and no copy) without the tag
    except Image.DecompressionBombError:
        raise BadImage(f"image too large: {info.width}x{info.height}") from None
    except Exception as e:
        raise BadImage("truncated image" if "truncat" in str(e).lower() else "corrupt image") from None

    im = _to_mode(im, mode)
    size = target_size(im.width, im.height, max_side, short_side)
    if size != im.size:
        # Pillow's BILINEAR widens its kernel with the scale factor, so it is
        # properly anti-aliased when shrinking, at a third of LANCZOS's cost.
        im = im.resize(size, Image.Resampling.BILINEAR, reducing_gap=3.0)

    out = io.BytesIO()
    if info.fmt == "jpeg" and mode in ("L", "RGB"):
        im.save(out, "JPEG", quality=JPEG_QUALITY)
        fmt = "jpeg"
    else:
        im.save(out, "PNG", compress_level=PNG_COMPRESS_LEVEL)
        fmt = "png"
    return out.getvalue(), ImageInfo(fmt, im.height, im.width, _MODE_CHANNELS[mode], 1)


def prepare_planes(
    planes: list[bytes], *, max_side: int | None = None, short_side: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> tuple[list[bytes], ImageInfo]:
    """Check every plane; pass the bytes through, or resize / convert them.

    Multi-plane samples (microscopy channels) must have planes of one size.

    Args:
        planes: the encoded planes of one sample.
        max_side / short_side: shrink (aspect kept, never enlarged) until the
            longer side is at most max_side and the shorter at most short_side.
        max_pixels: refuse larger images from their header.
    Returns:
        (the planes to store, the info of the first one: the record's format,
        size and per-plane channel count).
    Raises:
        BadImage: the skipped.csv reason.
        ValueError: a limit below 1.
    """
    if not planes:
        raise BadImage("empty file")
    for what, limit in (("max_side", max_side), ("short_side", short_side)):
        if limit is not None and limit < 1:
            raise ValueError(f"{what} must be >= 1, got {limit}")
    seen = [_inspect(p, max_pixels) for p in planes]
    if len({(s.info.height, s.info.width) for s in seen}) > 1:
        raise BadImage("planes differ in size")

    first = seen[0].info
    resize = target_size(first.width, first.height, max_side, short_side) != (first.width, first.height)
    if not resize and all(s.passthrough for s in seen):
        return list(planes), first            # the fast path: bytes untouched

    out: list[bytes] = []
    infos: list[ImageInfo] = []
    for data, s in zip(planes, seen):
        if s.passthrough and not resize:
            out.append(data)
            infos.append(s.info)
        else:
            encoded, info = _reencode(data, s, *((max_side, short_side) if resize else (None, None)))
            out.append(encoded)
            infos.append(info)
    # EXIF rotation can swap one plane's sides; the stack must still line up
    if len({(i.height, i.width) for i in infos}) > 1:
        raise BadImage("planes differ in size")
    return out, infos[0]


__all__ = ["BadImage", "ImageInfo", "check_image", "prepare_planes", "TF_FORMATS", "DEFAULT_MAX_PIXELS"]
