"""On-disk cache for expensive deterministic results, keyed by input content and parameters.

Entries are written atomically (temporary name, then rename), so an interrupted run never
leaves a half-written entry, and the whole folder is safe to delete.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any


def cache_key(content_hash: str, params: dict[str, Any]) -> str:
    """Key of one result: the input's content hash plus every parameter that shapes the result."""
    return hashlib.sha1((content_hash + json.dumps(params, sort_keys=True)).encode()).hexdigest()


class JsonCache:
    """``cache_dir/<namespace>/<key[:2]>/<key>.json`` entries."""

    def __init__(self, cache_dir: str | Path, namespace: str) -> None:
        self.root = Path(cache_dir) / namespace

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> Any | None:
        path = self._path(key)
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def put(self, key: str, value: Any) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(value))
        tmp.replace(path)
