"""Images: thumbnails and resizes with Pillow, written atomically; bad inputs dead-lettered at once.

    from actors.images import make_thumbnail, resize_image
    make_thumbnail.send("/uploads/cat.jpg", "/media/thumbs/cat.webp", max_size=256)
    resize_image.send("/uploads/cat.jpg", "/media/cards/cat.jpg", 1200, 630, fit="cover")

The output format follows the suffix of ``dest`` (``.jpg``/``.jpeg``, ``.png``, ``.webp``,
``.gif``). Photos are turned upright from their EXIF orientation first. EXIF (GPS included) is
not copied to the output; the colour profile is, when the pixels still match it. JPEG has no
alpha channel, so transparency is flattened onto white. An animated image gives its first
frame. The output is written to a temporary file next to ``dest`` and renamed, so a reader
never sees half an image; missing parent directories are created.

A source that does not exist yet, or is still empty, raises ``ImageNotReady`` and is retried
(an upload may still be arriving: uploaders should write it under another name and rename
it, since a half-written file looks truncated). Anything that cannot succeed later raises
``ImageRejected`` and is dead-lettered at once (``non_retryable``): not an image, a truncated
or corrupt one, a file over ``JOBKIT_IMAGE_MAX_BYTES``, more pixels than
``JOBKIT_IMAGE_MAX_PIXELS`` (checked from the header, before decoding), an unknown output
suffix, or bad arguments. Both limits are read from the environment on every job.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dramatiq
from PIL import Image, ImageOps

from actors.outputs import replacing
from jobkit.settings import current

QUEUE = "images"
#: Output format by ``dest`` suffix (lower-cased).
FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP", ".gif": "GIF"}
FITS = ("contain", "cover", "exact")
#: Largest output side: well under format limits (WebP stops at 16,383).
MAX_SIDE = 10_000
MAX_BYTES_ENV = "JOBKIT_IMAGE_MAX_BYTES"
MAX_PIXELS_ENV = "JOBKIT_IMAGE_MAX_PIXELS"
SAVE_OPTIONS: dict[str, dict[str, Any]] = {"JPEG": {"quality": 85}, "WEBP": {"quality": 85}}
#: Modes every output format and resampling filter handle well ("P" and "1" resize with
#: nearest-neighbour only, CMYK cannot be written as PNG, WebP or GIF).
WORKING_MODES = ("L", "LA", "RGB", "RGBA")
#: What Pillow raises for bytes it cannot decode: corrupt, truncated or hostile files.
#: (DecompressionBombWarning is only raised when a warnings filter turns it into an error.)
DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    IndexError,
    struct.error,
    Image.DecompressionBombError,
    Image.DecompressionBombWarning,
)

logger = logging.getLogger("jobkit.images")


class ImageRejected(Exception):
    """The job can never succeed (not an image, corrupt, too big, bad arguments): not retried."""


class ImageNotReady(Exception):
    """The source file does not exist (yet) or is still empty: retried."""


def max_bytes() -> int:
    """Largest source file accepted, in bytes (``JOBKIT_IMAGE_MAX_BYTES``, default 50 MiB)."""
    return current().image_max_bytes


def max_pixels() -> int:
    """Most pixels (width x height) accepted, in or out (``JOBKIT_IMAGE_MAX_PIXELS``)."""
    return current().image_max_pixels


def output_format(dest: str) -> str:
    """Pillow's format name for ``dest``'s suffix; ``ImageRejected`` for any other suffix."""
    suffix = Path(dest).suffix.lower()
    if suffix not in FORMATS:
        accepted = ", ".join(FORMATS)
        shown = suffix or "(no suffix)"
        raise ImageRejected(f"{dest}: unknown output format {shown!r}; use one of {accepted}")
    return FORMATS[suffix]


def _check_paths(source: object, dest: object) -> None:
    for name, value in (("source", source), ("dest", dest)):
        if not isinstance(value, str) or not value:
            raise ImageRejected(f"{name} must be a file path, got {value!r}")


def _check_side(where: str, name: str, value: object) -> None:
    # bool is an int to Python, never a size to a caller.
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_SIDE:
        raise ImageRejected(
            f"{where}: {name} must be a whole number from 1 to {MAX_SIDE:,}, got {value!r}"
        )


def _check_pixels(where: Path | str, width: int, height: int, what: str = "") -> None:
    pixels = width * height
    limit, source = max_pixels(), MAX_PIXELS_ENV
    # Pillow warns from MAX_IMAGE_PIXELS and refuses from twice that; a warning is easy to
    # miss in a worker log, so its limit is a hard one here too.
    if Image.MAX_IMAGE_PIXELS and limit > Image.MAX_IMAGE_PIXELS:
        limit, source = Image.MAX_IMAGE_PIXELS, "PIL.Image.MAX_IMAGE_PIXELS"
    if pixels > limit:
        raise ImageRejected(
            f"{where}: {what}{width}x{height} = {pixels:,} pixels, "
            f"over the {limit:,} limit ({source})"
        )


@contextlib.contextmanager
def _opened(path: Path) -> Iterator[Image.Image]:
    """``path`` opened by Pillow (header only) once its size in bytes and pixels is allowed."""
    try:
        file = path.open("rb")
    except FileNotFoundError:
        raise ImageNotReady(f"{path}: no such file (yet)") from None
    except IsADirectoryError:
        raise ImageRejected(f"{path}: is a directory, not an image") from None
    with file:
        size = os.fstat(file.fileno()).st_size
        if size == 0:
            raise ImageNotReady(f"{path}: empty file (still being written?)")
        limit = max_bytes()
        if size > limit:
            raise ImageRejected(
                f"{path}: {size:,} bytes, over the {limit:,} limit ({MAX_BYTES_ENV})"
            )
        try:
            image = Image.open(file)
        except Image.UnidentifiedImageError:
            raise ImageRejected(f"{path}: not an image (or not a format Pillow reads)") from None
        except DECODE_ERRORS as error:
            raise ImageRejected(f"{path}: unreadable image header: {error}") from None
        with image:
            _check_pixels(path, *image.size)
            yield image


def _decoded(image: Image.Image, path: Path, box: tuple[int, int]) -> Image.Image:
    """The pixels of ``image``, upright, in one of ``WORKING_MODES``; enough for ``box``."""
    # A JPEG can decode at 1/2 to 1/8 scale: far less memory and time for a small output.
    # Twice the longer side keeps both sides large enough whichever way the photo turns.
    side = 2 * max(box)
    image.draft(None, (side, side))
    try:
        image.load()
        upright = ImageOps.exif_transpose(image)
    except DECODE_ERRORS as error:
        raise ImageRejected(f"{path}: corrupt or truncated {image.format} image: {error}") from None
    if upright.mode not in WORKING_MODES:
        upright = upright.convert("RGBA" if upright.has_transparency_data else "RGB")
        # The profile described the old pixels (e.g. CMYK): wrong for the converted ones.
        upright.info.pop("icc_profile", None)
    return upright


def _write_atomically(image: Image.Image, dest: Path, fmt: str) -> None:
    """Save ``image`` as ``fmt`` to a temporary file beside ``dest``, then rename it over."""
    options = dict(SAVE_OPTIONS.get(fmt, {}))
    icc_profile = image.info.get("icc_profile")
    if icc_profile and fmt != "GIF":
        options["icc_profile"] = icc_profile
    if fmt == "JPEG" and image.mode in ("LA", "RGBA"):
        # Dropping alpha would show whatever colour transparent pixels hold, often black.
        white = Image.new("RGBA", image.size, "white")
        flat = Image.alpha_composite(white, image.convert("RGBA"))
        image = flat.convert("L" if image.mode == "LA" else "RGB")
    with replacing(dest) as partial:
        image.save(partial, format=fmt, **options)


def _log(source: Path, before: tuple[int, int], dest: Path, image: Image.Image, fmt: str) -> None:
    logger.info(
        "image written: %s (%dx%d) -> %s (%dx%d %s, %d bytes)",
        source,
        *before,
        dest,
        *image.size,
        fmt,
        dest.stat().st_size,
    )


#: Both actors: a missing source is retried from 5 s; a rejected image is not.
ACTOR_OPTIONS: dict[str, Any] = {
    "queue_name": QUEUE,
    "max_retries": 5,
    "min_backoff": 5_000,
    "max_backoff": 300_000,
    "throws": (ImageRejected,),
    "time_limit": 120_000,
}


@dramatiq.actor(**ACTOR_OPTIONS)
def make_thumbnail(source: str, dest: str, max_size: int = 256) -> None:
    """Write ``source`` to ``dest`` scaled down (never up) to fit in ``max_size`` squared."""
    _check_paths(source, dest)
    _check_side(source, "max_size", max_size)
    fmt = output_format(dest)
    path = Path(source)
    box = (max_size, max_size)
    with _opened(path) as image:
        before = image.size
        thumbnail = _decoded(image, path, box)
    thumbnail.thumbnail(box)
    _write_atomically(thumbnail, Path(dest), fmt)
    _log(path, before, Path(dest), thumbnail, fmt)


@dramatiq.actor(**ACTOR_OPTIONS)
def resize_image(source: str, dest: str, width: int, height: int, fit: str = "contain") -> None:
    """Write ``source`` to ``dest`` resized to ``width`` x ``height`` as ``fit`` says.

    ``contain``: the largest size that fits inside, aspect ratio kept (one side may be
    shorter); ``cover``: fills the box exactly, cropping the overflow around the centre;
    ``exact``: stretched to the box. Unlike a thumbnail, a small source is scaled up.
    """
    _check_paths(source, dest)
    _check_side(source, "width", width)
    _check_side(source, "height", height)
    if fit not in FITS:
        raise ImageRejected(f"{source}: fit must be one of {', '.join(FITS)}, got {fit!r}")
    _check_pixels(source, width, height, what="output ")
    fmt = output_format(dest)
    path = Path(source)
    box = (width, height)
    with _opened(path) as image:
        before = image.size
        picture = _decoded(image, path, box)
    if fit == "contain":
        resized = ImageOps.contain(picture, box)
    elif fit == "cover":
        resized = ImageOps.fit(picture, box)
    else:
        resized = picture.resize(box)
    _write_atomically(resized, Path(dest), fmt)
    _log(path, before, Path(dest), resized, fmt)
