"""A deterministic multi-label demo set with seen and unseen labels: CLIP-Decoder's embedded data.

Twelve shape labels; each 64x64 image shows 1-3 different shapes (random colour, size, cell of a
2x2 grid) on a plain background, so labels co-occur like tags in a photo. Three labels are held
out as unseen; every split has images showing them (the zero-shot test needs positives, and the
training split having them checks that a trainer keeps unseen labels out of its loss).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from PIL import Image, ImageDraw

from core import storage
from core.data.demo import BACKGROUNDS, CLASSES, COLOURS, draw_shape, polygon, write_png
from core.data.manifest import SPLIT_NAMES, ManifestError, assign_split, write_manifest
from core.data.nus_wide import LABEL_SPLIT_FILE, LabelSplit, sibling_path

LABELS: tuple[str, ...] = (*CLASSES, "pentagon", "crescent", "arrow", "heart")
DEFAULT_UNSEEN: tuple[str, ...] = ("hexagon", "crescent", "heart")


@dataclass(frozen=True)
class MultiLabelDemo:
    """Where the demo was written and which labels are seen / unseen."""

    manifest: str
    labels_json: str
    seen: tuple[str, ...]
    unseen: tuple[str, ...]

    @property
    def label_split(self) -> LabelSplit:
        return LabelSplit(self.seen, self.unseen)


def _draw_any(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill) -> None:
    if shape == "pentagon":
        draw.polygon(polygon(cx, cy, r, 5, -math.pi / 2), fill=fill)
    elif shape == "crescent":
        # left half-disc minus a thinner half-ellipse: stays inside the shape's own box
        us = np.linspace(-1.0, 1.0, 24)
        outer = [(cx - r * math.sqrt(1 - u * u), cy + r * u) for u in us[::-1]]
        inner = [(cx - 0.35 * r * math.sqrt(1 - u * u), cy + r * u) for u in us]
        draw.polygon(outer + inner, fill=fill)
    elif shape == "arrow":
        w = r * 0.3
        draw.rectangle((cx - r, cy - w, cx + r * 0.1, cy + w), fill=fill)
        draw.polygon(
            [(cx + r * 0.1, cy - r * 0.7), (cx + r, cy), (cx + r * 0.1, cy + r * 0.7)], fill=fill
        )
    elif shape == "heart":
        lobe = r * 0.52
        draw.ellipse((cx - 2 * lobe, cy - r * 0.75, cx, cy - r * 0.75 + 2 * lobe), fill=fill)
        draw.ellipse((cx, cy - r * 0.75, cx + 2 * lobe, cy - r * 0.75 + 2 * lobe), fill=fill)
        draw.polygon(
            [(cx - 2 * lobe, cy - r * 0.2), (cx + 2 * lobe, cy - r * 0.2), (cx, cy + r)], fill=fill
        )
    else:
        draw_shape(draw, shape, cx, cy, r, fill)


def draw_multilabel_sample(
    rng: np.random.Generator, size: int = 64, max_objects: int = 3
) -> tuple[Image.Image, list[str], str]:
    """One image with 1..max_objects distinct shapes; returns it, its labels and a description."""
    count = int(rng.integers(1, max_objects + 1))
    shapes = [LABELS[i] for i in rng.choice(len(LABELS), size=count, replace=False)]
    cells = rng.choice(4, size=count, replace=False)
    bg_name = list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))]
    bg = BACKGROUNDS[bg_name]
    colours = [c for c in COLOURS if np.abs(np.subtract(COLOURS[c], bg)).sum() > 150]
    image = Image.new("RGB", (size, size), bg)
    draw = ImageDraw.Draw(image)
    half = size / 2
    parts = []
    for shape, cell in zip(shapes, cells, strict=True):
        colour = colours[rng.integers(len(colours))]
        r = float(rng.uniform(0.30, 0.45) * half)
        cx = (cell % 2) * half + float(rng.uniform(r, half - r))
        cy = (cell // 2) * half + float(rng.uniform(r, half - r))
        _draw_any(draw, shape, cx, cy, r, COLOURS[colour])
        parts.append(f"a {colour} {shape}")
    pixels = np.asarray(image, dtype=np.float32)
    pixels = np.clip(pixels + rng.normal(0, 6.0, pixels.shape), 0, 255).astype(np.uint8)
    description = ", ".join(parts[:-1]) + (" and " if count > 1 else "") + parts[-1]
    labels = sorted(shapes, key=LABELS.index)
    return Image.fromarray(pixels), labels, f"{description} on a {bg_name} background"


def generate_multilabel_demo(
    root: str,
    num_images: int = 300,
    image_size: int = 64,
    seed: int = 0,
    unseen: tuple[str, ...] = DEFAULT_UNSEEN,
    split_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
) -> MultiLabelDemo:
    """Write ``root/images/img_NNNN.png``, ``root/manifest.parquet`` and ``root/labels.json``.

    The manifest has id, path, labels (list of names), split and description; ``labels.json``
    holds the seen / unseen / all label lists. The same arguments give byte-identical files.
    Raises if some split ends up without an image of an unseen label (too few images).
    """
    unknown = sorted(set(unseen) - set(LABELS))
    if unknown or not unseen or len(set(unseen)) == len(LABELS):
        raise ValueError(
            f"unseen must be a non-empty proper subset of {', '.join(LABELS)}; got {unseen}"
        )
    split = LabelSplit(tuple(x for x in LABELS if x not in unseen), tuple(unseen))
    rows: dict[str, list] = {"id": [], "path": [], "labels": [], "split": [], "description": []}
    for k in range(num_images):
        rng = np.random.default_rng([seed, k])
        image, labels, description = draw_multilabel_sample(rng, image_size)
        rel = f"img_{k:04d}.png"
        path = write_png(image, root, rel)
        rows["id"].append(rel)
        rows["path"].append(path)
        rows["labels"].append(labels)
        rows["split"].append(assign_split(rel, split_fractions))
        rows["description"].append(description)
    unseen_set = set(split.unseen)
    for name, frac in zip(SPLIT_NAMES, split_fractions, strict=True):
        has = any(
            s == name and unseen_set & set(labels)
            for s, labels in zip(rows["split"], rows["labels"], strict=True)
        )
        if frac > 0 and not has:
            raise ManifestError(
                f"multi-label demo: split {name!r} has no image with an unseen label; "
                f"use more than num_images={num_images}"
            )
    table = pa.table(
        {
            "id": rows["id"],
            "path": rows["path"],
            "labels": pa.array(rows["labels"], type=pa.list_(pa.string())),
            "split": rows["split"],
            "description": rows["description"],
        }
    )
    manifest = write_manifest(table, storage.join(root, "manifest.parquet"))
    labels_json = split.save(sibling_path(manifest, LABEL_SPLIT_FILE))
    return MultiLabelDemo(manifest, labels_json, split.seen, split.unseen)
