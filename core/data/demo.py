"""A deterministic, procedurally drawn image-classification set: the embedded default's data.

Eight shape classes; within a class the images differ in colour, size, position, background and
noise, so the classifier has to learn the shape. Every image carries a short reference description
of what is drawn, which stands in for an LMM's description when no LMM is run.
"""

from __future__ import annotations

import io
import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from PIL import Image, ImageDraw

from core import storage
from core.data.manifest import assign_split, write_manifest

CLASSES = ("circle", "square", "triangle", "diamond", "star", "cross", "ring", "hexagon")
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 210, 40),
    "purple": (140, 60, 180),
    "orange": (240, 140, 30),
    "black": (20, 20, 20),
    "white": (245, 245, 245),
}
BACKGROUNDS = {
    "light grey": (200, 200, 200),
    "dark grey": (70, 70, 70),
    "pale blue": (190, 215, 240),
    "pale green": (200, 235, 200),
    "beige": (235, 225, 200),
    "navy": (30, 40, 90),
}


@dataclass(frozen=True)
class DemoSample:
    shape: str
    colour: str
    background: str
    size_word: str
    place: str
    grainy: bool
    description: str


def polygon(cx: float, cy: float, r: float, sides: int, rotation: float) -> list[tuple]:
    return [
        (
            cx + r * math.cos(rotation + 2 * math.pi * k / sides),
            cy + r * math.sin(rotation + 2 * math.pi * k / sides),
        )
        for k in range(sides)
    ]


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill) -> None:
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle((cx - r * 0.8, cy - r * 0.8, cx + r * 0.8, cy + r * 0.8), fill=fill)
    elif shape == "triangle":
        draw.polygon(polygon(cx, cy, r, 3, -math.pi / 2), fill=fill)
    elif shape == "diamond":
        draw.polygon(polygon(cx, cy, r, 4, 0.0), fill=fill)
    elif shape == "hexagon":
        draw.polygon(polygon(cx, cy, r, 6, 0.0), fill=fill)
    elif shape == "star":
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else r * 0.45
            ang = -math.pi / 2 + math.pi * k / 5
            pts.append((cx + rad * math.cos(ang), cy + rad * math.sin(ang)))
        draw.polygon(pts, fill=fill)
    elif shape == "cross":
        w = r * 0.35
        draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=fill)
        draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=fill)
    elif shape == "ring":
        draw.ellipse(box, outline=fill, width=max(2, int(r * 0.35)))
    else:  # pragma: no cover - CLASSES is closed
        raise ValueError(f"unknown shape {shape!r}")


def place_words(cx: float, cy: float, size: int) -> str:
    vert = "top" if cy < size / 3 else "bottom" if cy > 2 * size / 3 else "middle"
    horiz = "left" if cx < size / 3 else "right" if cx > 2 * size / 3 else "centre"
    if vert == "middle" and horiz == "centre":
        return "in the centre"
    if vert == "middle":
        return f"on the {horiz}"
    if horiz == "centre":
        return f"at the {vert}"
    return f"in the {vert} {horiz}"


def draw_sample(
    shape: str, rng: np.random.Generator, size: int = 64
) -> tuple[Image.Image, DemoSample]:
    """Draw one image of ``shape`` with random appearance; return it and its description."""
    bg_name = list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))]
    colours = [
        c for c in COLOURS if np.abs(np.subtract(COLOURS[c], BACKGROUNDS[bg_name])).sum() > 150
    ]
    colour = colours[rng.integers(len(colours))]
    r = float(rng.uniform(0.14, 0.36) * size)
    cx = float(rng.uniform(r, size - r))
    cy = float(rng.uniform(r, size - r))
    image = Image.new("RGB", (size, size), BACKGROUNDS[bg_name])
    draw_shape(ImageDraw.Draw(image), shape, cx, cy, r, COLOURS[colour])
    grainy = bool(rng.random() < 0.5)
    pixels = np.asarray(image, dtype=np.float32)
    noise_std = 18.0 if grainy else 4.0
    pixels = np.clip(pixels + rng.normal(0, noise_std, pixels.shape), 0, 255).astype(np.uint8)
    size_word = "small" if r < 0.21 * size else "large" if r > 0.29 * size else "medium-sized"
    place = place_words(cx, cy, size)
    text = f"a {size_word} {colour} {shape} {place} on a {bg_name} background"
    if grainy:
        text += ", grainy"
    sample = DemoSample(shape, colour, bg_name, size_word, place, grainy, text)
    return Image.fromarray(pixels), sample


def write_png(image: Image.Image, root: str, rel: str) -> str:
    """Save ``image`` as ``<root>/images/<rel>`` (local or a URI); returns the path."""
    path = storage.join(root, "images", rel)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    storage.write_bytes(path, buf.getvalue())
    return path


def write_class_set(
    root: str,
    classes: Sequence[str],
    images_per_class: int,
    draw: Callable[[int, str], Iterator[tuple[Image.Image, str]]],
    split_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
) -> str:
    """``root/images/<class>/<class>_NNNN.png`` and ``root/manifest.parquet`` (id, path, label,
    split by a hash of the id, description); returns the manifest. ``draw(index, class)`` yields
    the class's (image, description) pairs, from its own random stream."""
    rows: dict[str, list] = {"id": [], "path": [], "label": [], "split": [], "description": []}
    for index, name in enumerate(classes):
        for k, (image, text) in enumerate(itertools.islice(draw(index, name), images_per_class)):
            rel = f"{name}/{name}_{k:04d}.png"
            rows["id"].append(rel)
            rows["path"].append(write_png(image, root, rel))
            rows["label"].append(name)
            rows["split"].append(assign_split(rel, split_fractions))
            rows["description"].append(text)
    return write_manifest(pa.table(rows), storage.join(root, "manifest.parquet"))


def generate_demo_dataset(
    root: str,
    images_per_class: int = 40,
    image_size: int = 64,
    seed: int = 0,
    split_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
) -> str:
    """Write ``root/images/<class>/<class>_NNNN.png`` and ``root/manifest.parquet``; return it.

    The manifest has the usual columns plus ``description`` (the reference description). The same
    arguments always give byte-identical images.
    """

    def draw(index: int, shape: str) -> Iterator[tuple[Image.Image, str]]:
        rng = np.random.default_rng([seed, index])
        while True:
            image, sample = draw_sample(shape, rng, image_size)
            yield image, sample.description

    return write_class_set(root, CLASSES, images_per_class, draw, split_fractions)
