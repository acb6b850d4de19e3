"""A module's independent Ray runs, started together.

A short Ray Train fit spends half its time waiting on process start-up and polls with one of
the two cores idle; a second fit started in a thread fills those gaps. A fixture starts one as a
:class:`Background` early and another fixture takes its result, which re-raises what the run
raised.
Only runs that use absolute paths go to the background (the main thread may change directory).
The session's Ray has 4 logical CPUs: the runs at once may hold at most 3 for their workers (and
trial drivers), since every run's decoding tasks need one whole CPU left free; with less, the
streams wait for it forever (the linear probe's sweep, two trials at 1.01 CPUs each, leaves no
room for a third run).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


class Background:
    """``fn(*args)`` running in a thread; :meth:`result` waits for it."""

    def __init__(self, fn: Callable[..., Any], *args: Any) -> None:
        self._value: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn, args), daemon=True)
        self._thread.start()

    def _run(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        try:
            self._value = fn(*args)
        except BaseException as exc:  # handed to the fixture that waits for it
            self._error = exc

    def result(self) -> Any:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value
