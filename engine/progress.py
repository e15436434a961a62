"""Progress of long work: a live bar on a terminal, a few log lines in a file or CI.

A tqdm bar redrawn into a file (a Hydra run's output captured by ``> run.log``, a CI log) leaves
hundreds of carriage-return redraws per bar; a main job wrote 6,660 such lines. Every loop that
shows progress goes through :func:`progress_bar`, which decides by where standard error goes.
"""
from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from typing import Any

from tqdm.auto import tqdm
from tqdm.std import tqdm as plain_tqdm

log = logging.getLogger(__name__)

#: Off a terminal, work that has run at least this long (seconds) logs its progress; shorter work
#: logs nothing (its result is logged by whoever started it).
QUIET_FOR_S = 30.0
#: Off a terminal, a bar with a known total logs when it passes each of this many equal steps.
LOGGED_STEPS = 4
#: Off a terminal, a bar without a total logs at most this often (seconds).
UNKNOWN_TOTAL_EVERY_S = 300.0


def on_terminal() -> bool:
    """Whether standard error is an interactive terminal (where a redrawn bar belongs)."""
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


def progress_bar(iterable: Iterable | None = None, *, desc: str, enabled: bool = True, nested: bool = False,
                 **kwargs: Any) -> tqdm:
    """``tqdm(iterable, desc=desc, **kwargs)`` on a terminal; a :class:`LoggedProgress` elsewhere.

    ``nested``: a bar inside another's step (batches within an epoch); off a terminal it shows
    nothing. ``enabled=False`` shows nothing anywhere. The result has tqdm's interface either way
    (iterate it, ``update``, ``set_postfix``, ``close``).
    """
    if not enabled or (nested and not on_terminal()):
        return tqdm(iterable, desc=desc, disable=True, **kwargs)
    if on_terminal():
        return tqdm(iterable, desc=desc, **kwargs)
    return LoggedProgress(iterable, desc=desc, **kwargs)


class _Discard:
    """A stream that drops what is written: the logged bar draws nothing itself."""

    def write(self, text: str) -> None:
        pass

    def flush(self) -> None:
        pass


class LoggedProgress(plain_tqdm):
    """A tqdm bar that logs instead of drawing.

    Once the work has run :data:`QUIET_FOR_S` seconds it logs one line (``desc: n/total unit in
    elapsed, postfix``) each time it passes one of :data:`LOGGED_STEPS` equal steps of its total
    (every :data:`UNKNOWN_TOTAL_EVERY_S` seconds without a total), and one when it closes.
    """

    def __init__(self, iterable: Iterable | None = None, **kwargs: Any) -> None:
        self._quiet_for_s = QUIET_FOR_S
        self._logged_step = 0
        self._logged_n: float | None = None
        self._logged_at = 0.0
        kwargs.pop("leave", None)
        super().__init__(iterable, file=_Discard(), mininterval=0, miniters=1, leave=True, **kwargs)

    def display(self, msg: str | None = None, pos: int | None = None) -> None:
        if not hasattr(self, "start_t"):  # tqdm's __init__ draws once before it starts the clock
            return
        elapsed = self._time() - self.start_t
        if elapsed < self._quiet_for_s:
            return
        if self.total:
            step = int(LOGGED_STEPS * min(self.n, self.total) / self.total)
            due = step > self._logged_step
        else:
            step, due = 0, elapsed - self._logged_at >= UNKNOWN_TOTAL_EVERY_S
        if due:
            self._log(step, elapsed)

    def set_postfix(self, ordered_dict: dict | None = None, refresh: bool = True, **kwargs: Any) -> None:
        # Set at the end of a step, before the loop counts it: logged with the count it belongs to.
        super().set_postfix(ordered_dict, refresh=False, **kwargs)

    def close(self) -> None:
        if not getattr(self, "disable", True) and hasattr(self, "start_t"):  # tqdm's __del__ closes half-built bars too
            elapsed = self._time() - self.start_t
            if elapsed >= self._quiet_for_s and self._logged_n != self.n:
                self._log(self._logged_step, elapsed)
        super().close()

    def _log(self, step: int, elapsed: float) -> None:
        self._logged_step, self._logged_n, self._logged_at = step, self.n, elapsed
        done = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        postfix = f", {self.postfix}" if self.postfix else ""
        log.info("%s: %s %s in %s%s", self.desc, done, self.unit, self.format_interval(elapsed), postfix)
