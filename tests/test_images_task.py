"""The image job: request parsing, header probing and every operation, on real Pillow images."""

from __future__ import annotations

import concurrent.futures
import functools
import io
import json
import logging
import multiprocessing
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image, ImageCms, ImageFile

from service import errors
from service.tasks.images import request as image_request
from service.tasks.images.errors import (
    BadParams,
    ImageDecodeError,
    ImageError,
    NotAnImage,
    TooManyPixels,
)
from service.tasks.images.probe import ImageInfo, check_request, probe
from service.tasks.images.process import process_image
from service.tasks.images.request import ImageRequest, Op, OutputFormat, parse_request
from tests import imagegen

MAX_PIXELS = 4_000_000
MAX_SIDE = 4096
ROOT = Path(__file__).resolve().parents[1]


@functools.cache
def source(fmt: str, mode: str = "RGB", width: int = 400, height: int = 300) -> bytes:
    """A photo-like test image, made once per test run."""
    return imagegen.photo_like(width, height, fmt, mode=mode)


def run_query(
    data: bytes, params: dict[str, str], *, max_pixels: int = MAX_PIXELS
) -> dict[str, Any]:
    """Parse ``params`` as the query string would arrive and run the job function."""
    request = parse_request(params, max_side=MAX_SIDE)
    return process_image(data, request.to_dict(), max_pixels=max_pixels)


def run(data: bytes, max_pixels: int = MAX_PIXELS, **params: str) -> dict[str, Any]:
    """:func:`run_query` with the query parameters as keywords."""
    return run_query(data, params, max_pixels=max_pixels)


def opened(result: dict[str, Any]) -> Image.Image:
    """Decode a job result, checking that its metadata matches what is inside."""
    im = Image.open(io.BytesIO(result["data"]))
    assert im.format == result["format"].upper()
    assert im.size == (result["width"], result["height"])
    assert result["content_type"] == f"image/{result['format']}"
    im.load()
    return im


def _rotated_size(width: int, height: int, degrees: int) -> tuple[int, int]:
    return Image.new("L", (width, height)).rotate(degrees, expand=True).size


# --------------------------------------------------------------------------- operations

# id, source (format, mode), query parameters, expected (size, mode, format)
OP_CASES: list[tuple[str, tuple[str, str], dict[str, str], tuple[tuple[int, int], str, str]]] = [
    (
        "thumbnail-jpeg",
        ("jpeg", "RGB"),
        {"op": "thumbnail", "width": "100", "height": "100"},
        ((100, 75), "RGB", "jpeg"),
    ),
    (
        "thumbnail-rgba-png-to-webp",
        ("png", "RGBA"),
        {"op": "thumbnail", "width": "100", "height": "100", "format": "webp"},
        ((100, 75), "RGBA", "webp"),
    ),
    (
        "thumbnail-gif-defaults-to-png",
        ("gif", "P"),
        {"op": "thumbnail", "width": "80", "height": "200"},
        ((80, 60), "RGB", "png"),
    ),
    (
        "thumbnail-never-enlarges",
        ("png", "RGB"),
        {"op": "thumbnail", "width": "1000", "height": "1000"},
        ((400, 300), "RGB", "png"),
    ),
    (
        "resize-jpeg-to-png",
        ("jpeg", "RGB"),
        {"op": "resize", "width": "123", "height": "45", "format": "png"},
        ((123, 45), "RGB", "png"),
    ),
    (
        "resize-webp-to-jpeg",
        ("webp", "RGB"),
        {"op": "resize", "width": "640", "height": "480", "format": "jpg", "quality": "50"},
        ((640, 480), "RGB", "jpeg"),
    ),
    (
        "resize-cmyk-jpeg",
        ("jpeg", "CMYK"),
        {"op": "resize", "width": "200", "height": "150"},
        ((200, 150), "RGB", "jpeg"),
    ),
    (
        "crop-jpeg",
        ("jpeg", "RGB"),
        {"op": "crop", "left": "10", "top": "20", "width": "50", "height": "60"},
        ((50, 60), "RGB", "jpeg"),
    ),
    (
        "crop-tiff-to-webp",
        ("tiff", "RGB"),
        {"op": "crop", "left": "0", "top": "0", "width": "400", "height": "1", "format": "webp"},
        ((400, 1), "RGB", "webp"),
    ),
    (
        "rotate-90-jpeg",
        ("jpeg", "RGB"),
        {"op": "rotate", "degrees": "90"},
        ((300, 400), "RGB", "jpeg"),
    ),
    (
        "rotate-minus-90-bmp-defaults-to-png",
        ("bmp", "RGB"),
        {"op": "rotate", "degrees": "-90"},
        ((300, 400), "RGB", "png"),
    ),
    (
        "rotate-45-png-gets-alpha",
        ("png", "RGB"),
        {"op": "rotate", "degrees": "45"},
        (_rotated_size(400, 300, 45), "RGBA", "png"),
    ),
    (
        "rotate-30-jpeg",
        ("jpeg", "RGB"),
        {"op": "rotate", "degrees": "30", "quality": "70"},
        (_rotated_size(400, 300, 30), "RGB", "jpeg"),
    ),
    (
        "grayscale-jpeg",
        ("jpeg", "RGB"),
        {"op": "grayscale"},
        ((400, 300), "L", "jpeg"),
    ),
    (
        "grayscale-rgba-png-keeps-alpha",
        ("png", "RGBA"),
        {"op": "grayscale"},
        ((400, 300), "LA", "png"),
    ),
    (
        "grayscale-webp-is-stored-as-rgb",
        ("webp", "RGB"),
        {"op": "grayscale"},
        ((400, 300), "RGB", "webp"),
    ),
    (
        "grayscale-16-bit-png",
        ("png", "I;16"),
        {"op": "grayscale"},
        ((400, 300), "L", "png"),
    ),
]


@pytest.mark.parametrize(
    ("src", "params", "expected"),
    [
        pytest.param(src, params, expected, id=case_id)
        for case_id, src, params, expected in OP_CASES
    ],
)
def test_operation_output(
    src: tuple[str, str], params: dict[str, str], expected: tuple[tuple[int, int], str, str]
) -> None:
    """Each operation on each kind of input gives the expected size, mode and format."""
    size, mode, fmt = expected
    im = opened(run_query(source(*src), params))
    assert (im.size, im.mode, im.format) == (size, mode, fmt.upper())


def test_lossless_crop_rotate_and_grayscale_match_pillow() -> None:
    """Crop, right-angle rotation and grayscale give exactly Pillow's pixels on a PNG."""
    data = source("png")
    original = Image.open(io.BytesIO(data)).convert("RGB")
    crop = opened(run(data, op="crop", left="7", top="9", width="100", height="50"))
    assert crop.tobytes() == original.crop((7, 9, 107, 59)).tobytes()
    turned = opened(run(data, op="rotate", degrees="90"))
    assert turned.tobytes() == original.transpose(Image.Transpose.ROTATE_90).tobytes()
    gray = opened(run(data, op="grayscale"))
    assert gray.tobytes() == original.convert("L").tobytes()


def test_rotation_fills_corners_transparent_or_white() -> None:
    """A non-right rotation leaves transparent corners in png and white ones in jpeg."""
    data = source("png")
    png = opened(run(data, op="rotate", degrees="45"))
    assert png.getpixel((0, 0)) == (0, 0, 0, 0)
    jpeg = opened(run(data, op="rotate", degrees="45", format="jpeg"))
    corner = jpeg.getpixel((0, 0))
    assert isinstance(corner, tuple)
    assert min(corner) > 240


def test_rgba_png_to_jpeg_is_flattened_onto_white() -> None:
    """An RGBA PNG becomes an RGB JPEG whose transparent part is white, not black."""
    im = Image.new("RGBA", (64, 32), (0, 0, 0, 0))
    im.paste((255, 0, 0, 255), (32, 0, 64, 32))
    out = opened(
        run(
            imagegen.encode(im, "png"),
            op="crop",
            left="0",
            top="0",
            width="64",
            height="32",
            format="jpeg",
        )
    )
    assert out.mode == "RGB"
    left, right = out.getpixel((8, 16)), out.getpixel((56, 16))
    assert isinstance(left, tuple)
    assert isinstance(right, tuple)
    assert min(left) > 240
    assert right[0] > 230
    assert max(right[1:]) < 25


def test_quality_changes_jpeg_size() -> None:
    """A lower quality gives a smaller JPEG."""
    data = source("png")
    low = run(data, op="grayscale", format="jpeg", quality="10")
    high = run(data, op="grayscale", format="jpeg", quality="95")
    assert len(low["data"]) < len(high["data"])


def test_icc_profile_kept_only_when_colour_space_unchanged() -> None:
    """An sRGB profile survives an RGB result but is dropped from a grayscale one."""
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    data = imagegen.encode(imagegen.photo_image(64, 48), "jpeg", icc_profile=profile)
    rgb = opened(run(data, op="resize", width="32", height="24"))
    assert rgb.info.get("icc_profile") == profile
    gray = opened(run(data, op="grayscale"))
    assert "icc_profile" not in gray.info


def test_resize_of_a_photo_decodes_it_whole_and_encodes_jpeg() -> None:
    """A 3-megapixel JPEG photo resized to 1600x1200 comes back that size as a JPEG."""
    result = run(imagegen.photo_like(2048, 1536, "jpeg"), op="resize", width="1600",
                 height="1200", format="jpeg")  # fmt: skip
    im = opened(result)
    assert im.size == (1600, 1200)
    assert im.format == "JPEG"


# --------------------------------------------------------------------------- orientation


@pytest.mark.parametrize("fmt", ["jpeg", "png", "webp", "tiff"])
def test_exif_orientation_6_is_applied_before_the_op(fmt: str) -> None:
    """A 40x20 image tagged orientation 6 is cropped as the 20x40 image it displays as."""
    data = imagegen.with_exif_orientation(6, fmt=fmt)
    assert probe(data, max_pixels=MAX_PIXELS).oriented_size == (20, 40)
    out = opened(run(data, op="crop", left="0", top="0", width="20", height="40", format="png"))
    assert out.size == (20, 40)
    top, bottom = out.getpixel((10, 5)), out.getpixel((10, 35))
    assert isinstance(top, tuple)
    assert isinstance(bottom, tuple)
    assert top[0] > 200 > top[2], "the stored left (red) half must end up on top"
    assert bottom[2] > 200 > bottom[0]
    assert 0x0112 not in out.getexif(), "the output carries no orientation to apply again"


def test_exif_orientation_3_turns_the_image_upside_down() -> None:
    """Orientation 3 (rotated 180) puts the stored right (blue) half on the left."""
    out = opened(run(imagegen.with_exif_orientation(3), op="grayscale", format="png"))
    assert out.size == (40, 20)
    left, right = out.getpixel((5, 10)), out.getpixel((35, 10))
    assert isinstance(left, int)
    assert isinstance(right, int)
    assert left < right, "blue is darker than red in luminance"


def test_thumbnail_of_rotated_jpeg_keeps_the_displayed_orientation() -> None:
    """A large orientation-6 JPEG thumbnails to a portrait box with red on top."""
    data = imagegen.with_exif_orientation(6, width=1600, height=800)
    out = opened(run(data, op="thumbnail", width="100", height="100", format="png"))
    assert out.size == (50, 100)
    top = out.getpixel((25, 10))
    assert isinstance(top, tuple)
    assert top[0] > 200 > top[2]


def test_crop_against_the_oriented_size_is_checked_at_submit() -> None:
    """check_request refuses a crop that fits the stored 40x20 but not the displayed 20x40."""
    data = imagegen.with_exif_orientation(6)
    info = probe(data, max_pixels=MAX_PIXELS)
    request = parse_request(
        {"op": "crop", "left": "0", "top": "0", "width": "40", "height": "20"}, max_side=MAX_SIDE
    )
    with pytest.raises(BadParams, match="does not lie inside the 20x40 image"):
        check_request(request, info, max_pixels=MAX_PIXELS)


# --------------------------------------------------------------------------- parsing

# query parameters, the parameter the error must name
BAD_PARAMS: list[tuple[dict[str, str], str]] = [
    ({}, "op"),
    ({"op": "blur"}, "op"),
    ({"op": "resize", "width": "10"}, "height"),
    ({"op": "resize", "width": "abc", "height": "10"}, "width"),
    ({"op": "resize", "width": "1.5", "height": "10"}, "width"),
    ({"op": "resize", "width": " 12", "height": "10"}, "width"),
    ({"op": "resize", "width": "1_000", "height": "10"}, "width"),
    ({"op": "resize", "width": "\u0661\u0662", "height": "10"}, "width"),
    ({"op": "resize", "width": "0", "height": "10"}, "width"),
    ({"op": "resize", "width": "10", "height": str(MAX_SIDE + 1)}, "height"),
    ({"op": "thumbnail", "width": "99999999999999999999", "height": "10"}, "width"),
    ({"op": "crop", "left": "-1", "top": "0", "width": "5", "height": "5"}, "left"),
    ({"op": "rotate", "degrees": "361"}, "degrees"),
    ({"op": "rotate", "degrees": "45.5"}, "degrees"),
    ({"op": "grayscale", "quality": "0"}, "quality"),
    ({"op": "grayscale", "quality": "101"}, "quality"),
    ({"op": "grayscale", "format": "png", "quality": "80"}, "quality"),
    ({"op": "grayscale", "format": "gif"}, "format"),
    ({"op": "grayscale", "width": "10"}, "width"),
    ({"op": "grayscale", "colour": "red"}, "colour"),
]


@pytest.mark.parametrize(("params", "param"), BAD_PARAMS, ids=[str(p) for p, _ in BAD_PARAMS])
def test_bad_parameters_are_refused_naming_the_parameter(
    params: dict[str, str], param: str
) -> None:
    """Each invalid query is a BadParams whose message and ``param`` name the culprit."""
    with pytest.raises(BadParams) as caught:
        parse_request(params, max_side=MAX_SIDE)
    assert caught.value.param == param
    assert repr(param) in str(caught.value)
    assert caught.value.extra == {"param": param}


def test_parse_request_types_and_aliases() -> None:
    """A valid query becomes a typed ImageRequest; jpg is an alias of jpeg."""
    request = parse_request(
        {"op": "crop", "left": "1", "top": "+2", "width": "3", "height": "4", "format": "JPG"},
        max_side=MAX_SIDE,
    )
    assert request == ImageRequest(
        op=Op.CROP, left=1, top=2, width=3, height=4, format=OutputFormat.JPEG
    )


def test_repeated_parameter_is_refused() -> None:
    """A parameter given twice (a list, as Falcon parses it) is BadParams, not a guess."""
    params: dict[str, Any] = {"op": "grayscale", "quality": ["10", "90"]}
    with pytest.raises(BadParams, match="given once") as caught:
        parse_request(params, max_side=MAX_SIDE)
    assert caught.value.param == "quality"


_ops = st.sampled_from(list(Op))
_formats = st.sampled_from([None, "jpeg", "png", "webp"])


@st.composite
def valid_params(draw: st.DrawFn) -> dict[str, str]:
    """Query parameters that parse_request accepts."""
    op = draw(_ops)
    params = {"op": op.value}
    side = st.integers(1, MAX_SIDE).map(str)
    for name in image_request._OP_PARAMS[op]:
        if name in ("width", "height"):
            params[name] = draw(side)
        elif name == "degrees":
            params[name] = str(draw(st.integers(-360, 360)))
        else:
            params[name] = str(draw(st.integers(0, 10**6)))
    fmt = draw(_formats)
    if fmt is not None:
        params["format"] = fmt
    if fmt != "png" and draw(st.booleans()):
        params["quality"] = str(draw(st.integers(1, 100)))
    return params


@given(valid_params())
def test_request_round_trips_through_plain_data(params: dict[str, str]) -> None:
    """to_dict gives plain picklable data that from_dict turns back into the same request."""
    request = parse_request(params, max_side=MAX_SIDE)
    data = request.to_dict()
    assert all(type(v) in (str, int) for v in data.values())
    assert ImageRequest.from_dict(pickle.loads(pickle.dumps(data))) == request


@pytest.mark.parametrize(
    "stored",
    [
        {"op": "resize", "width": "10", "height": 10},
        {"op": "resize", "width": True, "height": 10},
        {"op": 3},
        {"op": "rotate", "degrees": 720},
        {"op": "rotate", "degrees": 90, "extra": 1},
    ],
)
def test_from_dict_refuses_malformed_stored_requests(stored: dict[str, object]) -> None:
    """Stored arguments are validated again, not trusted."""
    with pytest.raises(BadParams):
        ImageRequest.from_dict(stored)


# --------------------------------------------------------------------------- probe


@pytest.mark.parametrize(
    ("fmt", "mode"),
    [
        ("jpeg", "RGB"),
        ("png", "RGBA"),
        ("webp", "RGB"),
        ("gif", "P"),
        ("bmp", "RGB"),
        ("tiff", "RGB"),
    ],
)
def test_probe_reads_allowed_formats(fmt: str, mode: str) -> None:
    """probe reports format, size and mode of each allowed format."""
    info = probe(source(fmt, mode), max_pixels=MAX_PIXELS)
    assert info == ImageInfo(format=fmt, width=400, height=300, mode=mode)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(imagegen.not_an_image(), id="pdf"),
        pytest.param(b"", id="empty"),
        pytest.param(b"\x89PNG\r\n\x1a\n" + b"\0" * 40, id="png-signature-only"),
        *(pytest.param(imagegen.other_format(fmt), id=fmt) for fmt in ("ppm", "pcx", "ico", "tga")),
    ],
)
def test_probe_refuses_non_images_and_other_formats(data: bytes) -> None:
    """Bodies that are not an image in an allowed format are NotAnImage (415)."""
    with pytest.raises(NotAnImage) as caught:
        probe(data, max_pixels=MAX_PIXELS)
    assert isinstance(caught.value, errors.UnsupportedMediaType)
    assert isinstance(caught.value, ValueError)


def test_probe_accepts_a_truncated_image_whose_header_is_intact() -> None:
    """Truncation is found by decoding, so probe lets it through to the job."""
    data = imagegen.truncated(source("jpeg"))
    assert probe(data, max_pixels=MAX_PIXELS).width == 400


@pytest.fixture(scope="module")
def big_bomb() -> bytes:
    """A PNG declaring 400 M pixels, above even Pillow's own limit."""
    return imagegen.bomb(20_000, 20_000)


def test_bomb_is_small_and_refused_by_probe(big_bomb: bytes) -> None:
    """A 400 M pixel bomb is under 64 KB on disk and probe refuses it as TooManyPixels."""
    assert len(big_bomb) < 64 * 1024
    with pytest.raises(TooManyPixels, match="pixels"):
        probe(big_bomb, max_pixels=MAX_PIXELS)


def test_bomb_under_pillows_limit_is_refused_by_our_limit() -> None:
    """An 80 M pixel bomb (under Pillow's global limit) is refused by max_pixels."""
    with pytest.raises(TooManyPixels, match="10000x8000 = 80000000 pixels"):
        probe(imagegen.bomb(10_000, 8_000), max_pixels=MAX_PIXELS)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads Linux's VmHWM")
def test_bomb_is_refused_without_decoding() -> None:
    """In a fresh process probe refuses the bomb with no memory growth; decoding it grows ~80 MB."""
    script = textwrap.dedent(
        """
        import io, json, re
        from PIL import Image
        from tests import imagegen
        from service.tasks.images.errors import TooManyPixels
        from service.tasks.images.probe import probe

        def peak_mb():
            # VmHWM: this process's peak resident memory. (ru_maxrss would carry the
            # parent's peak over the fork, hiding growth below it.)
            with open("/proc/self/status") as status:
                return int(re.search(r"VmHWM:\\s+(\\d+) kB", status.read())[1]) / 1024

        data = imagegen.bomb(10_000, 8_000)
        probe(imagegen.photo_like(8, 8, "webp"), max_pixels=64)  # plugins imported first
        before = peak_mb()
        try:
            probe(data, max_pixels=4_000_000)
            refused = False
        except TooManyPixels:
            refused = True
        after_probe = peak_mb()
        Image.open(io.BytesIO(data)).load()
        after_decode = peak_mb()
        print(json.dumps([refused, after_probe - before, after_decode - after_probe]))
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
        check=True,
    )
    refused, probe_growth, decode_growth = json.loads(done.stdout)
    print(f"peak growth: probe {probe_growth:.2f} MB, decode {decode_growth:.1f} MB")
    assert refused
    assert probe_growth < 5, f"probe grew peak memory by {probe_growth:.1f} MB"
    assert decode_growth > 60, "control: decoding the same bomb must be visible"


def test_oversized_webp_canvas_is_refused() -> None:
    """A WebP whose header declares too large a canvas is refused before libwebp parses it."""
    data = bytearray(imagegen.encode(Image.new("RGB", (16, 16), "teal"), "webp"))
    assert data[12:16] == b"VP8 "
    data[26:30] = (3000).to_bytes(2, "little") + (2000).to_bytes(2, "little")
    # The forged file opens (libwebp sizes its canvas from this header); the limit refuses it.
    with pytest.raises(TooManyPixels, match="3000x2000"):
        probe(bytes(data), max_pixels=MAX_PIXELS)


@pytest.mark.filterwarnings("ignore:Tag data larger than file")
def test_libtiff_messages_are_log_records_not_stderr(
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    """libtiff's complaints about a TIFF's tags become debug records; none reaches fd 2."""
    caplog.set_level(logging.DEBUG, logger="libtiff")
    out = opened(run(imagegen.tiff_with_odd_tags(invalid_types=2), op="grayscale"))
    assert out.size == (16, 8)
    assert "TIFF" not in capfd.readouterr().err
    messages = [r.getMessage() for r in caplog.records if r.name == "libtiff"]
    assert all(r.levelno == logging.DEBUG for r in caplog.records if r.name == "libtiff")
    for tag in (60000, 60001):
        assert any(
            m.startswith("TIFFFetchNormalTag: ") and f"custom tag {tag} " in m for m in messages
        ), messages


# --------------------------------------------------------------------------- job failures


@pytest.mark.parametrize("fmt", ["jpeg", "png", "gif", "tiff"])
def test_truncated_image_fails_in_the_job_with_decode_error(fmt: str) -> None:
    """A truncated file decodes to ImageDecodeError naming the format and the truncation."""
    data = imagegen.truncated(source(fmt, "P" if fmt == "gif" else "RGB"))
    with pytest.raises(ImageDecodeError, match=f"cannot decode the {fmt} image: .*truncated"):
        run(data, op="grayscale")


def test_corrupt_png_data_fails_with_decode_error() -> None:
    """Zeroed bytes inside the compressed pixel data are an ImageDecodeError."""
    data = bytearray(source("png"))
    start = data.find(b"IDAT") + 40
    data[start : start + 64] = bytes(64)
    with pytest.raises(ImageDecodeError, match="cannot decode the png image"):
        run(bytes(data), op="grayscale")


def test_load_truncated_images_stays_disabled_and_is_refused_if_enabled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Importing the module leaves LOAD_TRUNCATED_IMAGES off; turned on, the job refuses to run."""
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(RuntimeError, match="LOAD_TRUNCATED_IMAGES"):
        run(imagegen.truncated(source("jpeg")), op="grayscale")


def test_job_rechecks_the_pixel_limit() -> None:
    """process_image refuses an image above max_pixels even if probe was never called."""
    with pytest.raises(TooManyPixels, match="400x300"):
        run(source("jpeg"), max_pixels=100_000, op="grayscale")


def test_job_rechecks_crop_bounds() -> None:
    """A crop box outside the decoded image is BadParams in the job too."""
    with pytest.raises(BadParams, match="does not lie inside the 400x300 image") as caught:
        run(source("jpeg"), op="crop", left="390", top="0", width="20", height="20")
    assert caught.value.param == "left"


def test_rotation_that_would_explode_the_canvas_is_refused() -> None:
    """Rotating a long thin image by 45 degrees would exceed max_pixels, so it is refused."""
    data = imagegen.encode(Image.new("L", (4000, 1)), "png")
    request = parse_request({"op": "rotate", "degrees": "45"}, max_side=MAX_SIDE)
    with pytest.raises(BadParams, match="above the limit") as caught:
        check_request(request, probe(data, max_pixels=MAX_PIXELS), max_pixels=MAX_PIXELS)
    assert caught.value.param == "degrees"
    with pytest.raises(BadParams, match="above the limit"):
        process_image(data, request.to_dict(), max_pixels=MAX_PIXELS)


def test_webp_side_limit_is_refused() -> None:
    """WebP cannot hold more than 16383 pixels per side; asking for more is BadParams."""
    request = parse_request(
        {"op": "resize", "width": "20000", "height": "10", "format": "webp"}, max_side=30_000
    )
    with pytest.raises(BadParams, match="limited to 16383") as caught:
        process_image(source("png"), request.to_dict(), max_pixels=MAX_PIXELS)
    assert caught.value.param == "format"


# --------------------------------------------------------------------------- plain data


def test_result_is_plain_picklable_data_without_metadata() -> None:
    """The result dict pickles as-is and the encoded image carries no EXIF."""
    result = run(imagegen.with_exif_orientation(6), op="grayscale")
    assert pickle.loads(pickle.dumps(result)) == result
    assert {k: type(v) for k, v in result.items()} == {
        "content_type": str,
        "data": bytes,
        "width": int,
        "height": int,
        "format": str,
    }
    assert len(opened(result).getexif()) == 0


@pytest.mark.parametrize(
    "error",
    [
        NotAnImage("no"),
        BadParams("bad width", param="width"),
        TooManyPixels("too many"),
        ImageDecodeError("truncated"),
    ],
)
def test_errors_survive_pickling(error: ImageError) -> None:
    """Errors raised in a pool process reach the parent with their type, message and param."""
    back = pickle.loads(pickle.dumps(error))
    assert type(back) is type(error)
    assert str(back) == str(error)
    assert back.detail == error.detail
    assert back.extra == error.extra
    assert getattr(back, "param", None) == getattr(error, "param", None)


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (NotAnImage("no"), 415),
        (BadParams("bad", param="width"), 422),
        (TooManyPixels("too many"), 422),
    ],
)
def test_errors_take_the_status_of_the_service_error_they_extend(
    error: ImageError, status: int
) -> None:
    """The service's one error handler maps image errors without knowing about images."""
    from service.api.problems import status_of

    assert status_of(error) == status


def test_process_image_runs_in_a_fresh_forkserver_process() -> None:
    """process_image is importable and picklable: it runs, and fails, in a forkserver pool."""
    data = source("jpeg")
    request = parse_request({"op": "thumbnail", "width": "64", "height": "64"}, max_side=MAX_SIDE)
    context = multiprocessing.get_context("forkserver")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        done = pool.submit(process_image, data, request.to_dict(), max_pixels=MAX_PIXELS)
        failed = pool.submit(
            process_image, imagegen.truncated(data), request.to_dict(), max_pixels=MAX_PIXELS
        )
        result = done.result(timeout=60)
        with pytest.raises(ImageDecodeError, match="truncated"):
            failed.result(timeout=60)
    assert opened(result).size == (64, 48)
