"""Sample inputs the demo generates: photos, a broken image, and a table of orders."""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

COUNTRIES = ("DE", "FR", "GB", "IT", "NL", "PL", "SE", "US")


@dataclass(frozen=True)
class Samples:
    images: list[Path]
    broken_image: Path
    orders: Path
    order_rows: int


def make_samples(directory: Path, *, images: int = 6, orders: int = 50_000) -> Samples:
    """Write the inputs under ``directory``; the same every run (seeded)."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(42)
    paths = [_photo(directory / f"photo-{index + 1}.jpg", rng) for index in range(images)]
    broken = directory / "broken.jpg"
    # A JPEG header followed by garbage: what a failed upload looks like.
    broken.write_bytes(
        b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(rng.randrange(256) for _ in range(512))
    )
    orders_path = directory / "orders.csv"
    with orders_path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(["order_id", "country", "amount"])
        for order in range(orders):
            writer.writerow([order + 1, rng.choice(COUNTRIES), f"{rng.uniform(5, 500):.2f}"])
    return Samples(images=paths, broken_image=broken, orders=orders_path, order_rows=orders)


def _photo(path: Path, rng: random.Random) -> Path:
    """A 1600x1200 picture: a sky gradient, a sun and some hills."""
    width, height = 1600, 1200
    image = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    tint = Image.new("RGB", (width, height), (rng.randrange(40, 120), rng.randrange(90, 160), 230))
    image = Image.blend(image, tint, 0.6)
    draw = ImageDraw.Draw(image)
    x, y, r = rng.randrange(200, 1400), rng.randrange(150, 450), rng.randrange(60, 140)
    draw.ellipse((x - r, y - r, x + r, y + r), fill=(255, 214, 90))
    for _ in range(3):
        base = rng.randrange(700, 1000)
        peak = rng.randrange(0, width)
        green = (rng.randrange(30, 90), rng.randrange(110, 170), rng.randrange(40, 90))
        draw.polygon([(peak - 900, height), (peak, base - 300), (peak + 900, height)], fill=green)
    image.save(path, quality=85)
    return path
