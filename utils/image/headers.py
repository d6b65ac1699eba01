"""Image headers and file structure read with `struct`: no Pillow, no pixel decode.

* `sniff` names the format from the magic bytes.
* `jpeg_header` / `png_header` walk the markers / chunks up to the pixel data
  and give size and channels. JPEG and PNG are the bulk of every dataset, and
  Pillow's JPEG plugin parses every table in Python (~75 us for a photo, more
  than copying the file); the writer's pass-through path needs only this.
  Both refuse an absurd size as soon as they read it, so a header claiming
  60,000 x 60,000 pixels says "too large" in microseconds, before anything is
  allocated.
* The `check_*` functions cost a memory scan at most: a JPEG must have its EOI
  marker after the scan data, a PNG must reach IEND, a GIF must end with its
  trailer, a BMP / WebP must be as long as its header says.

Every refusal is a `BadImage` whose text is the skipped.csv reason.
"""
from __future__ import annotations

import struct
import zlib


class BadImage(Exception):
    """An input that cannot become a record; str() is the skipped.csv reason."""


# Magic bytes of the formats utils.image.prepare handles itself; Image.open is
# then told the format, so no other plugin is tried (faster, and no misidentification).
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


def sniff(data: bytes) -> str | None:
    """The Pillow format name ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP") from the magic bytes, else None."""
    for magic, fmt in _MAGIC:
        if data.startswith(magic):
            return fmt
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def refuse_size(width: int, height: int, max_pixels: int) -> None:
    """Refuse a non-positive size or one above `max_pixels`.

    Raises:
        BadImage: "corrupt image", or "image too large: WxH".
    """
    if width <= 0 or height <= 0:
        raise BadImage("corrupt image")
    if width * height > max_pixels:
        raise BadImage(f"image too large: {width}x{height}")


def end_without_zero_padding(data: bytes) -> int:
    """Index just past the last non-zero byte (downloads and disks pad with zeros)."""
    end = len(data)
    while end > 0:
        start = max(0, end - 65536)
        kept = data[start:end].rstrip(b"\0")
        if kept:
            return start + len(kept)
        end = start
    return 0


# ------------------------------------------------------------------ JPEG

# SOFn markers carry the frame size; C4 (DHT), C8 (JPG) and CC (DAC) do not.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def jpeg_header(data: bytes, max_pixels: int) -> tuple[int, int, int, int]:
    """Walk the JPEG markers up to the scan data.

    The size is refused as soon as the frame header is read, before anything
    else about the file (a crafted 60,000 x 60,000 header says "too large").

    Returns:
        (width, height, components, offset of the scan data).
    Raises:
        BadImage: truncated or corrupt headers, a size over `max_pixels`, a
            12/16-bit JPEG ("unsupported format: 12-bit jpeg").
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
            refuse_size(width, height, max_pixels)
            if precision != 8:   # neither TF nor Pillow's libjpeg decodes 12/16-bit JPEG
                raise BadImage(f"unsupported format: {precision}-bit jpeg")
            sof = (width, height, comps)
        elif marker == 0xDA:
            if sof is None:
                raise BadImage("corrupt image")
            return (*sof, pos + seglen)
        pos += seglen


def check_jpeg(data: bytes, scan_start: int) -> None:
    """Refuse a JPEG without an EOI marker after the start of its scan data.

    Looking from the end keeps this O(padding) for good files; vendor trailers
    after EOI (Samsung) and the second picture of an MPO are fine. An FF D9 pair
    cannot occur inside entropy-coded data (FF is always stuffed), so a
    truncated scan has none.

    Raises:
        BadImage: "truncated image".
    """
    if data.rfind(b"\xff\xd9", scan_start) < 0:
        raise BadImage("truncated image")


# ------------------------------------------------------------------ PNG

_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"
# PNG colour type -> channels from TF's decoder (libpng expands palette+tRNS
# to RGBA but ignores tRNS on gray and RGB images).
_PNG_CHANNELS = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}


def png_header(data: bytes, max_pixels: int) -> tuple[int, int, int, int, int]:
    """Read IHDR and the chunks before the first IDAT.

    The size is refused right after IHDR, before anything else is looked at.

    Returns:
        (width, height, channels TF decodes, frames (APNG), offset of the first IDAT).
    Raises:
        BadImage: truncated or corrupt headers, a size over `max_pixels`.
    """
    if len(data) < 33:
        raise BadImage("truncated image")
    length, ctype = struct.unpack_from(">I4s", data, 8)
    if ctype != b"IHDR" or length != 13:
        raise BadImage("corrupt image")
    width, height, _depth, colour = struct.unpack_from(">IIBB", data, 16)
    if zlib.crc32(data[12:29]) != struct.unpack_from(">I", data, 29)[0] or colour not in _PNG_CHANNELS:
        raise BadImage("corrupt image")
    refuse_size(width, height, max_pixels)
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


def check_png(data: bytes, pos: int = 8) -> None:
    """Refuse a PNG that does not reach IEND.

    Fast path: the file ends with the (constant) IEND chunk, zero padding
    allowed. Otherwise walk the chunks from `pos`: a chunk running past the
    end, or no IEND, is truncation. Pixel-data CRCs are not checked here
    (zlib.crc32 runs at ~2 GB/s, slower than the copy we must keep up with);
    a corrupt IDAT fails TF's decode, which `verify` runs on every record.

    Raises:
        BadImage: "truncated image".
    """
    end = end_without_zero_padding(data)
    if data[end - 12 : end] == _IEND:
        return
    n = len(data)
    while pos + 12 <= n:
        length, ctype = struct.unpack_from(">I4s", data, pos)
        if ctype == b"IEND":
            return
        pos += 12 + length
    raise BadImage("truncated image")


# ------------------------------------------------------------------ GIF, BMP, WebP

def check_gif(data: bytes) -> None:
    """Refuse a GIF that does not end with its trailer ';' (zero padding allowed).

    Raises:
        BadImage: "truncated image".
    """
    end = end_without_zero_padding(data)
    if end == 0 or data[end - 1] != 0x3B:
        raise BadImage("truncated image")


def bmp_header(data: bytes) -> tuple[int, int, int, int, int]:
    """(pixel offset, width, height, bits per pixel, compression) from a BMP header.

    Raises:
        struct.error: the header is cut short.
    """
    offset, hsize = struct.unpack_from("<I I", data, 10)
    if hsize == 12:    # OS/2 BITMAPCOREHEADER
        w, h, _, bpp = struct.unpack_from("<H H H H", data, 18)
        return offset, w, h, bpp, 0
    w, h, _, bpp, comp = struct.unpack_from("<i i H H I", data, 18)
    return offset, w, h, bpp, comp


def check_bmp(data: bytes) -> None:
    """Refuse a BMP shorter than its header (uncompressed rows) says.

    Raises:
        BadImage: "truncated image".
    """
    try:
        offset, w, h, bpp, comp = bmp_header(data)
    except struct.error:
        raise BadImage("truncated image") from None
    if comp in (0, 3):   # uncompressed rows, 4-byte aligned
        stride = (abs(w) * bpp + 31) // 32 * 4
        if len(data) < offset + stride * abs(h):
            raise BadImage("truncated image")


def check_webp(data: bytes) -> None:
    """Refuse a WebP shorter than its RIFF header says.

    Raises:
        BadImage: "truncated image".
    """
    if len(data) < 12 or len(data) < struct.unpack_from("<I", data, 4)[0] + 8:
        raise BadImage("truncated image")


def webp_animated(data: bytes) -> bool:
    """True for an animated WebP (extended format: VP8X chunk, flags byte, animation bit 0x02)."""
    return data[12:16] == b"VP8X" and len(data) > 20 and bool(data[20] & 0x02)


# lowercase format -> its structure check, for the formats Pillow opens
STRUCTURE_CHECKS = {"png": check_png, "gif": check_gif, "bmp": check_bmp, "webp": check_webp}
