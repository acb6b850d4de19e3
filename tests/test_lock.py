"""The dependency lock: complete for pyproject's requirements, inside their ranges, parseable."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import lock  # noqa: E402


@pytest.fixture(scope="module")
def pins() -> dict[str, str]:
    return lock.read_lock(ROOT / "requirements.lock")


def _requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = project["dependencies"] + project["optional-dependencies"]["dev"]
    return [Requirement(r) for r in names]


def test_every_requirement_is_locked_inside_its_range(pins) -> None:
    for req in _requirements():
        name = lock.canonical(req.name)
        assert name in pins, f"{req.name} is a requirement but not in requirements.lock"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"requirements.lock pins {name}=={pins[name]}, outside pyproject's {req}"
        )


def test_torch_stays_at_or_below_the_cap(pins) -> None:
    major, minor, patch = (int(p) for p in pins["torch"].split("+")[0].split(".")[:3])
    assert (major, minor, patch) <= (2, 14, 1)


def test_lock_lines_are_exact_pins(tmp_path) -> None:
    bad = tmp_path / "bad.lock"
    bad.write_text("# header\ntorch>=2\n")
    with pytest.raises(ValueError, match=r"bad.lock:2: expected name==version"):
        lock.read_lock(bad)


def test_compare_names_each_change() -> None:
    old = {"a": "1.0", "b": "2.0", "c": "3.0"}
    new = {"a": "1.0", "b": "2.1", "d": "4.0"}
    assert lock.compare(old, new) == ["~ b: 2.0 -> 2.1", "- c==3.0", "+ d==4.0"]
    # Against an environment: packages outside the lock are not drift.
    assert lock.compare(old, new, only_old=True) == ["~ b: 2.0 -> 2.1", "- c==3.0"]
