"""Write, compare and check the dependency lock (``requirements.lock``).

Why: ``pyproject.toml`` keeps version ranges (for people who use the package as a library), but
the registries publish new releases every week, so an unpinned install on a fresh machine gets
versions nobody has run. The README and CI install with the lock (``pip install -c
requirements.lock -e ".[dev]"``); the lock moves forward on purpose, with the suite run against it.

    python scripts/lock.py             # resolve the newest allowed versions; write the lock
    python scripts/lock.py --diff      # resolve, print what would change, write nothing
    python scripts/lock.py --installed # compare the installed environment with the lock

Resolution uses pip's own resolver (``pip install --dry-run --ignore-installed --report``) for
the project with its ``[dev]`` extra, on this Python and platform; the lock names both in its
header. pip's configured constraints (e.g. a torch cap) apply as for any install.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import subprocess
import sys
import tempfile
from datetime import date
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"
PROJECT = "lmm-clip"
EXTRAS = "dev"


def canonical(name: str) -> str:
    """PEP 503 name: case and separators do not matter."""
    return re.sub(r"[-_.]+", "-", name).lower()


def resolve() -> dict[str, str]:
    """The newest versions pip picks for ``.[dev]`` today, as {canonical name: version}."""
    with tempfile.TemporaryDirectory() as folder:
        report = Path(folder) / "report.json"
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed"]
        cmd += ["--quiet", "--report", str(report), f".[{EXTRAS}]"]
        subprocess.run(cmd, cwd=ROOT, check=True)
        data = json.loads(report.read_text())
    pins = {}
    for item in data["install"]:
        name = canonical(item["metadata"]["name"])
        if name != PROJECT:
            pins[name] = item["metadata"]["version"]
    return dict(sorted(pins.items()))


def read_lock(path: Path = LOCK) -> dict[str, str]:
    """{canonical name: version} from a lock file (``name==version`` lines, # comments)."""
    pins = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if "==" not in line:
            raise ValueError(f"{path}:{number}: expected name==version, got {line!r}")
        name, version = line.split("==", 1)
        pins[canonical(name)] = version.strip()
    return pins


def installed() -> dict[str, str]:
    """{canonical name: version} of every distribution in this environment."""
    return {canonical(d.metadata["Name"]): d.version for d in metadata.distributions()}


def compare(old: dict[str, str], new: dict[str, str], only_old: bool = False) -> list[str]:
    """One line per difference: changed, added and (unless ``only_old``) removed packages."""
    lines = []
    for name in sorted(set(old) | set(new)):
        a, b = old.get(name), new.get(name)
        if a == b or (only_old and a is None):
            continue
        if a is None:
            lines.append(f"+ {name}=={b}")
        elif b is None:
            lines.append(f"- {name}=={a}")
        else:
            lines.append(f"~ {name}: {a} -> {b}")
    return lines


def write_lock(pins: dict[str, str], path: Path = LOCK) -> None:
    py = platform.python_version()
    header = [
        "# Exact versions of every dependency of lmm-clip[dev], direct and transitive.",
        f"# Resolved {date.today().isoformat()} for Python {py} on "
        f"{platform.system()} {platform.machine()} by `python scripts/lock.py`.",
        '# Install with: pip install -c requirements.lock -e ".[dev]"',
        "# Move it forward on purpose: regenerate, run the suite against it, commit both.",
    ]
    body = [f"{name}=={version}" for name, version in pins.items()]
    path.write_text("\n".join(header + body) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--diff", action="store_true", help="resolve and print changes only")
    mode.add_argument("--installed", action="store_true", help="installed vs lock")
    args = parser.parse_args()
    if args.installed:
        lines = compare(read_lock(), installed(), only_old=True)
        print("\n".join(lines) or "installed environment matches the lock")
        return 0
    pins = resolve()
    if args.diff:
        print("\n".join(compare(read_lock(), pins)) or "the lock is the newest resolution")
        return 0
    old = read_lock() if LOCK.exists() else {}
    write_lock(pins)
    print("\n".join(compare(old, pins)) or "no change")
    print(f"wrote {LOCK.relative_to(ROOT)} ({len(pins)} packages)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
