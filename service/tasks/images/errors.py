"""What the image job refuses. Each error also derives from the ``service.errors`` class
whose status it takes, so the one error handler maps them; ``str(ex)`` is client-safe."""

from __future__ import annotations

from service.errors import Invalid, ServiceError, UnsupportedMediaType

__all__ = ["BadParams", "ImageDecodeError", "ImageError", "NotAnImage", "TooManyPixels"]


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
    """The header was fine but the pixel data is truncated or corrupt (found in the job,
    which fails with ``str(ex)`` as its reason)."""

    title = "Image cannot be decoded"
