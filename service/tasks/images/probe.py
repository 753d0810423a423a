"""The header probe at submit: refuse non-images, other formats and too many pixels, and
requests that cannot fit the image, without decoding a pixel (cheap enough for the HTTP
side). The job opens images through the same :func:`open_image`."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Final

from PIL import Image, ImageFile, UnidentifiedImageError

from service.tasks.images import libtiff
from service.tasks.images.errors import NotAnImage, TooManyPixels
from service.tasks.images.request import ImageRequest, check_geometry, default_format

__all__ = [
    "ALLOWED_FORMATS",
    "SWAPPING_ORIENTATIONS",
    "ImageInfo",
    "check_request",
    "exif_orientation",
    "format_name",
    "open_image",
    "probe",
]

ALLOWED_FORMATS: Final[tuple[str, ...]] = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
"""Pillow format names that are parsed at all; every other decoder is never tried."""

SWAPPING_ORIENTATIONS: Final = frozenset({5, 6, 7, 8})
"""EXIF orientations whose display is the stored image turned by 90 degrees."""

_ACCEPTED_MODES: Final = frozenset(
    {
        "1",
        "L",
        "LA",
        "La",
        "P",
        "PA",
        "RGB",
        "RGBA",
        "RGBa",
        "RGBX",
        "CMYK",
        "YCbCr",
        "I",
        "I;16",
        "I;16B",
        "I;16L",
        "I;16N",
        "F",
    }
)
"""Pixel modes of decoded images that the job converts to an 8-bit working mode."""

# Every process that opens images with Pillow (gunicorn workers, cpu processes) logs
# libtiff's messages instead of letting libtiff print them to stderr.
libtiff.route_to_log()


@dataclass(frozen=True)
class ImageInfo:
    """What the header of an image says, read without decoding pixels.

    ``format`` is lower case (``jpeg``, ``png``, ``webp``, ``gif``, ``bmp``, ``tiff``);
    ``width``/``height`` are what the decoder will produce; ``orientation`` is the EXIF
    orientation still to apply to that (1..8; 1 when absent, when unreadable before
    decoding, e.g. a PNG whose eXIf chunk follows the pixel data, and for TIFF, which
    Pillow orients while decoding). ``oriented_size`` is the size as displayed.
    """

    format: str
    width: int
    height: int
    mode: str
    orientation: int = 1

    @property
    def oriented_size(self) -> tuple[int, int]:
        """Size as displayed, after the EXIF orientation is applied."""
        if self.orientation in SWAPPING_ORIENTATIONS:
            return self.height, self.width
        return self.width, self.height


def probe(data: bytes, *, max_pixels: int) -> ImageInfo:
    """Read the image header only; refuse non-images, other formats and too many pixels.

    No pixel data is decoded or allocated. Raises NotAnImage or TooManyPixels.
    """
    with open_image(data, max_pixels=max_pixels) as im:
        return ImageInfo(
            format=format_name(im),
            width=im.width,
            height=im.height,
            mode=im.mode,
            orientation=exif_orientation(im),
        )


def check_request(request: ImageRequest, info: ImageInfo, *, max_pixels: int) -> None:
    """Refuse (BadParams) a request that cannot fit this image: crop box, output size, format.

    So such mistakes are a 422 at submit rather than a failed job; the job runs the same
    check on the decoded image.
    """
    out_format = request.format or default_format(info.format)
    check_geometry(request, *info.oriented_size, out_format, max_pixels=max_pixels)


def open_image(data: bytes, *, max_pixels: int) -> ImageFile.ImageFile:
    """Open lazily (header only) with the format allow-list and the pixel limit applied."""
    if not data:
        raise NotAnImage("the request body is empty, expected an image")
    _check_webp_canvas(data, max_pixels=max_pixels)
    try:
        im = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except Image.DecompressionBombError as ex:
        raise TooManyPixels(f"image has too many pixels: {ex}") from None
    except UnidentifiedImageError:
        raise NotAnImage(
            "the body is not an image in a supported format"
            f" ({', '.join(f.lower() for f in ALLOWED_FORMATS)})"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as ex:
        raise NotAnImage(f"unreadable image header: {ex}") from None
    try:
        width, height = im.size
        if width < 1 or height < 1:
            raise NotAnImage(f"image declares an empty size {width}x{height}")
        if width * height > max_pixels:
            raise TooManyPixels(
                f"image is {width}x{height} = {width * height} pixels,"
                f" above the limit of {max_pixels}"
            )
        if im.mode not in _ACCEPTED_MODES:
            raise NotAnImage(f"unsupported pixel mode {im.mode!r}")
    except BaseException:
        im.close()
        raise
    return im


def _check_webp_canvas(data: bytes, *, max_pixels: int) -> None:
    """Refuse a too-large WebP canvas before libwebp allocates it (it does so on open)."""
    if data[:4] != b"RIFF" or data[8:12] != b"WEBP" or len(data) < 30:
        return
    chunk = data[12:16]
    size: tuple[int, int] | None = None
    if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":
        size = (
            int.from_bytes(data[26:28], "little") & 0x3FFF,
            int.from_bytes(data[28:30], "little") & 0x3FFF,
        )
    elif chunk == b"VP8L" and data[20] == 0x2F:
        bits = int.from_bytes(data[21:25], "little")
        size = (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    elif chunk == b"VP8X":
        size = (
            int.from_bytes(data[24:27], "little") + 1,
            int.from_bytes(data[27:30], "little") + 1,
        )
    if size is not None and size[0] * size[1] > max_pixels:
        raise TooManyPixels(
            f"image is {size[0]}x{size[1]} = {size[0] * size[1]} pixels,"
            f" above the limit of {max_pixels}"
        )


def format_name(im: Image.Image) -> str:
    """Lower-case format name; MPO (a multi-picture JPEG) counts as jpeg."""
    name = (im.format or "").lower()
    return "jpeg" if name == "mpo" else name


def exif_orientation(im: Image.Image) -> int:
    """EXIF orientation 1..8 still to apply, read without decoding; 1 if absent or unreadable.

    Pillow's TIFF plugin already reports the oriented size and transposes while decoding,
    so a TIFF has nothing left to apply. Calls the base ``Image.getexif`` on purpose: the
    PNG plugin's override decodes the whole image to look for an eXIf chunk after the
    pixel data.
    """
    if im.format == "TIFF":
        return 1
    try:
        value = Image.Image.getexif(im).get(0x0112, 1)  # 0x0112: Orientation
    except Exception:  # malformed EXIF: the job decides after decoding
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1
