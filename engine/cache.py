"""On-disk cache for expensive deterministic results, keyed by input content and parameters.

Entries are written atomically (temporary name, then rename), so an interrupted run never
leaves a half-written entry, and the whole folder is safe to delete.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from engine.io import atomic_path


def cache_key(content_hash: str, params: dict[str, Any]) -> str:
    """Key of one result: the input's content hash plus every parameter that shapes the result."""
    return hashlib.sha1((content_hash + json.dumps(params, sort_keys=True)).encode()).hexdigest()


class _DiskCache:
    """``cache_dir/<namespace>/<key[:2]>/<key><suffix>`` entries."""

    suffix = ""

    def __init__(self, cache_dir: str | Path, namespace: str) -> None:
        self.root = Path(cache_dir) / namespace

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}{self.suffix}"

    def _write(self, key: str, write) -> None:
        with atomic_path(self._path(key)) as temporary, open(temporary, "wb") as handle:
            write(handle)


class JsonCache(_DiskCache):
    """JSON-serialisable values."""

    suffix = ".json"

    def get(self, key: str) -> Any | None:
        try:
            return json.loads(self._path(key).read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def put(self, key: str, value: Any) -> None:
        self._write(key, lambda handle: handle.write(json.dumps(value).encode()))


class ArrayCache(_DiskCache):
    """One NumPy array per key (``.npy``)."""

    suffix = ".npy"

    def get(self, key: str) -> np.ndarray | None:
        try:
            return np.load(self._path(key), allow_pickle=False)
        except (OSError, ValueError):
            return None

    def put(self, key: str, value: np.ndarray) -> None:
        self._write(key, lambda handle: np.save(handle, np.asarray(value), allow_pickle=False))
