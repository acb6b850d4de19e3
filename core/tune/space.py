"""Search spaces over dotted training-config keys, written in YAML.

A space maps a dotted key of the target training config to one spec::

    alpha: {loguniform: [0.001, 1.0]}
    optim.head_lr: {uniform: [0.001, 0.01]}
    prompt: {choice: ["Describe the image.", "Give 10 semantic descriptions for the image."]}
    templates: {grid: [default, photo, scene]}

Every value a spec can produce is checked against the target config's types and validation
before any work starts, so a typo or an impossible range fails with one line naming
``space.<key>``. Tune's domain objects are built only when a sweep runs.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any

from core.config import ConfigError, config_from_dict

KINDS = ("loguniform", "uniform", "choice", "grid")
SPEC_HELP = "{loguniform: [low, high]}, {uniform: [low, high]}, {choice: [...]} or {grid: [...]}"

#: Settings a trial may not vary: the sweep sets them (storage, run names, trial resources,
#: the epoch budget the scheduler counts in) or they define the data every trial must share.
FIXED_KEYS = frozenset(
    {
        "storage",
        "name",
        "run.epochs",
        "run.num_workers",
        "run.use_gpu",
        "run.cpus_per_worker",
        "compare_baseline",
        "manifest",
        "class_means",
        "labels",
        "ray",
    }
)


@dataclass(frozen=True)
class ParamSpec:
    """One searched setting: its dotted key, the spec kind and its bounds or options."""

    key: str
    kind: str
    values: tuple[Any, ...]

    @property
    def candidates(self) -> tuple[Any, ...]:
        """Values to type-check: both ends of a range, or every option."""
        return self.values

    @property
    def is_range(self) -> bool:
        return self.kind in ("loguniform", "uniform")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def parse_spec(key: str, spec: Any) -> ParamSpec:
    """One ``{kind: values}`` mapping → :class:`ParamSpec`; errors name ``space.<key>``."""
    where = f"space.{key}"
    if isinstance(spec, dict) and len(spec) > 1 and set(spec) <= set(KINDS):
        raise ConfigError(
            f"{where}: one spec per setting, got {' and '.join(spec)} (a command-line override "
            "adds to the file's spec: give the file's kind to replace its values)"
        )
    if not isinstance(spec, dict) or len(spec) != 1:
        raise ConfigError(f"{where}: expected one of {SPEC_HELP}, got {spec!r}")
    ((kind, values),) = spec.items()
    if kind not in KINDS:
        raise ConfigError(f"{where}: unknown spec {kind!r}; use one of {', '.join(KINDS)}")
    if not isinstance(values, list | tuple):
        raise ConfigError(f"{where}: {kind} needs a list, got {values!r}")
    values = tuple(values)
    if kind in ("loguniform", "uniform"):
        if len(values) != 2 or not all(_is_number(v) for v in values):
            raise ConfigError(f"{where}: {kind} needs two numbers [low, high], got {list(values)}")
        low, high = (float(v) for v in values)
        if not low < high:
            raise ConfigError(f"{where}: {kind} needs low < high, got [{low:g}, {high:g}]")
        if kind == "loguniform" and low <= 0:
            raise ConfigError(f"{where}: loguniform needs 0 < low, got [{low:g}, {high:g}]")
        return ParamSpec(key, kind, (low, high))
    if not values:
        raise ConfigError(f"{where}: {kind} needs at least one value")
    if any(isinstance(v, dict | list) for v in values):
        raise ConfigError(f"{where}: {kind} values must be plain values, got {list(values)}")
    if len(set(map(repr, values))) != len(values):
        raise ConfigError(f"{where}: {kind} lists a value twice: {list(values)}")
    return ParamSpec(key, kind, values)


def _is_spec(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and next(iter(value)) in KINDS


def flatten_space(space: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested groups → dotted keys, so ``optim: {head_lr: {...}}`` and the command line's
    ``space.optim.head_lr=...`` mean the same as ``optim.head_lr: {...}``."""
    flat: dict[str, Any] = {}
    for key, value in space.items():
        full = f"{prefix}{key}"
        group = isinstance(value, dict) and value and not _is_spec(value)
        if group and all(isinstance(v, dict) for v in value.values()):
            flat.update(flatten_space(value, f"{full}."))
        else:
            flat[full] = value
    return flat


def parse_space(space: dict[str, Any]) -> list[ParamSpec]:
    """Every spec of a space, in file order; an empty space is an error."""
    if not space:
        raise ConfigError(
            "space: empty; give at least one setting to search, "
            "e.g. alpha: {loguniform: [0.001, 1.0]}"
        )
    return [parse_spec(key, spec) for key, spec in flatten_space(space).items()]


def _field_names(cls: type) -> list[str]:
    return sorted(f.name for f in dataclasses.fields(cls) if f.init)


def check_key(key: str, cls: type) -> None:
    """``key`` must name a leaf setting of ``cls`` that a trial may vary."""
    where = f"space.{key}"
    parts = key.split(".")
    if any(".".join(parts[:n]) in FIXED_KEYS for n in range(1, len(parts) + 1)):
        raise ConfigError(
            f"{where}: fixed for the whole sweep (set it in the training section instead)"
        )
    node = cls
    for depth, part in enumerate(parts):
        hints = typing.get_type_hints(node)
        if part not in hints or part not in _field_names(node):
            section = ".".join(parts[:depth]) or "the training config"
            raise ConfigError(
                f"{where}: not a setting of {section}; allowed: {', '.join(_field_names(node))}"
            )
        node = hints[part]
        if dataclasses.is_dataclass(node) and depth == len(parts) - 1:
            example = f"{key}.{_field_names(node)[0]}"
            raise ConfigError(f"{where}: a section; search one of its settings, e.g. {example}")
        if depth < len(parts) - 1 and not dataclasses.is_dataclass(node):
            raise ConfigError(f"{where}: {'.'.join(parts[: depth + 1])} has no sub-settings")


def set_dotted(tree: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    """A copy of the nested dict ``tree`` with the dotted ``key`` set to ``value``."""
    out = dict(tree)
    head, _, rest = key.partition(".")
    if rest:
        out[head] = set_dotted(dict(out.get(head) or {}), rest, value)
    else:
        out[head] = value
    return out


def apply_overrides(cls: type, base: dict[str, Any], overrides: dict[str, Any]) -> Any:
    """Build and validate ``cls`` from ``base`` with dotted ``overrides`` applied."""
    values = base
    for key, value in overrides.items():
        values = set_dotted(values, key, value)
    return config_from_dict(cls, values)


def _extra_checks(key: str, value: Any) -> None:
    """Checks the training config leaves to run time, done here so a sweep fails up front."""
    if key == "templates":
        from core.text.label_prompts import resolve_templates

        try:
            resolve_templates(value)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None


def check_space(specs: list[ParamSpec], cls: type, base: dict[str, Any]) -> None:
    """Every value every spec can take must give a valid ``cls`` config from ``base``."""
    for spec in specs:
        check_key(spec.key, cls)
        for value in spec.candidates:
            try:
                apply_overrides(cls, base, {spec.key: value})
                _extra_checks(spec.key, value)
            except ConfigError as exc:
                message = str(exc).removeprefix(f"{spec.key}: ")
                raise ConfigError(f"space.{spec.key}: value {value!r}: {message}") from None


def check_searcher(specs: list[ParamSpec], searcher: str) -> None:
    """Spec kinds each searcher can handle."""
    for spec in specs:
        if searcher == "optuna" and spec.kind == "grid":
            raise ConfigError(
                f"space.{spec.key}: grid is not supported by searcher optuna; use choice"
            )
        if searcher == "grid" and spec.is_range:
            raise ConfigError(
                f"space.{spec.key}: searcher grid needs grid or choice values, got {spec.kind}"
            )


def count_trials(specs: list[ParamSpec], searcher: str, num_samples: int) -> int:
    """How many trials the sweep runs: Tune repeats the grid's product ``num_samples`` times."""
    grid = 1
    for spec in specs:
        if spec.kind == "grid" or (searcher == "grid" and spec.kind == "choice"):
            grid *= len(spec.values)
    return grid * num_samples


def to_tune_space(specs: list[ParamSpec], searcher: str) -> dict[str, Any]:
    """Tune's ``param_space``: one domain per dotted key (``grid`` searcher: choices → grid)."""
    from ray import tune

    space: dict[str, Any] = {}
    for spec in specs:
        if spec.kind == "loguniform":
            space[spec.key] = tune.loguniform(*spec.values)
        elif spec.kind == "uniform":
            space[spec.key] = tune.uniform(*spec.values)
        elif spec.kind == "grid" or searcher == "grid":
            space[spec.key] = tune.grid_search(list(spec.values))
        else:
            space[spec.key] = tune.choice(list(spec.values))
    return space
