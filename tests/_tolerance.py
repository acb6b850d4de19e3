"""Float comparisons whose tolerance scales with the size of what is compared.

An absolute tolerance means nothing without the size of the numbers: 1e-5 is loose for values
near 1e-3 and at float32 rounding for values near 100, and the size of what tiny random models
produce changes whenever their initialisation does. Here the bound is ``rel`` times a scale, by
default the reference's largest magnitude, and a failure reports the relative error it found.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _as_array(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor, on any device, in any float dtype
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def rel_error(actual: Any, expected: Any, scale: float | None = None) -> float:
    """max |actual - expected| / scale, scale = max |expected| unless given."""
    a, e = _as_array(actual), _as_array(expected)
    if a.shape != e.shape:
        raise AssertionError(f"shapes differ: {a.shape} vs expected {e.shape}")
    scale = float(np.abs(e).max(initial=0.0)) if scale is None else float(scale)
    if not (np.isfinite(scale) and scale > 0):
        raise ValueError(
            f"scale {scale}: the reference is 0 (or not finite); pass scale=, the size of the "
            "terms the compared values are made of"
        )
    return float(np.abs(a - e).max(initial=0.0)) / scale


def assert_close_rel(
    actual: Any, expected: Any, *, rel: float, scale: float | None = None, what: str = "values"
) -> None:
    """Assert max |actual - expected| <= rel * scale; scale defaults to max |expected|.

    Give ``scale`` when the reference is itself ~0 by construction (a gradient that cancels,
    a mean of centred values): the size of the terms it is summed from sets its rounding, not
    its own value. ``rel`` must stay below 1e-2 so that a 1% change still fails. NaN fails.
    """
    if not 0 < rel < 1e-2:
        raise ValueError(f"rel={rel}: must be in (0, 1e-2) to catch a 1% error")
    err = rel_error(actual, expected, scale)
    if not err <= rel:  # written so that NaN fails
        raise AssertionError(f"{what}: relative error {err:.3e} > {rel:.1e}")
