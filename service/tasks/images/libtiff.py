"""libtiff's messages as log records (logger ``libtiff``), never raw lines on stderr.

Without a handler libtiff prints each error to stderr as plain text, e.g. one
``TIFFFetchNormalTag: ...`` line per tag of an invalid type, twice per decode; a directory
holds up to 65535 tags. Its warnings need nothing: Pillow sets the warning handler to NULL
before every decode. This sets the error handler of the libtiff that Pillow links (found
through Pillow's own module, so a bundled and a system libtiff work alike) to a ctypes
callback that logs each message at DEBUG: they describe the client's file, whose job
reports its own outcome, so at the default level one upload cannot flood the log.

Chosen over capturing fd 2 through a pipe and a reader thread: the same cost (measured),
but no thread per process, no writer blocked on a full pipe, and a crash's last words
still reach stderr. libtiff is the one library under the allowed decoders that prints
(Pillow silences libjpeg's messages; its own decoders print nothing).
"""

from __future__ import annotations

import ctypes
import logging
import platform
from typing import Final

from PIL import _imaging

__all__ = ["LEVEL", "route_to_log"]

log = logging.getLogger("libtiff")

LEVEL: Final = logging.DEBUG
"""Level of libtiff's messages in the log."""

_MESSAGE_MAX: Final = 1024
"""Bytes of one formatted message; longer ones are cut."""

# va_list reaches the callback as a pointer and can be handed on to vsnprintf as one on
# these ABIs (x86-64: an array type; AArch64: a 32-byte struct, passed by reference).
_VA_LIST_IS_POINTER: Final = platform.machine().lower() in ("x86_64", "amd64", "aarch64", "arm64")

# void (*TIFFErrorHandler)(const char *module, const char *fmt, va_list ap)
_Handler = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p)

_libc = ctypes.CDLL(None)
_vsnprintf = _libc.vsnprintf
_vsnprintf.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_void_p]
_vsnprintf.restype = ctypes.c_int


def _text(fmt: bytes, args: int | None) -> str:
    """The message libtiff would have printed; the bare format where va_list is opaque."""
    if not _VA_LIST_IS_POINTER:
        return fmt.decode(errors="replace")
    buffer = ctypes.create_string_buffer(_MESSAGE_MAX)
    if _vsnprintf(buffer, _MESSAGE_MAX, fmt, args) < 0:
        return fmt.decode(errors="replace")
    return buffer.value.decode(errors="replace")


def _on_message(module: bytes | None, fmt: bytes | None, args: int | None) -> None:
    # Runs inside libtiff (the GIL is taken for it): an exception here would be printed
    # to stderr by ctypes, the very thing this module exists to prevent.
    try:
        if not log.isEnabledFor(LEVEL) or fmt is None:
            return
        text = _text(fmt, args)
        if module:
            text = f"{module.decode(errors='replace')}: {text}"
        log.log(LEVEL, "%s", text)
    except Exception:  # noqa: S110 - nowhere left to report it but stderr
        pass


#: Kept for the life of the process: libtiff holds a pointer to it.
_handler = _Handler(_on_message)
_routed = False


def route_to_log() -> bool:
    """Send libtiff's error messages to the log in this process and those forked from it.

    Idempotent. False (and libtiff keeps printing) where Pillow's libtiff cannot be found,
    e.g. a Pillow built without TIFF support.
    """
    global _routed
    if _routed:
        return True
    try:
        # dlsym on Pillow's extension searches the libraries it links: its libtiff.
        set_handler = ctypes.CDLL(_imaging.__file__).TIFFSetErrorHandler
    except (OSError, AttributeError):
        # DEBUG: in the forkserver no handler is set up yet, and WARNING would print raw.
        log.debug("libtiff not found through Pillow: its messages still go to stderr")
        return False
    set_handler.argtypes = [_Handler]
    set_handler.restype = ctypes.c_void_p
    set_handler(_handler)
    _routed = True
    return True
