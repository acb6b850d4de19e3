"""Image decoding that turns any readable image into RGB and any unreadable one into a reason.

Large datasets always hold a few bad files. Decoding never raises past ``load_image``: a bad file
becomes an ``ImageLoadError`` message that the caller records as an error row, and the job goes on.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from core import storage

# We enforce our own pixel limit (with a clear message) instead of PIL's bomb warning/error.
Image.MAX_IMAGE_PIXELS = None


class ImageLoadError(ValueError):
    """An image that cannot be used; the message says why."""


def to_rgb(image: Image.Image) -> Image.Image:
    """Grayscale, palette, CMYK and 16-bit images become RGB; transparency is laid on white."""
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(image, dtype=np.float64)
        hi = arr.max() or 1.0
        return Image.fromarray((arr / hi * 255).astype(np.uint8)).convert("RGB")
    return image.convert("RGB")


def decode_image(data: bytes, max_pixels: int = 100_000_000, max_side: int = 1024) -> np.ndarray:
    """Decode bytes to an HxWx3 uint8 RGB array, shrinking the long side to ``max_side``.

    Raises ``ImageLoadError`` for empty, undecodable, truncated or over-``max_pixels`` images.
    """
    if not data:
        raise ImageLoadError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                pixels = width * height
                raise ImageLoadError(
                    f"too large: {width}x{height} = {pixels} pixels > max_pixels={max_pixels}"
                )
            if max(width, height) > max_side:
                # JPEG can decode straight at a reduced scale, which saves time and memory.
                image.draft("RGB", (max_side, max_side))
            image.load()
    except ImageLoadError:
        raise
    except UnidentifiedImageError:
        raise ImageLoadError("not a recognised image format") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombWarning) as exc:
        raise ImageLoadError(f"corrupt or truncated image ({exc})") from None
    image = to_rgb(image)
    if max(image.size) > max_side:
        image.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
    return np.asarray(image, dtype=np.uint8)


def load_image(path: str, max_pixels: int = 100_000_000, max_side: int = 1024) -> np.ndarray:
    """Read ``path`` (local or URI) and decode it; missing files raise ``ImageLoadError`` too."""
    try:
        data = storage.read_bytes(path)
    except FileNotFoundError:
        raise ImageLoadError("file not found") from None
    except OSError as exc:
        if "not found" in str(exc).lower() or "no such file" in str(exc).lower():
            raise ImageLoadError("file not found") from None
        raise ImageLoadError(f"cannot read file ({exc})") from None
    return decode_image(data, max_pixels=max_pixels, max_side=max_side)
