"""Images: thumbnails and resizes, upright and atomic; bad inputs rejected, late sources retried."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import dramatiq
import pytest
from dramatiq import Broker
from PIL import Image

from actors.images import ImageNotReady, ImageRejected, make_thumbnail, resize_image
from brokers.dead_letter_store import dead_letter_store
from tests.support.processes import wait_until, worker
from tests.support.shipped import redeclare

QUEUE = "jobkit-test"
ORIENTATION = 0x0112
RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def bands(path: Path, width: int = 800, height: int = 400, fmt: str | None = None) -> Path:
    """An RGB image in three vertical bands: red quarter, green half, blue quarter."""
    image = Image.new("RGB", (width, height), GREEN)
    image.paste(RED, (0, 0, width // 4, height))
    image.paste(BLUE, (width - width // 4, 0, width, height))
    image.save(path, format=fmt)
    return path


def close_to(pixel: Any, colour: tuple[int, int, int], tolerance: int = 40) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel[:3], colour, strict=True))


def opened(path: Path) -> Image.Image:
    with Image.open(path) as image:
        image.load()
        return image


# Pure functions: the actors' bodies, called directly.


def test_a_thumbnail_keeps_the_aspect_ratio_and_format(tmp_path: Path) -> None:
    source = bands(tmp_path / "wide.png")
    dest = tmp_path / "out" / "deep" / "thumb.png"  # parent directories are created
    make_thumbnail.fn(str(source), str(dest), 256)
    thumb = opened(dest)
    assert thumb.format == "PNG" and thumb.size == (256, 128)
    assert close_to(thumb.getpixel((10, 64)), RED) and close_to(thumb.getpixel((245, 64)), BLUE)
    assert sorted(p.name for p in dest.parent.iterdir()) == ["thumb.png"]  # no temporary left


def test_a_small_image_is_not_scaled_up_by_a_thumbnail(tmp_path: Path) -> None:
    source = bands(tmp_path / "small.png", 100, 60)
    make_thumbnail.fn(str(source), str(tmp_path / "thumb.png"), 256)
    assert opened(tmp_path / "thumb.png").size == (100, 60)


def test_a_thumbnail_of_a_large_jpeg_fits_the_box(tmp_path: Path) -> None:
    source = bands(tmp_path / "tall.jpg", 1500, 3000)  # decoded at a reduced scale
    make_thumbnail.fn(str(source), str(tmp_path / "thumb.jpg"), 200)
    assert opened(tmp_path / "thumb.jpg").size == (100, 200)


def test_exif_orientation_turns_a_phone_photo_upright(tmp_path: Path) -> None:
    # Stored sideways (landscape, red on the left); Orientation=6 says "rotate 90 degrees
    # clockwise to display", so upright it is portrait with red at the top.
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    image = Image.new("RGB", (400, 200), BLUE)
    image.paste(RED, (0, 0, 200, 200))
    image.save(tmp_path / "phone.jpg", exif=exif)
    dest = tmp_path / "thumb.jpg"
    make_thumbnail.fn(str(tmp_path / "phone.jpg"), str(dest), 128)
    thumb = opened(dest)
    assert thumb.size == (64, 128)
    assert close_to(thumb.getpixel((32, 10)), RED) and close_to(thumb.getpixel((32, 118)), BLUE)
    assert ORIENTATION not in thumb.getexif()  # no viewer turns it a second time


@pytest.mark.parametrize(
    ("fit", "size", "left"),
    [
        ("contain", (200, 100), RED),  # inside 200x200, ratio kept
        ("cover", (200, 200), GREEN),  # fills the box: the centre square, red and blue cut off
        ("exact", (200, 200), RED),  # stretched: everything still there
    ],
)
def test_resize_fits_as_asked(
    tmp_path: Path, fit: str, size: tuple[int, int], left: tuple[int, int, int]
) -> None:
    source = bands(tmp_path / "wide.png")
    dest = tmp_path / f"{fit}.png"
    resize_image.fn(str(source), str(dest), 200, 200, fit=fit)
    resized = opened(dest)
    assert resized.size == size
    assert close_to(resized.getpixel((3, size[1] // 2)), left)


def test_resize_scales_a_small_image_up(tmp_path: Path) -> None:
    source = bands(tmp_path / "small.png", 40, 20)
    resize_image.fn(str(source), str(tmp_path / "big.png"), 400, 400)
    assert opened(tmp_path / "big.png").size == (400, 200)


@pytest.mark.parametrize(
    ("suffix", "fmt"),
    [(".jpg", "JPEG"), (".JPEG", "JPEG"), (".png", "PNG"), (".webp", "WEBP"), (".gif", "GIF")],
)
def test_the_output_format_follows_the_dest_suffix(tmp_path: Path, suffix: str, fmt: str) -> None:
    source = bands(tmp_path / "source.png")
    dest = tmp_path / f"out{suffix}"
    make_thumbnail.fn(str(source), str(dest), 64)
    assert opened(dest).format == fmt


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "1", "CMYK", "I;16"])
def test_any_mode_is_written_as_jpeg(tmp_path: Path, mode: str) -> None:
    source = tmp_path / f"source-{mode.replace(';', '')}.{'tif' if mode == 'CMYK' else 'png'}"
    Image.new("RGB", (80, 40), RED).convert(mode).save(source)
    make_thumbnail.fn(str(source), str(tmp_path / "out.jpg"), 32)
    out = opened(tmp_path / "out.jpg")
    assert out.format == "JPEG" and out.mode in ("L", "RGB") and out.size == (32, 16)


def test_transparency_becomes_white_in_a_jpeg(tmp_path: Path) -> None:
    image = Image.new("RGBA", (100, 100), (0, 0, 0, 0))  # transparent black
    image.paste((255, 0, 0, 255), (50, 0, 100, 100))
    image.save(tmp_path / "logo.png")
    resize_image.fn(str(tmp_path / "logo.png"), str(tmp_path / "logo.jpg"), 50, 50)
    out = opened(tmp_path / "logo.jpg")
    assert out.mode == "RGB"
    assert close_to(out.getpixel((5, 25)), WHITE) and close_to(out.getpixel((45, 25)), RED)


def test_an_existing_output_is_replaced(tmp_path: Path) -> None:
    source = bands(tmp_path / "source.png")
    dest = tmp_path / "thumb.png"
    dest.write_bytes(b"old")
    make_thumbnail.fn(str(source), str(dest), 50)
    assert opened(dest).size == (50, 25)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["source.png", "thumb.png"]


def test_one_line_is_logged_per_image(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    source = bands(tmp_path / "wide.png")
    with caplog.at_level(logging.INFO, logger="jobkit.images"):
        make_thumbnail.fn(str(source), str(tmp_path / "t.webp"), 100)
    (record,) = [r for r in caplog.records if r.name == "jobkit.images"]
    assert record.levelno == logging.INFO
    message = record.getMessage()
    assert f"{source} (800x400) -> {tmp_path / 't.webp'} (100x50 WEBP" in message


def test_a_missing_or_empty_source_is_not_ready(tmp_path: Path) -> None:
    with pytest.raises(ImageNotReady, match="no such file"):
        make_thumbnail.fn(str(tmp_path / "later.png"), str(tmp_path / "t.png"))
    (tmp_path / "empty.png").touch()
    with pytest.raises(ImageNotReady, match="empty file"):
        make_thumbnail.fn(str(tmp_path / "empty.png"), str(tmp_path / "t.png"))


def not_an_image(tmp_path: Path) -> Path:
    path = tmp_path / "notes.png"
    path.write_text("these are notes, not pixels\n" * 10)
    return path


def truncated(tmp_path: Path, fmt: str) -> Path:
    whole = bands(tmp_path / f"whole.{fmt}", 300, 300)
    path = tmp_path / f"truncated.{fmt}"
    path.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    return path


def test_invalid_images_are_rejected_with_the_reason(tmp_path: Path) -> None:
    dest = str(tmp_path / "t.png")
    cases = [
        (not_an_image(tmp_path), "notes.png: not an image"),
        (truncated(tmp_path, "png"), "truncated.png: corrupt or truncated PNG image"),
        (truncated(tmp_path, "jpg"), "truncated.jpg: corrupt or truncated JPEG image"),
        (tmp_path, "is a directory"),
    ]
    for source, error in cases:
        with pytest.raises(ImageRejected, match=error):
            make_thumbnail.fn(str(source), dest)
    assert not Path(dest).exists()
    assert [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_limits_come_from_the_environment_at_call_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = bands(tmp_path / "wide.png", 400, 300)
    dest = str(tmp_path / "t.png")
    monkeypatch.setenv("JOBKIT_IMAGE_MAX_PIXELS", "100_000")
    with pytest.raises(ImageRejected) as pixels:
        make_thumbnail.fn(str(source), dest)
    assert str(pixels.value) == (
        f"{source}: 400x300 = 120,000 pixels, over the 100,000 limit (JOBKIT_IMAGE_MAX_PIXELS)"
    )
    monkeypatch.delenv("JOBKIT_IMAGE_MAX_PIXELS")
    size = source.stat().st_size
    monkeypatch.setenv("JOBKIT_IMAGE_MAX_BYTES", str(size - 1))
    with pytest.raises(ImageRejected) as too_big:
        make_thumbnail.fn(str(source), dest)
    assert str(too_big.value) == (
        f"{source}: {size:,} bytes, over the {size - 1:,} limit (JOBKIT_IMAGE_MAX_BYTES)"
    )
    monkeypatch.setenv("JOBKIT_IMAGE_MAX_BYTES", str(size))
    make_thumbnail.fn(str(source), dest)
    assert Path(dest).exists()


def test_a_bad_limit_setting_is_an_error_not_a_rejection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JOBKIT_IMAGE_MAX_BYTES", "50MB")
    with pytest.raises(ValueError, match="JOBKIT_IMAGE_MAX_BYTES='50MB': must be a positive"):
        make_thumbnail.fn(str(bands(tmp_path / "a.png")), str(tmp_path / "t.png"))


def test_pillows_decompression_bomb_limit_is_a_rejection_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = bands(tmp_path / "wide.png", 400, 300)  # 120,000 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100_000)
    with (
        pytest.warns(Image.DecompressionBombWarning),  # Pillow only warns at open
        pytest.raises(ImageRejected, match=r"over the 100,000 limit \(PIL.Image.MAX_IMAGE_"),
    ):
        make_thumbnail.fn(str(source), str(tmp_path / "t.png"))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50_000)  # Pillow refuses at open
    with pytest.raises(ImageRejected, match="wide.png: unreadable image header: Image size"):
        make_thumbnail.fn(str(source), str(tmp_path / "t.png"))


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"max_size": 0}, "max_size must be a whole number from 1 to 10,000, got 0"),
        ({"max_size": -5}, "got -5"),
        ({"max_size": 100_000}, "got 100000"),
        ({"max_size": "256"}, "got '256'"),
        ({"max_size": True}, "got True"),
        ({"dest": "thumb.bmp"}, r"thumb.bmp: unknown output format '.bmp'; use one of .jpg"),
        ({"dest": "thumb"}, r"unknown output format '\(no suffix\)'"),
        ({"source": ""}, "source must be a file path"),
    ],
)
def test_bad_thumbnail_arguments_are_rejected(kwargs: dict[str, Any], error: str) -> None:
    arguments = {"source": "/nowhere/in.png", "dest": "/nowhere/out.png", **kwargs}
    with pytest.raises(ImageRejected, match=error):  # before looking for the source
        make_thumbnail.fn(**arguments)


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ((0, 100, "contain"), "width must be a whole number"),
        ((100, 20_000, "contain"), "height must be a whole number from 1 to 10,000"),
        ((100, 100, "stretch"), "fit must be one of contain, cover, exact, got 'stretch'"),
        ((10_000, 10_000, "exact"), "output 10000x10000 = 100,000,000 pixels, over the 50,000"),
    ],
)
def test_bad_resize_arguments_are_rejected(args: tuple[Any, ...], error: str) -> None:
    with pytest.raises(ImageRejected, match=error):
        resize_image.fn("/nowhere/in.png", "/nowhere/out.png", *args)


# Through a broker and an in-process worker.


def declare(broker: Broker, shipped: dramatiq.Actor, calls: list[str] | None = None) -> Any:
    """The shipped actor, on the test broker, with test-sized backoff; counting its runs."""

    def run(*args: Any, **kwargs: Any) -> None:
        if calls is not None:
            calls.append(args[0])
        shipped.fn(*args, **kwargs)

    return redeclare(shipped, broker, run, min_backoff=50, max_backoff=200)


def test_both_jobs_write_their_images(system_broker: Broker, tmp_path: Path) -> None:
    thumbnail = declare(system_broker, make_thumbnail)
    resize = declare(system_broker, resize_image)
    source = bands(tmp_path / "photo.jpg")
    thumb, card = tmp_path / "thumbs" / "photo.webp", tmp_path / "cards" / "photo.jpg"
    thumbnail.send(str(source), str(thumb), max_size=128)
    resize.send(str(source), str(card), 300, 200, fit="cover")
    with worker(system_broker, threads=2, queues={QUEUE}):
        assert wait_until(lambda: thumb.exists() and card.exists(), 30)
    assert opened(thumb).size == (128, 64) and opened(thumb).format == "WEBP"
    assert opened(card).size == (300, 200) and opened(card).format == "JPEG"
    assert dead_letter_store(system_broker).count() == 0


def test_a_late_source_is_retried_then_written(system_broker: Broker, tmp_path: Path) -> None:
    calls: list[str] = []
    actor = declare(system_broker, make_thumbnail, calls)
    source, dest = tmp_path / "upload.png", tmp_path / "thumb.png"
    actor.send(str(source), str(dest), 64)
    with worker(system_broker, threads=1, queues={QUEUE}):
        assert wait_until(lambda: len(calls) >= 1, 30)  # the first attempt found no file
        assert not dest.exists()
        # Uploaded the safe way (written aside, then renamed): never seen half-written.
        bands(tmp_path / "upload.partial.png").rename(source)
        assert wait_until(dest.exists, 30)
    assert len(calls) >= 2 and opened(dest).size == (64, 32)
    assert dead_letter_store(system_broker).count() == 0


def test_rejected_images_are_dead_lettered_at_once(
    system_broker: Broker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    thumbnail = declare(system_broker, make_thumbnail, calls)
    resize = declare(system_broker, resize_image, calls)
    # The worker runs in this process, so it reads the limits set here.
    monkeypatch.setenv("JOBKIT_IMAGE_MAX_PIXELS", "1_000_000")
    monkeypatch.setenv("JOBKIT_IMAGE_MAX_BYTES", "100_000")
    huge = tmp_path / "huge.png"
    Image.new("L", (1200, 1000)).save(huge)  # 1,200,000 pixels in a few KB
    heavy = tmp_path / "heavy.bmp"
    Image.new("RGB", (200, 200)).save(heavy)  # 120,054 bytes uncompressed
    out = str(tmp_path / "out.png")
    pixels = "huge.png: 1200x1000 = 1,200,000 pixels, over the 1,000,000 limit"
    cases = [
        (thumbnail.send(str(not_an_image(tmp_path)), out), "notes.png: not an image"),
        (thumbnail.send(str(truncated(tmp_path, "png")), out), "truncated.png: corrupt or trunc"),
        (thumbnail.send(str(truncated(tmp_path, "jpg")), out), "truncated.jpg: corrupt or trunc"),
        (thumbnail.send(str(huge), out), f"{pixels} (JOBKIT_IMAGE_MAX_PIXELS)"),
        (thumbnail.send(str(heavy), out), "heavy.bmp: 120,054 bytes, over the 100,000 limit"),
        (thumbnail.send(str(huge), out, max_size=0), "max_size must be a whole number"),
        (resize.send(str(huge), out, 10, 10, fit="fill"), "fit must be one of contain, cover"),
        (thumbnail.send(str(huge), str(tmp_path / "out.tiff")), "unknown output format '.tiff'"),
    ]
    store = dead_letter_store(system_broker)
    with worker(system_broker, threads=2, queues={QUEUE}):
        assert wait_until(lambda: store.count() == len(cases), 60)
    assert len(calls) == len(cases)  # one attempt each: never retried
    for message, error in cases:
        record = store.get(message.message_id)
        assert record["reason"] == "non_retryable" and record["attempts"] == 1
        assert record["exc_type"] == "ImageRejected"
        assert error in record["exc_message"]
    assert not Path(out).exists()
