"""What ``POST /v1/images?op=…`` asks for: the operations, their parameters, their checks.

Parsed on the HTTP side without the image; rebuilt and checked again in the job from the
stored plain data (it may run after a restart).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from enum import StrEnum
from typing import Any, Final

from service.tasks.images.errors import BadParams

__all__ = [
    "MAX_COORDINATE",
    "MAX_DEGREES",
    "ImageRequest",
    "Op",
    "OutputFormat",
    "check_geometry",
    "default_format",
    "parse_request",
]


class Op(StrEnum):
    """The operations ``op=`` accepts; coordinates refer to the image as displayed (after
    its EXIF orientation). ``rotate`` turns counter-clockwise (Pillow's convention) and
    expands the canvas; ``thumbnail`` never enlarges."""

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


def check_geometry(
    req: ImageRequest, width: int, height: int, out_format: OutputFormat, *, max_pixels: int
) -> None:
    """BadParams unless the op fits a width x height image and the output is encodable.

    Run at submit against the header's size and in the job against the decoded image.
    """
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
