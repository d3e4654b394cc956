"""One generic registry for backends, task kinds, metrics and router families, with lazy entries and 'did you mean'."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from bench.errors import UserInputError, did_you_mean

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects; an entry may be a lazy 'module:attr' string imported on first use."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T | str] = {}
        self._info: dict[str, Any] = {}

    def register(self, name: str, obj: T | str | None = None, info: Any = None) -> Any:
        """Register obj under name, with what the entry says of itself (`info`); used bare it is a decorator."""
        if info is not None:
            self._info[name] = info
        if obj is not None:
            self._entries[name] = obj
            return obj

        def deco(o: T) -> T:
            self._entries[name] = o
            return o

        return deco

    def names(self) -> list[str]:
        return sorted(self._entries)

    def info(self, name: str) -> Any:
        """What the entry registered about itself (unknown names: the 'did you mean' error of `get`)."""
        if name not in self._info:
            self.get(name)
        return self._info.get(name)

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
        return entry


@dataclass(frozen=True)
class BackendTraits:
    """What a backend is, registered with it, so no other module tests kind names."""

    in_process: bool         # runs in this process on this machine (or a cluster node), priced by the hour;
                             # the process memory it reports is the model's, not an HTTP client's
    loads_model_file: bool   # resolves a model file from the catalog or a suite source (the fake one does not)
    timed_here: bool         # its timings depend on this machine's CPU being left alone
    description: str = ""
    gpu: str = "never"       # "always" (needs a GPU), "offload" (when its config sets n_gpu_layers) or "never"
    priced_by: str = "hour"  # "hour": the machine's hourly price (its hardware profile) shared by the requests;
                             # "token": the price table's per-token prices (else the profile its config names)
    measures_memory: bool = True  # the process memory a cell reports is the model's (an HTTP client's is not)
    locality_from: str = "machine"  # a cell's locality: "machine" (the hardware it runs on, local or on-prem)
                                    # or "config" (the backend config's `locality`: local, on-prem or cloud)
    batches: bool = False    # in-process and decodes up to `parallel` requests at once, taking them from several
                             # threads through `submit(request) -> Future` (a service runs it at its concurrency)

    def needs_gpu(self, config: dict[str, Any]) -> bool:
        """Whether a cell with this backend config needs a GPU (a cluster asks the node for one)."""
        return self.gpu == "always" or (self.gpu == "offload" and bool(config.get("n_gpu_layers")))


BACKENDS: Registry[Callable[..., Any]] = Registry("backend")
TASKS: Registry[Any] = Registry("task kind")
METRICS: Registry[Any] = Registry("metric")
ROUTER_FAMILIES: Registry[Any] = Registry("router family")  # pre-generation routers (bench.routers.families)

BACKENDS.register("llamacpp", "bench.backends.llamacpp:LlamaCppBackend",
                  BackendTraits(True, True, True, "llama.cpp in this process (GGUF, CPU or GPU)", gpu="offload",
                                batches=True))
BACKENDS.register("fake", "bench.backends.fake:FakeBackend",
                  BackendTraits(True, False, False, "deterministic stand-in for tests; no model file"))
BACKENDS.register("openai", "bench.backends.openai_http:OpenAIBackend",
                  BackendTraits(False, False, False, "an OpenAI-compatible HTTP endpoint, priced per token",
                                priced_by="token", measures_memory=False, locality_from="config"))
BACKENDS.register("vllm", "bench.backends.vllm_backend:VLLMBackend",
                  BackendTraits(True, True, True, "vLLM in this process (NVIDIA GPU)", gpu="always"))


def backend_traits(kind: str) -> BackendTraits:
    """The registered traits of a backend kind."""
    return BACKENDS.info(kind)


LOCAL_KINDS = tuple(k for k in BACKENDS.names() if backend_traits(k).in_process)  # in this process, here

for _kind in ("classify", "extract", "summarize", "rewrite", "normalize"):
    TASKS.register(_kind, f"bench.tasks.{_kind}:TASK")

for _family in ("rules", "tfidf", "embedding"):
    ROUTER_FAMILIES.register(_family, f"bench.routers.families:{_family.upper()}")
