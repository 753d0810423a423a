"""The ``image`` job, run on the cpu pool: decode, apply the EXIF orientation, run the
operation, encode.

Module-level, with plain picklable arguments and result, so it runs in a fresh forkserver
process. The output is 8 bits per channel in L, LA, RGB or RGBA, from the first frame only,
without EXIF or XMP; an ICC profile is kept while the colour space it describes is unchanged.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any, Final

from PIL import Image, ImageFile, ImageOps

from service.jobs.registry import job
from service.tasks.images.errors import ImageDecodeError, TooManyPixels
from service.tasks.images.probe import (
    SWAPPING_ORIENTATIONS,
    exif_orientation,
    format_name,
    open_image,
)
from service.tasks.images.request import (
    ImageRequest,
    Op,
    OutputFormat,
    check_geometry,
    default_format,
)

__all__ = ["CONTENT_TYPES", "DEFAULT_QUALITY", "image_job", "process_image"]

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

_GRAY_FAMILY: Final = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
_RGB_FAMILY: Final = frozenset({"P", "PA", "RGB", "RGBA", "RGBa", "RGBX"})

_SIXTEEN_TO_EIGHT_BITS: Final = [value // 257 for value in range(65_536)]

_TRANSPOSE_FOR_ROTATION: Final[Mapping[int, Image.Transpose]] = {
    90: Image.Transpose.ROTATE_90,
    180: Image.Transpose.ROTATE_180,
    270: Image.Transpose.ROTATE_270,
}


def process_image(data: bytes, request: dict[str, Any], *, max_pixels: int) -> dict[str, Any]:
    """Run one image request (``ImageRequest.to_dict()``) on the image bytes.

    Re-checks everything the submit checked (it may run from stored arguments after a
    restart). Returns ``{"content_type", "data", "width", "height", "format"}`` with plain
    values. Raises NotAnImage, TooManyPixels, BadParams (request invalid or does not fit
    the image) or ImageDecodeError (truncated or corrupt pixel data).
    """
    req = ImageRequest.from_dict(request)
    with open_image(data, max_pixels=max_pixels) as im:
        out_format = req.format or default_format(format_name(im))
        icc_profile = im.info.get("icc_profile")
        source_family = _colour_family(im.mode)
        _decode(im, req)
        work = _working_mode(im)
        check_geometry(req, work.width, work.height, out_format, max_pixels=max_pixels)
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


#: As declared; the app applies ``JOBPOOL_IMAGE_TIMEOUT_S`` to its own copy of the registry.
IMAGE_TIMEOUT_S = 60.0


@job("image", pool="cpu", timeout=IMAGE_TIMEOUT_S)
def image_job(data: bytes, request: dict[str, Any], max_pixels: int) -> dict[str, Any]:
    """The ``image`` job (cpu pool): ``process_image`` with the submit-time limits."""
    return process_image(data, request, max_pixels=max_pixels)


def _decode(im: ImageFile.ImageFile, req: ImageRequest) -> None:
    """Decode the first frame and apply the EXIF orientation; ImageDecodeError on bad data."""
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        msg = (
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is enabled in this process;"
            " truncated images would be accepted silently"
        )
        raise RuntimeError(msg)
    fmt = format_name(im)
    try:
        if req.op is Op.THUMBNAIL and fmt == "jpeg":
            # Let libjpeg decode at 1/2, 1/4 or 1/8 scale when the result stays at
            # least twice the box (the same margin Image.thumbnail's reducing_gap keeps).
            assert req.width is not None
            assert req.height is not None
            box = (req.width, req.height)
            if exif_orientation(im) in SWAPPING_ORIENTATIONS:
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
        # Full LANCZOS: no reduced-scale decode, no reducing_gap shortcut.
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
    """Rotate counter-clockwise by ``turn`` (0..359) degrees, expanding the canvas.

    Multiples of 90 are exact transposes; other angles resample bicubically and fill the
    new corners transparent where the output format has alpha, white for jpeg.
    """
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
