"""Loading dataclass configs: defaults, a YAML file, section presets and dotted overrides.

The machinery here knows no job. ``load_config`` merges, in order: the dataclass defaults, a YAML
file, and ``a.b=value`` overrides; then it checks every key, type and value so a bad setting stops
the job before any work, with one line naming the key and what is allowed.

A dataclass-typed field ``F`` given a name instead of a mapping (``captioner=minigpt4_tiny`` on the
command line, ``captioner: minigpt4_tiny`` in YAML) starts from the section preset
``<preset_root>/F/<name>.yaml``; later dotted overrides (``captioner.batch_size=4``) refine it.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import re
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

T = TypeVar("T")

#: Marks a section given by preset name; the other keys beside it refine the preset.
PRESET_KEY = "_preset"
#: The package whose ``configs`` folder holds the section presets when no root is passed.
PRESET_PACKAGE = "ray_jobs"


class ConfigError(ValueError):
    """A configuration problem; the message names the offending key."""


def at(section: str, name: str) -> str:
    """The full key of ``name`` in ``section`` (top level: ``section`` is "" or "config")."""
    return name if section in ("", "config") else f"{section}.{name}"


def check(condition: bool, key: str, message: str) -> None:
    """Raise ``ConfigError('key: message')`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(f"{key}: {message}")


# --------------------------------------------------------------------------------------------
# YAML with YAML 1.2 floats
# --------------------------------------------------------------------------------------------


class ConfigYAMLLoader(yaml.SafeLoader):
    """PyYAML's safe loader that also reads YAML 1.2 floats (``1e-5``, ``1E+3``, ``-.5``).

    PyYAML follows YAML 1.1, where a float needs a dot and a signed exponent, so ``1e-5`` would
    arrive as the text "1e-5". Everything else (ints, bools, nulls, dates) is left as it was.
    """


# Appended after PyYAML's own resolvers, so it only sees what no int, float or other tag matched.
ConfigYAMLLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:
            [-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+
           |[-+]?\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?
        )$""",
        re.X,
    ),
    list("-+0123456789."),
)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML error on one line: where, then what."""
    problem = getattr(exc, "problem", None) or str(exc)
    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return where + " ".join(str(problem).split())


def load_yaml(text: str) -> Any:
    """Parse YAML text as the configs read it (safe, with YAML 1.2 floats)."""
    return yaml.load(text, Loader=ConfigYAMLLoader)  # a SafeLoader: no arbitrary objects


def _load_yaml_file(path: Path, key: str) -> dict[str, Any]:
    try:
        loaded = load_yaml(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{key}: {path} is not valid YAML ({_yaml_problem(exc)})") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{key}: {path}: expected a mapping at the top level")
    return loaded


# --------------------------------------------------------------------------------------------
# Section presets
# --------------------------------------------------------------------------------------------


def default_preset_root() -> Path | None:
    """The ``configs`` folder of the installed ``ray_jobs`` package, found without importing it.

    ``core`` does not import ``ray_jobs``; the folder is located by the package's path only.
    """
    try:
        spec = importlib.util.find_spec(PRESET_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "configs"


def available_presets(root: Path | None, section: str) -> list[str]:
    """Names of the section presets for the field ``section``: ``<root>/<section>/*.yaml``."""
    folder = root / section if root is not None else None
    if folder is None or not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.glob("*.yaml") if p.is_file())


class _Presets:
    """Finds section presets under one root, resolving the default root only when needed."""

    def __init__(self, root: str | Path | None) -> None:
        self._root = Path(root) if root is not None else None
        self._resolved = root is not None

    @property
    def root(self) -> Path | None:
        if not self._resolved:
            self._root, self._resolved = default_preset_root(), True
        return self._root

    def load(self, section: str, name: Any, key: str) -> dict[str, Any]:
        names = available_presets(self.root, section)
        if name not in names:
            where = self.root if self.root is not None else f"the {PRESET_PACKAGE} package"
            allowed = ", ".join(names) if names else f"none (no {section}/*.yaml in {where})"
            raise ConfigError(f"{key}: unknown preset {name!r}; allowed: {allowed}")
        return _load_yaml_file(self.root / section / f"{name}.yaml", key)


# --------------------------------------------------------------------------------------------
# Overrides and merging
# --------------------------------------------------------------------------------------------


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """Turn ``["a.b=1", "c=[x, y]"]`` into a nested dict; values are parsed as YAML scalars."""
    tree: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(
                f"override {item!r}: expected key=value, e.g. captioner.batch_size=16"
            )
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"override {item!r}: empty key")
        try:
            value = load_yaml(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"{key}: cannot parse value {raw!r} ({_yaml_problem(exc)})") from None
        node = tree
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if isinstance(child, str):  # a section preset, refined by this override
                child = node[part] = {PRESET_KEY: child}
            if not isinstance(child, dict):
                raise ConfigError(f"{key}: conflicts with an earlier override of {part}")
            node = child
        if isinstance(value, str) and isinstance(node.get(parts[-1]), dict):
            value = {PRESET_KEY: value}  # "section=preset" after "section.x=..." resets it
        node[parts[-1]] = value
    return tree


def _is_preset(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, dict) and PRESET_KEY in value)


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``update`` laid over it, mapping by mapping.

    A preset name in ``update`` replaces the whole section; a mapping laid over a preset name
    refines that preset rather than dropping it.
    """
    out = dict(base)
    for key, value in update.items():
        current = out.get(key)
        if _is_preset(value) or not isinstance(value, dict):
            out[key] = value
        elif isinstance(current, dict):
            out[key] = merge(current, value)
        elif isinstance(current, str):
            out[key] = merge({PRESET_KEY: current}, value)
        else:
            out[key] = value
    return out


# --------------------------------------------------------------------------------------------
# Typed building and validation
# --------------------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return "a mapping"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str, section: str, presets: _Presets) -> Any:
    """Check ``value`` against the annotation ``tp``; return it (ints widen to float).

    ``section``: the field's own name, which names its preset folder.
    """
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, str):
            value = {PRESET_KEY: value}
        if isinstance(value, dict) and PRESET_KEY in value:
            rest = {k: v for k, v in value.items() if k != PRESET_KEY}
            value = merge(presets.load(section, value[PRESET_KEY], key), rest)
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of settings, got {value!r}")
        return build(tp, value, key, presets)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{key}: got {value!r}, allowed: {_type_name(tp)}")
        return value
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _coerce(value, arg, key, section, presets)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: got {value!r}, expected {_type_name(tp)}")
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: got {value!r}, expected {_type_name(tp)}")
        (item_tp,) = typing.get_args(tp)
        return [_coerce(v, item_tp, f"{key}[{i}]", section, presets) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: got {value!r}, expected a mapping")
        _, value_tp = typing.get_args(tp)
        return {
            str(k): _coerce(v, value_tp, f"{key}.{k}", section, presets) for k, v in value.items()
        }
    if tp is Any:
        return value
    if tp is type(None):
        if value is not None:
            raise ConfigError(f"{key}: got {value!r}, expected null")
        return None
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: got {value!r}, expected true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: got {value!r}, expected an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: got {value!r}, expected a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: got {value!r}, expected a string")
        return value
    raise ConfigError(f"{key}: unsupported config type {tp!r}")


def build(
    cls: type[T], values: dict[str, Any], prefix: str = "", presets: _Presets | None = None
) -> T:
    """Instantiate ``cls`` from a nested dict, checking every key and type (not values)."""
    presets = presets if presets is not None else _Presets(None)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            allowed = ", ".join(sorted(fields))
            raise ConfigError(f"{full}: unknown key; allowed here: {allowed}")
        kwargs[key] = _coerce(value, hints[key], full, key, presets)
    # Nested sections that were not mentioned still get built from their defaults.
    return cls(**kwargs)


def validate(obj: Any, prefix: str = "") -> None:
    """Run every section's ``validate(key)``, innermost first, so errors name the deepest key."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            validate(value, f"{prefix}.{f.name}" if prefix else f.name)
    own = getattr(obj, "validate", None)
    if callable(own):
        own(prefix or "config")


def config_from_dict(
    cls: type[T],
    values: dict[str, Any],
    preset_root: str | Path | None = None,
    key: str = "",
) -> T:
    """Build and validate ``cls`` from a plain nested dict (e.g. a Ray Train worker's config).

    ``preset_root``: where section presets live; None → :func:`default_preset_root`.
    ``key``: where ``values`` sit in a larger config, so errors name the full key.
    """
    obj = build(cls, values, key, _Presets(preset_root))
    validate(obj, key)
    return obj


def load_config(
    cls: type[T],
    path: str | Path | None = None,
    overrides: Sequence[str] = (),
    preset_root: str | Path | None = None,
) -> T:
    """Defaults, then the YAML file at ``path``, then dotted ``overrides``; validated.

    ``preset_root``: where section presets live; None → :func:`default_preset_root`.
    """
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"--config: no such file {path}")
        values = _load_yaml_file(path, "--config")
    values = merge(values, parse_overrides(overrides))
    return config_from_dict(cls, values, preset_root)


def to_dict(config: Any) -> dict[str, Any]:
    """The plain-dict form of a config (for YAML dumps and Ray worker configs)."""
    return dataclasses.asdict(config)
