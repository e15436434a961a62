"""Atomic file writes: the one way genrefusion puts a file in place.

A file is written under a temporary name beside its target and renamed over it only once it
is complete (and, where asked, checked), so an interrupted run never leaves a half-written
report, checkpoint, split, cache entry or download behind.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np


@contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on a clean exit it is renamed to ``target``.

    Whatever the body writes to the temporary path (``torch.save``, ``DataFrame.to_csv``, a
    download) replaces ``target`` in one step. If the body raises, the temporary file is removed
    and ``target`` is left as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.part")
    try:
        yield temporary
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


def write_bytes_atomic(target: str | Path, content: bytes) -> int:
    """Write ``content`` to ``target`` atomically; returns the number of bytes written."""
    with atomic_path(target) as temporary:
        temporary.write_bytes(content)
    return len(content)


def write_text_atomic(target: str | Path, text: str) -> None:
    """Write UTF-8 ``text`` to ``target`` atomically."""
    write_bytes_atomic(target, text.encode("utf-8"))


def finite_or_null(value: Any) -> Any:
    """``value`` with numpy scalars as Python numbers and every NaN/±inf as ``None``, however deeply nested."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite_or_null(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(item) for item in value]
    return value


def write_json(path: str | Path, payload: Any) -> None:
    """Write strict JSON atomically.

    An undefined number (NaN, ±inf) is written as ``null``: Python would write the bare token
    ``NaN``, which jq, JavaScript and other strict JSON readers reject.
    """
    write_text_atomic(path, json.dumps(finite_or_null(payload), indent=2, default=str, allow_nan=False))


def update_json(path: str | Path, **fields: Any) -> None:
    """Add (or replace) top-level ``fields`` of the JSON object at ``path``, atomically."""
    write_json(path, {**json.loads(Path(path).read_text()), **fields})
