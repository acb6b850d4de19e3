"""Image transforms that travel as a recipe and are built in the process that applies them.

A training run's transforms ride inside its Ray Data streams, and every process that unpickles a
stream imports what the transform's classes live in: Ray Train's controller and dataset manager
as well as the decoding tasks. open_clip's transforms pull in open_clip, torchvision, timm and
transformers (about 2 s of CPU per process), though only the decoding tasks ever apply them. A
:class:`DeferredTransform` pickles as the factory's import path and its arguments: unpickling it
imports nothing, and the first call in a process builds the transform there (once per process).
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any


@functools.cache
def _build(factory: str, args: tuple[Hashable, ...]) -> tuple[Any, Any]:
    module, _, name = factory.partition(":")
    return getattr(importlib.import_module(module), name)(*args)


@dataclass(frozen=True)
class DeferredTransform:
    """Element ``which`` (0 train, 1 eval) of ``factory(*args)``, built on first use."""

    factory: str  # "package.module:function", returning (train transform, eval transform)
    args: tuple[Hashable, ...]
    which: int

    def built(self) -> Callable[[Any], Any]:
        return _build(self.factory, self.args)[self.which]

    def __call__(self, image: Any) -> Any:
        return self.built()(image)


def deferred_transforms(
    factory: Callable[..., tuple[Any, Any]], *args: Hashable
) -> tuple[DeferredTransform, DeferredTransform]:
    """(train, eval) transforms of ``factory(*args)``, deferred.

    They are built once here too, so a bad setting (an unknown model, a too-small image size)
    fails on the driver before any worker starts; ``factory`` must be a module-level function.
    """
    path = f"{factory.__module__}:{factory.__qualname__}"
    if "." in factory.__qualname__ or "<" in factory.__qualname__:
        raise ValueError(f"{path}: a deferred transform needs a module-level factory")
    _build(path, args)
    return DeferredTransform(path, args, 0), DeferredTransform(path, args, 1)
