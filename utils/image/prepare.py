"""Is this a usable image, and what will TensorFlow make of it? Cheaply.

The writer calls `prepare_planes` once per sample, often in worker processes,
so this module never imports TensorFlow and never decodes pixels on the
common path:

* `check_image` reads only the header (size, channels, frames; nothing is
  allocated, so a header claiming 60,000 x 60,000 pixels is refused in
  microseconds) and then runs structural checks that cost a memory scan at
  most: a JPEG must have its EOI marker after the scan data, a PNG must reach
  IEND, a GIF must end with its trailer, a BMP / WebP must be as long as its
  header says. JPEG and PNG headers (the bulk of every dataset) are walked
  here with `struct`: Pillow's JPEG plugin parses every table in Python and
  costs more than copying the file. Every other format goes through Pillow's
  lazy `Image.open`.
* `prepare_planes` passes the original bytes through untouched when TF can
  decode them and no resize is asked (the fast path: no decode, no re-encode),
  and otherwise decodes with Pillow, honours EXIF orientation, resizes and
  re-encodes.

EXIF orientation: honoured only when we re-encode (resize or conversion).
Passed-through JPEGs keep their bytes, and `tf.io.decode_image` ignores EXIF,
so a camera photo stored sideways stays sideways; `--max-side` fixes that.

`ImageInfo.channels` is what `tf.io.decode_image(data, channels=0,
expand_animations=False)` returns for the bytes that end up in the record
(verified against TensorFlow in tests/test_imagecheck.py).
"""
from __future__ import annotations

import contextlib
import io
import struct
import warnings
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

# Formats TensorFlow's decode_image reads; everything else is converted to PNG.
TF_FORMATS = ("jpeg", "png", "gif", "bmp", "webp")
# Raster formats Pillow decodes by itself that we convert; anything else Pillow
# recognises (EPS needs Ghostscript, XBM/XPM are text, fonts, ...) is refused.
CONVERTIBLE = ("tiff", "ppm", "ico", "tga", "pcx", "psd", "jpeg2000", "dds", "sgi", "qoi")
DEFAULT_MAX_PIXELS = 100_000_000
JPEG_QUALITY = 95
PNG_COMPRESS_LEVEL = 4   # zlib level: a fair size/speed trade for freshly resized images

# Magic bytes of the formats we handle ourselves; Image.open is then told the
# format, so no other plugin is tried (faster, and no misidentification).
_MAGIC = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"II+\x00", "TIFF"),
    (b"MM\x00+", "TIFF"),
)


@dataclass
class ImageInfo:
    fmt: str          # lowercase: jpeg, png, gif, bmp, webp, tiff, ...
    height: int
    width: int
    channels: int     # what tf.io.decode_image(channels=0) gives for the stored bytes
    frames: int       # > 1 for animations; only the first frame is used


class BadImage(Exception):
    """An input that cannot become a record; str() is the skipped.csv reason."""


# ---------------------------------------------------------------- opening

def _sniff(data: bytes) -> str | None:
    for magic, fmt in _MAGIC:
        if data.startswith(magic):
            return fmt
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


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


# ------------------------------------------------------- structure checks

def _end_without_zero_padding(data: bytes) -> int:
    """Index just past the last non-zero byte (downloads and disks pad with zeros)."""
    end = len(data)
    while end > 0:
        start = max(0, end - 65536)
        kept = data[start:end].rstrip(b"\0")
        if kept:
            return start + len(kept)
        end = start
    return 0


def _check_jpeg(data: bytes, scan_start: int) -> None:
    # An EOI marker after the start of the scan data. Looking from the end keeps
    # this O(padding) for good files; vendor trailers after EOI (Samsung) and
    # the second picture of an MPO are fine. An FF D9 pair cannot occur inside
    # entropy-coded data (FF is always stuffed), so a truncated scan has none.
    if data.rfind(b"\xff\xd9", scan_start) < 0:
        raise BadImage("truncated image")


# SOFn markers carry the frame size; C4 (DHT), C8 (JPG) and CC (DAC) do not.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _jpeg_header(data: bytes, max_pixels: int) -> tuple[int, int, int, int]:
    """(width, height, components, offset of the scan data): a marker walk.

    The size is refused as soon as the frame header is read, before anything
    else about the file (a crafted 60,000 x 60,000 header says "too large").

    Pillow's JPEG plugin parses every table in Python (~75 us for a photo,
    more than copying it); the writer's pass-through path needs only this.
    """
    n, pos, sof = len(data), 2, None
    while True:
        pos = data.find(b"\xff", pos)          # tolerate junk between segments, like libjpeg
        if pos < 0:
            raise BadImage("truncated image")
        while pos < n and data[pos] == 0xFF:     # fill bytes
            pos += 1
        if pos + 2 >= n:
            raise BadImage("truncated image")
        marker = data[pos]
        pos += 1
        if marker in (0x00, 0x01, 0xD8) or 0xD0 <= marker <= 0xD7:
            continue                             # stuffed byte / standalone markers
        if marker == 0xD9:
            raise BadImage("corrupt image")      # EOI before any scan
        (seglen,) = struct.unpack_from(">H", data, pos)
        if seglen < 2:
            raise BadImage("corrupt image")
        if marker in _JPEG_SOF:
            if pos + 8 > n:
                raise BadImage("truncated image")
            precision, height, width, comps = struct.unpack_from(">BHHB", data, pos + 2)
            _refuse_size(width, height, max_pixels)
            if precision != 8:   # neither TF nor Pillow's libjpeg decodes 12/16-bit JPEG
                raise BadImage(f"unsupported format: {precision}-bit jpeg")
            sof = (width, height, comps)
        elif marker == 0xDA:
            if sof is None:
                raise BadImage("corrupt image")
            return (*sof, pos + seglen)
        pos += seglen


_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"
# PNG colour type -> channels from TF's decoder (libpng expands palette+tRNS
# to RGBA but ignores tRNS on gray and RGB images).
_PNG_CHANNELS = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}


def _png_header(data: bytes, max_pixels: int) -> tuple[int, int, int, int, int]:
    """(width, height, channels, frames, offset of the first IDAT) from the chunks before IDAT.

    The size is refused right after IHDR, before anything else is looked at.
    """
    if len(data) < 33:
        raise BadImage("truncated image")
    length, ctype = struct.unpack_from(">I4s", data, 8)
    if ctype != b"IHDR" or length != 13:
        raise BadImage("corrupt image")
    width, height, _depth, colour = struct.unpack_from(">IIBB", data, 16)
    if zlib.crc32(data[12:29]) != struct.unpack_from(">I", data, 29)[0] or colour not in _PNG_CHANNELS:
        raise BadImage("corrupt image")
    _refuse_size(width, height, max_pixels)
    channels, frames, pos, n = _PNG_CHANNELS[colour], 1, 33, len(data)
    while True:
        if pos + 8 > n:
            raise BadImage("truncated image")
        length, ctype = struct.unpack_from(">I4s", data, pos)
        if ctype == b"IDAT":
            return width, height, channels, frames, pos
        if ctype == b"IEND":
            raise BadImage("corrupt image")      # no pixel data at all
        if ctype == b"tRNS" and colour == 3:
            channels = 4
        elif ctype == b"acTL" and length >= 8 and pos + 12 <= n:
            frames = max(1, struct.unpack_from(">I", data, pos + 8)[0])   # APNG; TF shows frame 1
        pos += 12 + length


def _check_png(data: bytes, pos: int = 8) -> None:
    """The image must reach IEND.

    Fast path: the file ends with the (constant) IEND chunk, zero padding
    allowed. Otherwise walk the chunks from `pos`: a chunk running past the
    end, or no IEND, is truncation. Pixel-data CRCs are not checked here
    (zlib.crc32 runs at ~2 GB/s, slower than the copy we must keep up with);
    a corrupt IDAT fails TF's decode, which `verify` runs on every record.
    """
    end = _end_without_zero_padding(data)
    if data[end - 12 : end] == _IEND:
        return
    n = len(data)
    while pos + 12 <= n:
        length, ctype = struct.unpack_from(">I4s", data, pos)
        if ctype == b"IEND":
            return
        pos += 12 + length
    raise BadImage("truncated image")


def _check_gif(data: bytes) -> None:
    end = _end_without_zero_padding(data)
    if end == 0 or data[end - 1] != 0x3B:   # the GIF trailer ';'
        raise BadImage("truncated image")


def _bmp_header(data: bytes) -> tuple[int, int, int, int, int]:
    """(pixel offset, width, height, bits per pixel, compression) from a BMP header."""
    offset, hsize = struct.unpack_from("<I I", data, 10)
    if hsize == 12:    # OS/2 BITMAPCOREHEADER
        w, h, _, bpp = struct.unpack_from("<H H H H", data, 18)
        return offset, w, h, bpp, 0
    w, h, _, bpp, comp = struct.unpack_from("<i i H H I", data, 18)
    return offset, w, h, bpp, comp


def _check_bmp(data: bytes) -> None:
    try:
        offset, w, h, bpp, comp = _bmp_header(data)
    except struct.error:
        raise BadImage("truncated image") from None
    if comp in (0, 3):   # uncompressed rows, 4-byte aligned
        stride = (abs(w) * bpp + 31) // 32 * 4
        if len(data) < offset + stride * abs(h):
            raise BadImage("truncated image")


def _check_webp(data: bytes) -> None:
    if len(data) < 12 or len(data) < struct.unpack_from("<I", data, 4)[0] + 8:
        raise BadImage("truncated image")


def _webp_animated(data: bytes) -> bool:
    # Extended format: VP8X chunk, flags byte, animation bit 0x02.
    return data[12:16] == b"VP8X" and len(data) > 20 and bool(data[20] & 0x02)


_STRUCTURE = {"png": _check_png, "gif": _check_gif, "bmp": _check_bmp, "webp": _check_webp}


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
        return _bmp_header(data)[3] // 8           # 8 -> 1, 24 -> 3, 32 -> 4 (even X8R8G8B8)
    return 4 if im.mode == "RGBA" else 3           # webp


def _pil_passthrough_ok(fmt: str, im: Image.Image, data: bytes) -> bool:
    """GIF / BMP / WebP bytes TF decodes correctly as they are (else: PNG)."""
    if fmt == "gif":
        return True
    if fmt == "webp":
        # TF 2.21 corrupts its heap decoding animated WebP (free(): invalid size):
        # such files always get their first frame re-encoded.
        return not _webp_animated(data)
    if fmt == "bmp":
        # TF reads 8-bit BMPs as gray (ignoring the palette) and refuses 1/4/16-bit and RLE.
        _, _, _, bpp, comp = _bmp_header(data)
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
    check = _STRUCTURE.get(plugin.lower())
    if check is not None:
        try:
            check(data)
        except BadImage as bad:
            return str(bad)
    if isinstance(err, (EOFError, struct.error)) or "truncat" in str(err).lower():
        return "truncated image"
    return "corrupt image"


def _refuse_size(width: int, height: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise BadImage("corrupt image")
    if width * height > max_pixels:
        raise BadImage(f"image too large: {width}x{height}")


def _inspect_jpeg(data: bytes, max_pixels: int) -> _Inspected:
    width, height, comps, scan_start = _jpeg_header(data, max_pixels)
    if comps not in (1, 3, 4):
        raise BadImage("corrupt image")
    _check_jpeg(data, scan_start)
    # one component -> gray; YCbCr / CMYK / YCCK all come out of TF as RGB
    return _Inspected(ImageInfo("jpeg", height, width, 1 if comps == 1 else 3, 1), True, "JPEG")


def _inspect_png(data: bytes, max_pixels: int) -> _Inspected:
    width, height, channels, frames, idat = _png_header(data, max_pixels)
    _check_png(data, idat)
    return _Inspected(ImageInfo("png", height, width, channels, frames), True, "PNG")


def _inspect_pil(data: bytes, plugin: str | None, max_pixels: int) -> _Inspected:
    try:
        im = _open(data, plugin)
    except Exception as e:   # Pillow raises many types on bad headers
        raise BadImage(_reason_for_open_error(data, plugin, e)) from None
    fmt = _pil_fmt(im)
    _refuse_size(*im.size, max_pixels)
    if fmt not in TF_FORMATS and fmt not in CONVERTIBLE:
        raise BadImage(f"unsupported format: {fmt or 'unknown'}")
    if fmt in _STRUCTURE:
        _STRUCTURE[fmt](data)
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
    plugin = _sniff(data)
    if plugin == "JPEG":
        return _inspect_jpeg(data, max_pixels)
    if plugin == "PNG":
        return _inspect_png(data, max_pixels)
    return _inspect_pil(data, plugin, max_pixels)


def check_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageInfo:
    """Header + structure check, no pixel decode. Raises BadImage(reason).

    For formats TF cannot read (TIFF, ...) `channels` is that of the PNG that
    `prepare_planes` converts them to.
    """
    return _inspect(data, max_pixels).info


# ------------------------------------------------------------- re-encode

def _to_mode(im: Image.Image, mode: str) -> Image.Image:
    """Convert, scaling high-bit-depth gray to 8 bits the way TF does (>> 8)."""
    if mode == "L" and (im.mode in ("I", "F") or im.mode.startswith("I;")):
        a = np.asarray(im)
        if a.dtype.kind == "f":
            hi = float(a.max()) if a.size else 1.0
            a = a * (255.0 / hi) if hi > 255 else (a * 255.0 if hi <= 1.0 else a)
        else:
            hi = int(a.max()) if a.size else 0
            a = a >> 8 if hi > 255 and hi <= 65535 else (a * (255.0 / hi) if hi > 255 else a)
        return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "L")
    return im if im.mode == mode else im.convert(mode)


def _target_size(width: int, height: int, max_side: int | None,
                 short_side: int | None = None) -> tuple[int, int]:
    """Shrink, keeping aspect, until the longer side is <= max_side and the
    shorter side <= short_side (each limit only when given); never enlarge."""
    scale = 1.0
    if max_side:
        scale = min(scale, max_side / max(width, height))
    if short_side:
        scale = min(scale, short_side / min(width, height))
    if scale >= 1.0:
        return width, height
    return max(1, round(width * scale)), max(1, round(height * scale))


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
                 _target_size(*im.size, max_side, short_side))
    try:
        with _quiet():
            im.load()
            ImageOps.exif_transpose(im, in_place=True)   # no-op (and no copy) without the tag
    except Image.DecompressionBombError:
        raise BadImage(f"image too large: {info.width}x{info.height}") from None
    except Exception as e:
        raise BadImage("truncated image" if "truncat" in str(e).lower() else "corrupt image") from None

    im = _to_mode(im, mode)
    size = _target_size(im.width, im.height, max_side, short_side)
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

    max_side / short_side: shrink (aspect kept, never enlarged) until the
    longer side is at most max_side and the shorter at most short_side.

    Returns the planes to store and the info of the first one (the record's
    format, size and per-plane channel count). Raises BadImage(reason).
    Multi-plane samples (microscopy channels) must have planes of one size.
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
    resize = _target_size(first.width, first.height, max_side, short_side) != (first.width, first.height)
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
