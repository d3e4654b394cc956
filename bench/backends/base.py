"""The backend contract: load a model, generate a batch of requests with raw timestamps, close."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from bench.registry import BACKENDS


def engine_first() -> None:
    """Load llama.cpp's libraries (where llama-cpp-python is installed) before anything imports numpy: on an H200
    machine with a llama-cpp-python CUDA build, every model load segfaulted in a process that had imported numpy
    first, offloaded or not (2026-12-04); loaded in this order, the same cells ran. The root cause is not known.
    Called where a model may load in this process: bench.backends.llamacpp on import, and bench.cli for commands
    that load one here. A no-op once numpy is loaded (too late) or llama.cpp is."""
    import sys

    if "numpy" in sys.modules or "llama_cpp" in sys.modules:
        return
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        pass


@dataclass
class Request:
    """One prompt to run. Chat backends read `messages`; completion-only (base) models read `prompt`."""

    id: str
    messages: list[dict[str, str]]
    prompt: str
    max_tokens: int = 128
    temperature: float = 0.0
    seed: int = 0
    stop: list[str] = field(default_factory=list)
    reference: Any = None  # only the fake backend looks at it
    ignore_eos: bool = False  # decode exactly max_tokens: an end-of-generation token does not stop it (bench fidelity)


@dataclass
class Generation:
    """What came back for one request. Times are seconds after `t_start` (an epoch timestamp)."""

    request_id: str
    text: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int | None = None
    token_logprobs: list[float] | None = None
    t_start: float = 0.0
    t_prefill_end: float | None = None
    t_first_token: float | None = None
    token_times: list[float] = field(default_factory=list)
    t_end: float = 0.0
    finish_reason: str | None = None
    error: str | None = None
    retries: int = 0
    concurrency: int | None = None  # requests in flight together (llama.cpp --parallel); None: the backend's own
    rss_peak_mb: float | None = None
    gpu_peak_mb: float | None = None
    energy_j: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LoadInfo:
    """What loading cost: wall time and the memory it took."""

    load_s: float
    model_bytes: int | None = None
    rss_before_mb: float | None = None
    rss_after_mb: float | None = None
    gpu_mb: float | None = None
    n_threads: int | None = None
    chat: bool = True
    details: dict[str, Any] = field(default_factory=dict)


OnResult = Callable[[Generation], None]


class Backend(Protocol):
    """Every engine implements this; `generate` calls `on_result` as each request finishes."""

    kind: str
    locality: str  # "local", "on-prem" or "cloud"
    concurrency: int

    def load(self) -> LoadInfo: ...

    def generate(self, requests: list[Request], on_result: OnResult | None = None) -> list[Generation]: ...

    def close(self) -> None: ...


def create_backend(config: Any, model: Any = None) -> Backend:
    """Build the backend a config block's `kind` names; `model` is a resolved catalog model or None."""
    factory = BACKENDS.get(config.kind)
    return factory(config, model)
