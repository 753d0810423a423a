"""Real test images made with Pillow: photo-like pictures, EXIF orientation, broken files, bombs.

Everything is reproducible: the same arguments give the same bytes (for one Pillow build).
"""

from __future__ import annotations

import io
import random
import struct
import zlib

from PIL import Image, ImageDraw

ORIENTATION_TAG = 0x0112

_SAVE_NAMES = {
    "jpeg": "JPEG",
    "jpg": "JPEG",
    "png": "PNG",
    "webp": "WEBP",
    "gif": "GIF",
    "bmp": "BMP",
    "tiff": "TIFF",
    "ppm": "PPM",
    "pcx": "PCX",
    "ico": "ICO",
    "tga": "TGA",
}


def encode(im: Image.Image, fmt: str, **options: object) -> bytes:
    """Save ``im`` as ``fmt`` (jpeg, png, webp, gif, bmp, tiff, ppm, pcx, ico, tga) to bytes."""
    buffer = io.BytesIO()
    im.save(buffer, format=_SAVE_NAMES[fmt.lower()], **options)
    return buffer.getvalue()


def photo_image(width: int, height: int, *, seed: int = 0, mode: str = "RGB") -> Image.Image:
    """A photo-like picture: soft colour regions, a few hard-edged shapes and sensor noise.

    ``mode`` may be RGB, RGBA (alpha ramps left to right), L, LA, P (adaptive palette),
    CMYK or I;16 (16-bit grayscale).
    """
    rng = random.Random(seed)
    cells = (8, 6)
    coarse = Image.frombytes("RGB", cells, rng.randbytes(cells[0] * cells[1] * 3))
    base = coarse.resize((width, height), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(base)
    for _ in range(6):
        x0, y0 = rng.randrange(width), rng.randrange(height)
        x1, y1 = x0 + rng.randrange(1, width // 2 + 2), y0 + rng.randrange(1, height // 2 + 2)
        colour = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
        if rng.random() < 0.5:
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        else:
            draw.rectangle((x0, y0, x1, y1), fill=colour)
    noise = Image.frombytes("RGB", (width, height), rng.randbytes(width * height * 3))
    rgb = Image.blend(base, noise, 0.08)
    if mode == "RGB":
        return rgb
    if mode in ("RGBA", "LA"):
        alpha = Image.linear_gradient("L").rotate(90).resize((width, height))
        out = rgb.convert(mode[:-1])
        out.putalpha(alpha)
        return out
    if mode == "P":
        return rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    if mode == "I;16":
        wide = rgb.convert("L").convert("I").point(lambda v: v * 257)
        return wide.convert("I;16")
    return rgb.convert(mode)


def photo_like(
    width: int, height: int, fmt: str = "jpeg", *, seed: int = 0, mode: str = "RGB"
) -> bytes:
    """:func:`photo_image` encoded as ``fmt`` (JPEG at quality 90, so compression is realistic)."""
    im = photo_image(width, height, seed=seed, mode=mode)
    options: dict[str, object] = {"quality": 90} if fmt.lower() in ("jpeg", "jpg", "webp") else {}
    return encode(im, fmt, **options)


def halves_image(width: int, height: int, *, left: str = "red", right: str = "blue") -> Image.Image:
    """An RGB image whose left half is ``left`` and right half ``right``: orientation is visible."""
    im = Image.new("RGB", (width, height), left)
    im.paste(right, (width // 2, 0, width, height))
    return im


def with_exif_orientation(
    orientation: int, *, width: int = 40, height: int = 20, fmt: str = "jpeg"
) -> bytes:
    """A :func:`halves_image` (red left, blue right as stored) tagged with EXIF ``orientation``.

    With orientation 6 a viewer turns it 90 degrees clockwise: red on top, blue below.
    """
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = orientation
    return encode(halves_image(width, height), fmt, exif=exif)


def truncated(data: bytes, *, keep: float = 0.6) -> bytes:
    """The first ``keep`` fraction of an encoded image: header intact, pixel data cut."""
    return data[: int(len(data) * keep)]


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def bomb(width: int = 20_000, height: int = 20_000) -> bytes:
    """A valid, tiny PNG of one colour that declares ``width`` x ``height`` pixels.

    1-bit grayscale, every row zero, so the compressed data is about 1/1000 of a bit per
    pixel: the default 400 M pixels (400 MB once decoded by Pillow) fit in about 50 KB.
    """
    row = bytes(1 + (width + 7) // 8)  # filter byte 0, then all-black pixels
    compressor = zlib.compressobj(9)
    rows_per_block = max(1, (1 << 20) // len(row))
    parts = []
    remaining = height
    while remaining:
        count = min(rows_per_block, remaining)
        parts.append(compressor.compress(row * count))
        remaining -= count
    parts.append(compressor.flush())
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit gray
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", b"".join(parts))
        + _png_chunk(b"IEND", b"")
    )


def not_an_image() -> bytes:
    """Bytes no image decoder accepts (the start of a PDF document)."""
    return b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n" * 4


def other_format(fmt: str = "ppm", *, width: int = 32, height: int = 24) -> bytes:
    """A real image in a format outside the service's allow-list (ppm, pcx, ico, tga)."""
    return encode(photo_image(width, height), fmt)


def tiff_with_odd_tags(*, invalid_types: int = 3, width: int = 16, height: int = 8) -> bytes:
    """A deflate-compressed RGB TIFF (so libtiff decodes it, not Pillow) that decodes fine
    but carries tags its readers complain about:

    - ``invalid_types`` private tags (60000, 60001, ...) of field type 0, which no TIFF
      version defines: libtiff reports each as an error (``TIFFFetchNormalTag: Defined
      set_get_field_type of custom tag 60000 ...``) and ignores it;
    - one private tag whose values would lie past the end of the file: Pillow's own
      header parser warns (``Tag data larger than file``) and skips it, already at open.
    """
    if not 0 <= invalid_types <= 5500:  # 60000.. up to the past-the-end tag
        raise ValueError(f"invalid_types must be 0..5500, got {invalid_types}")
    pixels = bytes((x * 255 // max(1, width - 1)) for _ in range(height) for x in range(width))
    strip = zlib.compress(bytes(v for v in pixels for _ in range(3)))  # gray ramp as RGB
    short, long_ = 3, 4
    # (tag, type, count, value); None: an offset filled in below.
    entries: list[tuple[int, int, int, int | None]] = [
        (256, short, 1, width),  # ImageWidth
        (257, short, 1, height),  # ImageLength
        (258, short, 3, None),  # BitsPerSample: 8, 8, 8 (stored after the directory)
        (259, short, 1, 8),  # Compression: Adobe deflate
        (262, short, 1, 2),  # PhotometricInterpretation: RGB
        (273, long_, 1, None),  # StripOffsets
        (277, short, 1, 3),  # SamplesPerPixel
        (278, short, 1, height),  # RowsPerStrip
        (279, long_, 1, len(strip)),  # StripByteCounts
        *((60000 + i, 0, 1, 1) for i in range(invalid_types)),
        (65500, short, 1000, 1 << 24),  # 2000 bytes at 16 MiB: past the end of the file
    ]
    directory_end = 8 + 2 + 12 * len(entries) + 4
    bits_at, strip_at = directory_end, directory_end + 6
    out = bytearray(b"II*\x00" + struct.pack("<IH", 8, len(entries)))
    for tag, kind, count, value in entries:
        if value is None:
            value = bits_at if tag == 258 else strip_at
        packed = (
            struct.pack("<HH", value, 0)
            if kind == short and count == 1
            else struct.pack("<I", value)
        )
        out += struct.pack("<HHI", tag, kind, count) + packed
    out += struct.pack("<I", 0)  # no next directory
    return bytes(out + struct.pack("<3H", 8, 8, 8) + strip)
