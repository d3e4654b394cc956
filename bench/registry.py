"""One generic registry for backends, task kinds, metrics and router families, with lazy entries and 'did you mean'."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from bench.errors import UserInputError, did_you_mean

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects; an entry may be a lazy 'module:attr' string imported on first use."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T | str] = {}

    def register(self, name: str, obj: T | str | None = None) -> Any:
        """Register obj under name; used bare it is a decorator."""
        if obj is not None:
            self._entries[name] = obj
            return obj

        def deco(o: T) -> T:
            self._entries[name] = o
            return o

        return deco

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def get(self, name: str) -> T:
        if name not in self._entries:
            hint = did_you_mean(name, self._entries)
            known = ", ".join(self.names())
            raise UserInputError(f"unknown {self.kind} {name!r}; known: {known}", hint=hint)
        entry = self._entries[name]
        if isinstance(entry, str):
            module, _, attr = entry.partition(":")
            entry = getattr(importlib.import_module(module), attr)
            self._entries[name] = entry
        return entry  # type: ignore[return-value]


BACKENDS: Registry[Callable[..., Any]] = Registry("backend")
LOCAL_KINDS = ("llamacpp", "fake", "vllm")  # backends that run in this process, on this machine
TASKS: Registry[Any] = Registry("task kind")
METRICS: Registry[Any] = Registry("metric")
ROUTER_FAMILIES: Registry[Any] = Registry("router family")  # pre-generation routers (bench.routers.families)

BACKENDS.register("llamacpp", "bench.backends.llamacpp:LlamaCppBackend")
BACKENDS.register("fake", "bench.backends.fake:FakeBackend")
BACKENDS.register("openai", "bench.backends.openai_http:OpenAIBackend")
BACKENDS.register("vllm", "bench.backends.vllm_backend:VLLMBackend")

for _kind in ("classify", "extract", "summarize", "rewrite", "normalize"):
    TASKS.register(_kind, f"bench.tasks.{_kind}:TASK")

for _family in ("rules", "tfidf", "embedding"):
    ROUTER_FAMILIES.register(_family, f"bench.routers.families:{_family.upper()}")
