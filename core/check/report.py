"""What a check found, and its last line.

Lines are kept in order: notes (what was built and from where), agreements (two parts that must
match, and did), mismatches (one line naming both sides), missing files. The last line is either
``check: ok params=<M> peak_gib=<X> gpu=<name> fits=yes|no max_batch=<N>`` or
``check: failed: <reason>``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from core.check.gpus import GIB, Placement


@dataclass
class Report:
    """Everything one check found, in order, plus the numbers of its last line."""

    lines: list[str] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    params: int = 0
    peak: int = 0
    placement: Placement | None = None
    max_batch: int = 0
    all_stages_fit: bool = True  # a multi-stage job: False when any stage does not fit

    def note(self, text: str) -> None:
        """A line saying what was built, from where, or how much."""
        self.lines.append(text)

    def agree(self, what: str, left: tuple[str, object], right: tuple[str, object]) -> bool:
        """Record whether two sides agree: ``what`` names the quantity, each side is
        (where it comes from, value). A mismatch is one line naming both sides."""
        (left_name, left_value), (right_name, right_value) = left, right
        if left_value == right_value:
            self.lines.append(f"agree: {what}: {left_name} = {right_name} = {left_value}")
            return True
        line = f"mismatch: {what}: {left_name} = {left_value} but {right_name} = {right_value}"
        self.lines.append(line)
        self.mismatches.append(line)
        return False

    def fail(self, line: str) -> None:
        """A problem that is not a two-sided mismatch (e.g. a prompt longer than the context)."""
        self.lines.append(f"mismatch: {line}")
        self.mismatches.append(line)

    def file(self, key: str, path: str, found: bool | None) -> None:
        """A weight or data file the job reads: found, missing, or not checkable from here."""
        if found:
            self.lines.append(f"file: {key}: {path} found")
        elif found is None:
            self.lines.append(f"file: {key}: {path} could not be checked from here")
        else:
            self.lines.append(f"file: {key}: {path} missing")
            self.missing.append(f"{key}: {path}")

    @property
    def fits(self) -> bool:
        """The estimated peak is within the planned share of the worker's GPU (or host)."""
        within = self.placement is not None and self.peak <= self.placement.usable_bytes
        return within and self.all_stages_fit

    def last_line(self, require_files: bool, hint: str = " (--require-files)") -> str:
        """``check: ok ...`` or ``check: failed: <the first mismatch or missing file>``; ``hint``
        follows a missing file (a job's check at start, where files are always required, drops
        it)."""
        if self.mismatches:
            reason = self.mismatches[0]
            more = len(self.mismatches) - 1
            return f"check: failed: {reason}" + (f" (and {more} more above)" if more else "")
        if require_files and self.missing:
            return f"check: failed: missing file {self.missing[0]}{hint}"
        gpu = self.placement.name if self.placement else "none"
        return (
            f"check: ok params={_number(self.params / 1e6)} peak_gib={_number(self.peak / GIB)} "
            f"gpu={gpu} "
            f"fits={'yes' if self.fits else 'no'} max_batch={self.max_batch}"
        )

    def text(self, require_files: bool) -> str:
        """The whole report, the ``check:`` line last."""
        lines = list(self.lines)
        if self.missing and not require_files:
            lines.append(
                "files: not checked against their contents; the architecture of missing weights "
                "came from published configurations (--require-files makes a missing file an error)"
            )
        return "\n".join([*lines, self.last_line(require_files)])


def _number(value: float) -> str:
    """One decimal for sizes that have one; three significant digits for tiny models."""
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}" if value >= 1 else f"{value:.3g}"
