"""Registries: one per kind of pluggable thing (backbones, audio models, cover modes, fusion heads).

A new entry is one decorated definition; nothing else in the project has to learn its name.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Names → builders (classes or functions) of one kind.

    ``create(name, **options)`` calls the builder with the options its signature accepts, so one
    call site can offer every option (a seed, a weight, …) to entries that take different ones.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@REGISTRY.register("name")`` over a class or function."""
        def add(entry: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = entry
            return entry
        return add

    def get(self, name: str) -> T:
        if name not in self._entries:
            raise ValueError(f"unknown {self.kind} {name!r}; known: {sorted(self._entries)}")
        return self._entries[name]

    def create(self, name: str, **options: Any) -> Any:
        """Build ``name`` with those of ``options`` its signature takes (all of them if it takes ``**kwargs``)."""
        builder = self.get(name)
        parameters = inspect.signature(builder).parameters
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
            options = {key: value for key, value in options.items() if key in parameters}
        return builder(**options)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries
