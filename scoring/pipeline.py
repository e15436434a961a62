"""Stages of a scoring job running side by side: each in its own thread, joined by bounded queues.

A batch goes through the stages in order (fetch and decode → models → write), and while the
models score batch ``i`` the first stage is already preparing ``i + 1 … i + depth`` and the
writer is writing ``i - 1``. Every stage's heavy work releases the GIL (decoding in PIL and
soundfile, the numba median filter, torch, feature worker processes, file writes), so threads
overlap it without a process per stage.

Order is kept (one thread per stage, FIFO queues), so the output is the one the batches would
give one after another, and a job killed at any point has written whole batches in row order.
Memory is bounded by the queues: at most ``depth`` batches wait between two stages, whatever the
table's length. A stage that raises stops the stages before it; batches that had already passed
it are still finished (written) before the error reaches the caller.
"""
from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

#: How long a blocked ``put`` waits before it looks again whether the job was stopped (seconds).
_POLL_S = 0.1
_END = object()


@dataclass
class _Failure:
    """An error raised by a stage, carried downstream in the batch's place."""

    error: BaseException


@dataclass
class StageClock:
    """Seconds each stage spent working (not waiting on its queues), added up over a job."""

    busy: dict[str, float] = field(default_factory=dict)
    items: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, stage: str, seconds: float) -> None:
        with self._lock:
            self.busy[stage] = self.busy.get(stage, 0.0) + seconds
            self.items[stage] = self.items.get(stage, 0) + 1

    def shares(self, wall_seconds: float) -> dict[str, float]:
        """Each stage's busy time as a share of ``wall_seconds``: the stage nearest 1.0 bounds the job."""
        return {stage: round(seconds / wall_seconds, 3) if wall_seconds > 0 else 0.0
                for stage, seconds in self.busy.items()}


def _put(out: queue.Queue, value: Any, halt: threading.Event) -> bool:
    """Put ``value``, waiting while the queue is full; False when this stage was halted meanwhile."""
    while not halt.is_set():
        try:
            out.put(value, timeout=_POLL_S)
            return True
        except queue.Full:
            continue
    return False


def _get(inbox: queue.Queue, halt: threading.Event) -> Any:
    """The next item, waiting while the queue is empty; the end marker when this stage was halted meanwhile."""
    while not halt.is_set():
        try:
            return inbox.get(timeout=_POLL_S)
        except queue.Empty:
            continue
    return _END


def _source(items: Iterable, out: queue.Queue, halt: threading.Event) -> None:
    try:
        for item in items:
            if not _put(out, item, halt):
                return
    except BaseException as error:  # noqa: BLE001 — handed to the caller, not swallowed
        _put(out, _Failure(error), halt)
        return
    _put(out, _END, halt)


def _stage(name: str, work: Callable[[Any], Any], inbox: queue.Queue, out: queue.Queue,
           halts: list[threading.Event], index: int, clock: StageClock) -> None:
    halt = halts[index]
    while True:
        item = _get(inbox, halt)
        if item is _END or isinstance(item, _Failure):
            _put(out, item, halt)
            return
        start = time.perf_counter()
        try:
            result = work(item)
        except BaseException as error:  # noqa: BLE001 — handed downstream, then raised by the caller
            # The stages before this one stop; those after it finish what they already hold, then
            # pass the failure on to the caller.
            for earlier in halts[:index]:
                earlier.set()
            _put(out, _Failure(error), halt)
            return
        clock.add(name, time.perf_counter() - start)
        if not _put(out, result, halt):
            return


def run_stages(items: Iterable, stages: Sequence[tuple[str, Callable[[Any], Any]]], depth: int = 2,
               clock: StageClock | None = None) -> Iterator[Any]:
    """``stages`` (``(name, function)``, first to last) applied to each of ``items`` in order, the stages
    running concurrently; yields the last stage's results in ``items``' order.

    At most ``depth`` results wait between two stages. The first error raised by a stage (or by
    iterating ``items``) is raised here once the results that came before it have been yielded.
    Closing the iterator early stops every stage.
    """
    if depth < 1:
        raise ValueError(f"the pipeline's depth must be >= 1, got {depth}")
    if not stages:
        raise ValueError("a pipeline needs at least one stage")
    clock = clock if clock is not None else StageClock()
    # halts[0]: the source; halts[i + 1]: stage i. The caller's queue is the last one.
    halts = [threading.Event() for _ in range(len(stages) + 1)]
    queues = [queue.Queue(maxsize=depth) for _ in range(len(stages) + 1)]
    threads = [threading.Thread(target=_source, args=(items, queues[0], halts[0]), name="pipeline-source",
                                daemon=True)]
    threads += [threading.Thread(target=_stage, args=(name, work, queues[i], queues[i + 1], halts, i + 1, clock),
                                 name=f"pipeline-{name}", daemon=True) for i, (name, work) in enumerate(stages)]
    for thread in threads:
        thread.start()
    try:
        while True:
            item = queues[-1].get()
            if item is _END:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item
    finally:
        for halt in halts:
            halt.set()
        for thread in threads:
            thread.join()
