"""Every training method by name: the one place the training jobs, Tune, prediction and the demo
look a method up. A new method is one module with a ``METHOD`` object plus one line here."""

from __future__ import annotations

import functools
import importlib

from core.train.method import Method

#: Method name → the module that defines ``METHOD`` (imported on first use only, so a process
#: loads only the model stack of the methods it runs).
METHODS: dict[str, str] = {
    "regularized": "core.train.methods.regularized",
    "clip_decoder": "core.train.methods.clip_decoder",
    "linear_probe": "core.train.methods.linear_probe",
    "pretrain_clip": "core.train.methods.pretrain_clip",
}


@functools.cache
def get_method(name: str) -> Method:
    """The registered method ``name``; an unknown name is an error listing the known ones."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; registered: {', '.join(sorted(METHODS))}")
    method = importlib.import_module(METHODS[name]).METHOD
    if method.name != name:
        raise ValueError(f"{METHODS[name]} defines method {method.name!r}, registered as {name!r}")
    return method


def method_names() -> list[str]:
    return sorted(METHODS)
