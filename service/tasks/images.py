"""Image jobs: validate a request, probe an upload cheaply, process it on the cpu pool.

Three steps, split by where they run:

1. ``parse_request(params, max_side=...)`` turns the query string of
   ``POST /v1/images?op=...`` into an :class:`ImageRequest` (HTTP side, no image needed).
2. ``probe(data, max_pixels=...)`` reads only the header of the uploaded body: it refuses
   non-images, formats outside :data:`ALLOWED_FORMATS` and images with too many pixels
   without decoding a single pixel (HTTP side, at submit time). ``check_request(request,
   info, max_pixels=...)`` then refuses requests that cannot fit that image (a crop box
   outside it, an output too large), so such mistakes are a 422 at submit time rather
   than a failed job.
3. ``process_image(data, request.to_dict(), max_pixels=...)`` is the job function run on
   the process pool: module-level, plain picklable arguments and result, importable in a
   fresh process. It re-checks everything (it may run after a restart from stored
   arguments), decodes, applies the EXIF orientation, runs the operation and encodes.

Errors all derive from :class:`ImageError` (a ``ServiceError`` and a ``ValueError``) and
also from the ``service.errors`` class whose status they take, so the one error handler
maps them: :class:`NotAnImage` -> 415 (``UnsupportedMediaType``), :class:`BadParams` and
:class:`TooManyPixels` -> 422 (``Invalid``); :class:`ImageDecodeError` happens in the job,
which fails with ``str(ex)`` as its reason. Every message is safe to show to the client.

Operations (``op=``), coordinates refer to the image as displayed, i.e. after the EXIF
orientation has been applied:

- ``thumbnail`` (``width``, ``height``): fit inside width x height keeping the aspect
  ratio; never enlarges. JPEG input is decoded at a reduced scale when that is enough.
- ``resize`` (``width``, ``height``): exactly width x height, full LANCZOS resampling
  (no reduced-scale decode, no ``reducing_gap`` shortcut). This is also the CPU benchmark
  operation, see :func:`bench_op`.
- ``crop`` (``left``, ``top``, ``width``, ``height``): the box must lie inside the image.
- ``rotate`` (``degrees``, -360..360): counter-clockwise (Pillow's convention), canvas
  expanded to hold the whole image. Multiples of 90 are exact transposes; other angles
  use bicubic resampling and fill the new corners with transparency when the output
  format has alpha (png, webp), white for jpeg.
- ``grayscale``: 8-bit luminance (alpha kept where the output format has it).

Common parameters: ``format`` (``jpeg`` (alias ``jpg``), ``png``, ``webp``; default: the
input's format when it is one of those, else png) and ``quality`` (1..100, jpeg and webp
only; defaults :data:`DEFAULT_QUALITY`).

Output is always 8 bits per channel in L, LA, RGB or RGBA; only the first frame of an
animated or multi-page input is used; EXIF, XMP and other metadata are dropped (an ICC
profile is kept when the colour space it describes is unchanged).
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from enum import StrEnum
from typing import Any, Final

from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from service.errors import Invalid, ServiceError, UnsupportedMediaType
from service.jobs.registry import job

__all__ = [
    "ALLOWED_FORMATS",
    "BENCH_MAX_PIXELS",
    "BENCH_WIDTH",
    "CONTENT_TYPES",
    "DEFAULT_QUALITY",
    "BadParams",
    "ImageDecodeError",
    "ImageError",
    "ImageInfo",
    "ImageRequest",
    "NotAnImage",
    "Op",
    "OutputFormat",
    "TooManyPixels",
    "bench_op",
    "check_request",
    "default_format",
    "parse_request",
    "probe",
    "process_image",
]


# --------------------------------------------------------------------------- errors


class ImageError(ServiceError, ValueError):
    """The image, or what was asked of it, cannot be processed; ``str(ex)`` is client-safe."""

    title = "Image cannot be processed"


class NotAnImage(ImageError, UnsupportedMediaType):
    """The body is not an image in an allowed format, or its header is unreadable (-> 415)."""

    title = "Not a supported image"


class BadParams(ImageError, Invalid):
    """A query parameter is missing, malformed, out of range or does not fit the image (-> 422).

    ``param`` names the offending parameter when there is one; it is also an extension
    member (``"param"``) of the problem document.
    """

    title = "Invalid image parameters"

    def __init__(self, detail: str, *, param: str | None = None) -> None:
        if param is None:
            super().__init__(detail)
        else:
            super().__init__(detail, param=param)
        self.param = param


class TooManyPixels(ImageError, Invalid):
    """The image declares more pixels than allowed: a possible decompression bomb (-> 422).

    422, not 413: the body itself may be tiny (that is the point of a bomb); what cannot
    be processed is its content, while 413 is about the size of the request body, which
    the body-limit middleware already enforces.
    """

    title = "Image has too many pixels"


class ImageDecodeError(ImageError):
    """The header was fine but the pixel data is truncated or corrupt (found in the job).

    Raised on the process pool: the job fails with ``str(ex)`` as its reason.
    """

    title = "Image cannot be decoded"


# --------------------------------------------------------------------------- constants


class Op(StrEnum):
    """The operations ``POST /v1/images?op=`` accepts."""

    THUMBNAIL = "thumbnail"
    RESIZE = "resize"
    CROP = "crop"
    ROTATE = "rotate"
    GRAYSCALE = "grayscale"


class OutputFormat(StrEnum):
    """The formats a result can be encoded in."""

    JPEG = "jpeg"
    PNG = "png"
    WEBP = "webp"


ALLOWED_FORMATS: Final[tuple[str, ...]] = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
"""Pillow format names that are parsed at all; every other decoder is never tried."""

CONTENT_TYPES: Final[Mapping[OutputFormat, str]] = {
    OutputFormat.JPEG: "image/jpeg",
    OutputFormat.PNG: "image/png",
    OutputFormat.WEBP: "image/webp",
}

DEFAULT_QUALITY: Final[Mapping[OutputFormat, int]] = {
    OutputFormat.JPEG: 85,
    OutputFormat.WEBP: 80,
}
"""Encoder quality (1..100) used when the request gives none."""

BENCH_WIDTH: Final = 1600
"""Width in pixels :func:`bench_op` resizes to (height keeps the aspect ratio)."""

BENCH_MAX_PIXELS: Final = 50_000_000
"""Pixel limit :func:`bench_op` applies to its input, in pixels (width * height)."""

MAX_COORDINATE: Final = 2**31 - 1
"""Largest ``left``/``top`` accepted (the largest side a PNG can declare), in pixels."""

MAX_DEGREES: Final = 360
"""``degrees`` must lie in -MAX_DEGREES..MAX_DEGREES."""

_MAX_SIDE_OF_FORMAT: Final[Mapping[OutputFormat, int]] = {
    OutputFormat.JPEG: 65_535,
    OutputFormat.PNG: 2**31 - 1,
    OutputFormat.WEBP: 16_383,
}
"""Largest side each encoder can write, in pixels."""

_FORMAT_ALIASES: Final[Mapping[str, OutputFormat]] = {
    "jpeg": OutputFormat.JPEG,
    "jpg": OutputFormat.JPEG,
    "png": OutputFormat.PNG,
    "webp": OutputFormat.WEBP,
}

_OP_PARAMS: Final[Mapping[Op, tuple[str, ...]]] = {
    Op.THUMBNAIL: ("width", "height"),
    Op.RESIZE: ("width", "height"),
    Op.CROP: ("left", "top", "width", "height"),
    Op.ROTATE: ("degrees",),
    Op.GRAYSCALE: (),
}
"""Parameters each operation requires (and the only op-specific ones it accepts)."""

_COMMON_PARAMS: Final = ("op", "format", "quality")
_INT_PARAMS: Final = ("width", "height", "left", "top", "degrees", "quality")
_MAX_INT_DIGITS: Final = 10

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
"""Pixel modes of decoded images that are converted to an 8-bit working mode."""

_GRAY_FAMILY: Final = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
_RGB_FAMILY: Final = frozenset({"P", "PA", "RGB", "RGBA", "RGBa", "RGBX"})

_SIXTEEN_TO_EIGHT_BITS: Final = [value // 257 for value in range(65_536)]

_TRANSPOSE_FOR_ROTATION: Final[Mapping[int, Image.Transpose]] = {
    90: Image.Transpose.ROTATE_90,
    180: Image.Transpose.ROTATE_180,
    270: Image.Transpose.ROTATE_270,
}

_SWAPPING_ORIENTATIONS: Final = frozenset({5, 6, 7, 8})
"""EXIF orientations whose display is the stored image turned by 90 degrees."""


# --------------------------------------------------------------------------- request


@dataclass(frozen=True)
class ImageRequest:
    """One validated image operation; ``None`` means "not given" (or "same as input")."""

    op: Op
    width: int | None = None
    height: int | None = None
    left: int | None = None
    top: int | None = None
    degrees: int | None = None
    format: OutputFormat | None = None
    quality: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain data for pickling and storing: str and int values, unset fields left out."""
        out: dict[str, Any] = {}
        for field in fields(self):
            value = getattr(self, field.name)
            if value is None:
                continue
            out[field.name] = str(value) if isinstance(value, StrEnum) else value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> ImageRequest:
        """Rebuild and re-validate a request stored by :meth:`to_dict`; raise BadParams."""
        if not isinstance(data, Mapping):
            raise BadParams("image request must be a mapping")
        values: dict[str, object] = {}
        for name, value in data.items():
            if name in _INT_PARAMS and value is not None:
                if isinstance(value, bool) or not isinstance(value, int):
                    raise BadParams(f"parameter {name!r} must be an integer", param=name)
            elif name in ("op", "format") and value is not None and not isinstance(value, str):
                raise BadParams(f"parameter {name!r} must be a string", param=name)
            values[name] = value
        return _build(values, max_side=None)


def parse_request(params: Mapping[str, str], *, max_side: int) -> ImageRequest:
    """Validate the query parameters of ``POST /v1/images``; raise BadParams naming the culprit.

    ``max_side`` (pixels, >= 1) bounds every requested output dimension (``width`` and
    ``height`` of thumbnail, resize and crop). Parameters the op does not use are refused
    rather than ignored, so a typo cannot silently change the result.
    """
    if max_side < 1:
        msg = f"max_side must be >= 1, got {max_side}"
        raise ValueError(msg)
    values: dict[str, object] = {}
    for name, raw in params.items():
        value: object = raw
        if not isinstance(value, str):
            raise BadParams(f"parameter {name!r} must be given once", param=name)
        values[name] = _parse_int(name, value) if name in _INT_PARAMS else value
    return _build(values, max_side=max_side)


def _parse_int(name: str, raw: str) -> int:
    """Parse a decimal integer strictly: ASCII digits, optional sign, no spaces."""
    digits = raw[1:] if raw[:1] in ("+", "-") else raw
    if not digits or len(digits) > _MAX_INT_DIGITS or not (digits.isascii() and digits.isdigit()):
        raise BadParams(f"parameter {name!r} must be an integer, got {raw[:40]!r}", param=name)
    return int(raw)


def _build(values: Mapping[str, object], *, max_side: int | None) -> ImageRequest:
    """Check names, presence and ranges of typed values; the one validation path."""
    op_value = values.get("op")
    choices = ", ".join(op.value for op in Op)
    if op_value is None or op_value == "":
        raise BadParams(f"missing parameter 'op' (one of: {choices})", param="op")
    try:
        op = Op(str(op_value))
    except ValueError:
        raise BadParams(
            f"parameter 'op' must be one of: {choices}; got {str(op_value)[:40]!r}", param="op"
        ) from None

    needed = _OP_PARAMS[op]
    allowed = (*_COMMON_PARAMS, *needed)
    for name in values:
        if name not in allowed:
            raise BadParams(
                f"parameter {name[:40]!r} does not apply to op {op.value!r}"
                f" (accepted: {', '.join(allowed)})",
                param=name,
            )
    for name in needed:
        if values.get(name) is None:
            raise BadParams(f"op {op.value!r} needs parameter {name!r}", param=name)

    side_limit = max_side if max_side is not None else MAX_COORDINATE
    ints: dict[str, int | None] = {}
    for name, low, high in (
        ("width", 1, side_limit),
        ("height", 1, side_limit),
        ("left", 0, MAX_COORDINATE),
        ("top", 0, MAX_COORDINATE),
        ("degrees", -MAX_DEGREES, MAX_DEGREES),
        ("quality", 1, 100),
    ):
        value = values.get(name)
        if value is None:
            ints[name] = None
            continue
        assert isinstance(value, int)
        if not low <= value <= high:
            raise BadParams(
                f"parameter {name!r} must be between {low} and {high}, got {value}", param=name
            )
        ints[name] = value

    out_format: OutputFormat | None = None
    format_value = values.get("format")
    if format_value is not None:
        out_format = _FORMAT_ALIASES.get(str(format_value).lower())
        if out_format is None:
            raise BadParams(
                "parameter 'format' must be one of: jpeg, png, webp;"
                f" got {str(format_value)[:40]!r}",
                param="format",
            )
    if ints["quality"] is not None and out_format is OutputFormat.PNG:
        raise BadParams("parameter 'quality' applies only to jpeg and webp", param="quality")

    return ImageRequest(
        op=op,
        width=ints["width"],
        height=ints["height"],
        left=ints["left"],
        top=ints["top"],
        degrees=ints["degrees"],
        format=out_format,
        quality=ints["quality"],
    )


def default_format(input_format: str) -> OutputFormat:
    """The output format when the request names none: the input's if encodable, else png."""
    return _FORMAT_ALIASES.get(input_format.lower(), OutputFormat.PNG)


# --------------------------------------------------------------------------- probe


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
        if self.orientation in _SWAPPING_ORIENTATIONS:
            return self.height, self.width
        return self.width, self.height


def probe(data: bytes, *, max_pixels: int) -> ImageInfo:
    """Read the image header only; refuse non-images, other formats and too many pixels.

    Cheap enough for the HTTP side: no pixel data is decoded or allocated. Raises
    NotAnImage or TooManyPixels.
    """
    with _open(data, max_pixels=max_pixels) as im:
        return ImageInfo(
            format=_format_name(im),
            width=im.width,
            height=im.height,
            mode=im.mode,
            orientation=_orientation(im),
        )


def check_request(request: ImageRequest, info: ImageInfo, *, max_pixels: int) -> None:
    """Refuse (BadParams) a request that cannot fit this image: crop box, output size, format.

    Run at submit time with the :func:`probe` result; :func:`process_image` runs the same
    check on the decoded image.
    """
    out_format = request.format or default_format(info.format)
    _check_geometry(request, *info.oriented_size, out_format, max_pixels=max_pixels)


def _open(data: bytes, *, max_pixels: int) -> ImageFile.ImageFile:
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


def _format_name(im: Image.Image) -> str:
    """Lower-case format name; MPO (a multi-picture JPEG) counts as jpeg."""
    name = (im.format or "").lower()
    return "jpeg" if name == "mpo" else name


def _orientation(im: Image.Image) -> int:
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


# --------------------------------------------------------------------------- job


def process_image(data: bytes, request: dict[str, Any], *, max_pixels: int) -> dict[str, Any]:
    """Run one image request (``ImageRequest.to_dict()``) on the image bytes; the cpu job.

    Returns ``{"content_type", "data", "width", "height", "format"}`` with plain values.
    Raises NotAnImage, TooManyPixels, BadParams (request invalid or does not fit the
    image) or ImageDecodeError (truncated or corrupt pixel data).
    """
    req = ImageRequest.from_dict(request)
    with _open(data, max_pixels=max_pixels) as im:
        out_format = req.format or default_format(_format_name(im))
        icc_profile = im.info.get("icc_profile")
        source_family = _colour_family(im.mode)
        _decode(im, req)
        work = _working_mode(im)
        _check_geometry(req, work.width, work.height, out_format, max_pixels=max_pixels)
        result = _apply(req, work, out_format)
        result = _output_mode(result, out_format)
        keep_icc = isinstance(icc_profile, bytes) and (_colour_family(result.mode) == source_family)
        encoded = _encode(
            result, out_format, quality=req.quality, icc_profile=icc_profile if keep_icc else None
        )
        return {
            "content_type": CONTENT_TYPES[out_format],
            "data": encoded,
            "width": result.width,
            "height": result.height,
            "format": out_format.value,
        }


def bench_op(data: bytes, *, max_pixels: int = BENCH_MAX_PIXELS) -> dict[str, Any]:
    """The CPU benchmark: full decode, LANCZOS resize to BENCH_WIDTH wide, JPEG encode.

    The same work as ``op=resize&width=1600&height=<aspect>&format=jpeg``; returns what
    :func:`process_image` returns. Measured here (one core, 2-4 megapixel photo-like
    JPEGs): 60-100 ms of CPU. An input already BENCH_WIDTH wide skips the resample (Pillow
    returns a copy), so benchmark inputs should have another width.
    """
    width, height = probe(data, max_pixels=max_pixels).oriented_size
    request = ImageRequest(
        op=Op.RESIZE,
        width=BENCH_WIDTH,
        height=max(1, round(height * BENCH_WIDTH / width)),
        format=OutputFormat.JPEG,
    )
    return process_image(data, request.to_dict(), max_pixels=max_pixels)


def _decode(im: ImageFile.ImageFile, req: ImageRequest) -> None:
    """Decode the first frame and apply the EXIF orientation; ImageDecodeError on bad data."""
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        msg = (
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is enabled in this process;"
            " truncated images would be accepted silently"
        )
        raise RuntimeError(msg)
    fmt = _format_name(im)
    try:
        if req.op is Op.THUMBNAIL and fmt == "jpeg":
            # Let libjpeg decode at 1/2, 1/4 or 1/8 scale when the result stays at
            # least twice the box (the same margin Image.thumbnail's reducing_gap keeps).
            assert req.width is not None
            assert req.height is not None
            box = (req.width, req.height)
            if _orientation(im) in _SWAPPING_ORIENTATIONS:
                box = (req.height, req.width)
            im.draft(None, (box[0] * 2, box[1] * 2))
        im.load()
        ImageOps.exif_transpose(im, in_place=True)
    except Image.DecompressionBombError as ex:
        raise TooManyPixels(f"image has too many pixels: {ex}") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, KeyError) as ex:
        raise ImageDecodeError(f"cannot decode the {fmt} image: {ex}") from None


def _colour_family(mode: str) -> str | None:
    if mode in _GRAY_FAMILY:
        return "gray"
    if mode in _RGB_FAMILY:
        return "rgb"
    return None


def _working_mode(im: Image.Image) -> Image.Image:
    """Convert the decoded image to L, LA, RGB or RGBA (8 bits, alpha only if present)."""
    mode = im.mode
    try:
        if mode in ("L", "RGB"):
            if "transparency" in im.info:
                return im.convert("LA" if mode == "L" else "RGBA")
            return im
        if mode in ("LA", "RGBA"):
            return im
        if mode in ("P", "PA"):
            return im.convert("RGBA" if im.has_transparency_data else "RGB")
        if mode == "La":
            return im.convert("LA")
        if mode == "RGBa":
            return im.convert("RGBA")
        if mode in ("1", "F"):
            return im.convert("L")
        if mode.startswith("I"):
            return im.convert("I").point(_SIXTEEN_TO_EIGHT_BITS, "L")
        return im.convert("RGB")  # CMYK, YCbCr, RGBX
    except ValueError as ex:
        raise ImageDecodeError(f"cannot convert pixel mode {mode!r}: {ex}") from None


def _output_size(req: ImageRequest, width: int, height: int) -> tuple[int, int]:
    """Size the op produces from a width x height image (rotation: an upper bound)."""
    if req.op is Op.THUMBNAIL:
        assert req.width is not None
        assert req.height is not None
        scale = min(req.width / width, req.height / height, 1.0)
        return max(1, round(width * scale)), max(1, round(height * scale))
    if req.op in (Op.RESIZE, Op.CROP):
        assert req.width is not None
        assert req.height is not None
        return req.width, req.height
    if req.op is Op.ROTATE:
        assert req.degrees is not None
        turn = req.degrees % 360
        if turn in (90, 270):
            return height, width
        if turn in (0, 180):
            return width, height
        cos, sin = abs(math.cos(math.radians(turn))), abs(math.sin(math.radians(turn)))
        return math.ceil(width * cos + height * sin) + 1, math.ceil(width * sin + height * cos) + 1
    return width, height


def _check_geometry(
    req: ImageRequest, width: int, height: int, out_format: OutputFormat, *, max_pixels: int
) -> None:
    """BadParams unless the op fits a width x height image and the output is encodable."""
    if req.op is Op.CROP:
        assert req.left is not None
        assert req.top is not None
        assert req.width is not None
        assert req.height is not None
        if req.left + req.width > width or req.top + req.height > height:
            raise BadParams(
                f"crop box left={req.left} top={req.top} width={req.width}"
                f" height={req.height} does not lie inside the {width}x{height} image",
                param="left" if req.left + req.width > width else "top",
            )
    out_width, out_height = _output_size(req, width, height)
    if out_width * out_height > max_pixels:
        raise BadParams(
            f"op {req.op.value!r} would produce about {out_width}x{out_height} pixels,"
            f" above the limit of {max_pixels}",
            param="degrees" if req.op is Op.ROTATE else "width",
        )
    side = _MAX_SIDE_OF_FORMAT[out_format]
    if out_width > side or out_height > side:
        raise BadParams(
            f"{out_format.value} output is limited to {side} pixels per side,"
            f" op {req.op.value!r} would produce {out_width}x{out_height}",
            param="format",
        )


def _apply(req: ImageRequest, im: Image.Image, out_format: OutputFormat) -> Image.Image:
    """Run the operation on an L/LA/RGB/RGBA image."""
    if req.op is Op.THUMBNAIL:
        assert req.width is not None
        assert req.height is not None
        im.thumbnail((req.width, req.height), Image.Resampling.LANCZOS)  # in place
        return im
    if req.op is Op.RESIZE:
        assert req.width is not None
        assert req.height is not None
        return im.resize((req.width, req.height), Image.Resampling.LANCZOS)
    if req.op is Op.CROP:
        assert req.left is not None
        assert req.top is not None
        assert req.width is not None
        assert req.height is not None
        return im.crop((req.left, req.top, req.left + req.width, req.top + req.height))
    if req.op is Op.ROTATE:
        assert req.degrees is not None
        return _rotate(im, req.degrees % 360, out_format)
    return im.convert("LA" if im.mode in ("LA", "RGBA") else "L")


def _rotate(im: Image.Image, turn: int, out_format: OutputFormat) -> Image.Image:
    """Rotate counter-clockwise by ``turn`` (0..359) degrees, expanding the canvas."""
    if turn == 0:
        return im
    transpose = _TRANSPOSE_FOR_ROTATION.get(turn)
    if transpose is not None:
        return im.transpose(transpose)
    if out_format is OutputFormat.JPEG:
        fill: int | tuple[int, ...] = 255 if im.mode == "L" else (255,) * len(im.getbands())
    else:
        if im.mode in ("L", "RGB"):
            im = im.convert(im.mode + "A")
        fill = (0,) * len(im.getbands())
    return im.rotate(turn, resample=Image.Resampling.BICUBIC, expand=True, fillcolor=fill)


def _output_mode(im: Image.Image, out_format: OutputFormat) -> Image.Image:
    """Convert an L/LA/RGB/RGBA image to what the encoder writes as-is."""
    if out_format is OutputFormat.JPEG and im.mode in ("LA", "RGBA"):
        # JPEG has no alpha: composite onto white rather than exposing hidden colours.
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        flat = Image.alpha_composite(white, im.convert("RGBA"))
        return flat.convert("L" if im.mode == "LA" else "RGB")
    if out_format is OutputFormat.WEBP and im.mode in ("L", "LA"):
        return im.convert("RGB" if im.mode == "L" else "RGBA")
    return im


def _encode(
    im: Image.Image,
    out_format: OutputFormat,
    *,
    quality: int | None,
    icc_profile: bytes | None,
) -> bytes:
    """Encode without metadata (no EXIF/XMP), keeping only a still-valid ICC profile."""
    options: dict[str, Any] = {}
    if out_format in DEFAULT_QUALITY:
        options["quality"] = quality if quality is not None else DEFAULT_QUALITY[out_format]
    if icc_profile:
        options["icc_profile"] = icc_profile
    buffer = io.BytesIO()
    im.save(buffer, format=out_format.value.upper(), **options)
    return buffer.getvalue()


@job("image", pool="cpu", timeout=60)
def image_job(data: bytes, request: dict[str, Any], max_pixels: int) -> dict[str, Any]:
    """The ``image`` job (cpu pool): ``process_image`` with the submit-time limits."""
    return process_image(data, request, max_pixels=max_pixels)
