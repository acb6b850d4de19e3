"""Deferred transforms: unpickling one imports nothing heavy, applying it equals the eager one."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from core.models.open_clip_models import build_transforms
from core.train.deferred_transform import deferred_transforms
from core.train.multilabel_data import backbone_transforms


def _image(seed: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(41, 57, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


@pytest.mark.parametrize(
    ("factory", "args"),
    [(build_transforms, ("tiny-vit", "")), (backbone_transforms, ("tresnet-tiny", 32))],
)
def test_applying_equals_the_eager_transforms_under_the_same_seed(factory, args) -> None:
    eager = factory(*args)
    deferred = [pickle.loads(pickle.dumps(t)) for t in deferred_transforms(factory, *args)]
    for which in (0, 1):  # train (random crop, drawn from the torch RNG), eval
        for seed in range(3):
            torch.manual_seed(seed)
            expected = eager[which](_image(seed))
            torch.manual_seed(seed)
            got = deferred[which](_image(seed))
            assert got.shape == expected.shape
            assert torch.equal(got, expected)


def _imported_by_unpickling(obj: object) -> list[str]:
    """The heavy packages a fresh interpreter imports to unpickle ``obj``."""
    code = (
        "import json, pickle, sys; pickle.loads(sys.stdin.buffer.read()); "
        "print(json.dumps([m for m in ('torch', 'open_clip', 'torchvision', 'timm', "
        "'transformers') if m in sys.modules]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], input=pickle.dumps(obj), capture_output=True, check=True
    )
    return json.loads(out.stdout)


def test_a_streams_batch_function_unpickles_without_torch_or_open_clip() -> None:
    """What Ray Train's controller and dataset manager do with a run's streams: only the
    decoding tasks that apply the transform import what it needs."""
    import pyarrow as pa

    from core.train.image_data import TransformImages

    train, _ = deferred_transforms(build_transforms, "tiny-vit", "")
    assert _imported_by_unpickling(train) == []
    rows = pa.table({"id": ["a"], "path": ["/nowhere/a.png"], "label": [0]})
    assert _imported_by_unpickling(TransformImages(rows, train, seed=0)) == []


def test_a_bad_setting_fails_where_the_transforms_are_planned() -> None:
    with pytest.raises(ValueError, match="no-such-model"):
        deferred_transforms(build_transforms, "no-such-model", "")
    with pytest.raises(ValueError, match="module-level"):
        deferred_transforms(lambda: (None, None))
