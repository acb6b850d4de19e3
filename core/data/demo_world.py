"""The demo's compositional world: a pretraining pool of described images, and a classification
set whose classes are attributes those descriptions state.

Every image shows one shape drawn with six attributes (shape, colour, size, position, background,
grain), and its description says all of them ("a small red star in the top left on a beige
background, grainy"). Two sets are drawn from disjoint random streams:

- the **pretraining pool** (``<root>/pool``): every attribute varies freely; ``description`` is
  the text a small CLIP is pretrained to match (``python -m ray_jobs.pretrain_clip``); splits
  ``train`` and ``val`` (held-out pairs for retrieval accuracy).
- the **classification set** (``<root>/classes``): eight classes, each a (size, colour) pair:
  ``small_red`` ... ``large_yellow``. Shape, position, background and grain vary inside a class.
  Its descriptions state the class's attributes among the others, so the mean of a class's
  description embeddings (the paper's C_c) says something true about the class once the text
  tower has been pretrained on the pool.

Why these classes: they are what contrastive pretraining on this pool learns to align (the pool's
descriptions are told apart mostly by colour, size, position and background; shape, one word
among many, is not needed to match them and a 32-pixel tiny CLIP barely learns it). The choice was
fixed before any training on the set was run.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa
from PIL import Image, ImageDraw

from core import storage
from core.data.demo import (
    BACKGROUNDS,
    CLASSES,
    COLOURS,
    draw_shape,
    place_words,
    write_class_set,
    write_png,
)
from core.data.manifest import write_manifest

SHAPES = CLASSES
CLASS_COLOURS = ("red", "green", "blue", "yellow")
CLASS_SIZES = ("small", "large")
#: Radius as a fraction of the image side, per size word (medium only in the pool).
SIZE_RANGES = {"small": (0.14, 0.20), "medium-sized": (0.22, 0.28), "large": (0.30, 0.36)}


def world_classes() -> list[str]:
    """The classification set's class names, ``<size>_<colour>``."""
    return [f"{size}_{colour}" for size in CLASS_SIZES for colour in CLASS_COLOURS]


def draw_described(
    rng: np.random.Generator,
    size: int,
    *,
    shape: str | None = None,
    colour: str | None = None,
    size_word: str | None = None,
) -> tuple[Image.Image, str, str]:
    """One image with the given attributes (the rest drawn from ``rng``), its description and
    its shape."""
    shape = shape or SHAPES[rng.integers(len(SHAPES))]
    colour = colour or list(COLOURS)[rng.integers(len(COLOURS))]
    size_word = size_word or list(SIZE_RANGES)[rng.integers(len(SIZE_RANGES))]
    backgrounds = [
        b for b in BACKGROUNDS if np.abs(np.subtract(COLOURS[colour], BACKGROUNDS[b])).sum() > 150
    ]
    background = backgrounds[rng.integers(len(backgrounds))]
    low, high = SIZE_RANGES[size_word]
    r = float(rng.uniform(low, high) * size)
    cx, cy = (float(rng.uniform(r, size - r)) for _ in range(2))
    image = Image.new("RGB", (size, size), BACKGROUNDS[background])
    draw_shape(ImageDraw.Draw(image), shape, cx, cy, r, COLOURS[colour])
    grainy = bool(rng.random() < 0.5)
    pixels = np.asarray(image, dtype=np.float32)
    pixels += rng.normal(0, 18.0 if grainy else 4.0, pixels.shape)
    place = place_words(cx, cy, size)
    text = f"a {size_word} {colour} {shape} {place} on a {background} background"
    if grainy:
        text += ", grainy"
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)), text, shape


def generate_pool(
    root: str, pairs: int = 2048, val_pairs: int = 256, image_size: int = 64, seed: int = 0
) -> str:
    """The pretraining pool: ``pairs`` training and ``val_pairs`` held-out image–description
    pairs under ``root`` (``images/pool/NNNNN.png`` + ``manifest.parquet``, whose ``label`` is
    the shape drawn); returns the manifest. The same arguments give byte-identical images."""
    rng = np.random.default_rng([seed, 1_000_003])
    rows: dict[str, list] = {"id": [], "path": [], "label": [], "split": [], "description": []}
    for k in range(pairs + val_pairs):
        image, text, shape = draw_described(rng, image_size)
        rel = f"pool/{k:05d}.png"
        rows["id"].append(rel)
        rows["path"].append(write_png(image, root, rel))
        rows["label"].append(shape)
        rows["split"].append("train" if k < pairs else "val")
        rows["description"].append(text)
    return write_manifest(pa.table(rows), storage.join(root, "manifest.parquet"))


def generate_classes(
    root: str,
    images_per_class: int = 40,
    image_size: int = 64,
    seed: int = 0,
    split_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
) -> str:
    """The classification set: ``images_per_class`` images of each (size, colour) class under
    ``root`` (``images/<class>/<class>_NNNN.png`` + ``manifest.parquet`` with ``label``, ``split``
    and ``description``); returns the manifest. Disjoint from the pool's random stream."""

    def draw(index: int, name: str) -> Iterator[tuple[Image.Image, str]]:
        size_word, colour = name.split("_")
        rng = np.random.default_rng([seed, 2_000_003, index])
        while True:
            image, text, _ = draw_described(rng, image_size, colour=colour, size_word=size_word)
            yield image, text

    return write_class_set(root, world_classes(), images_per_class, draw, split_fractions)
