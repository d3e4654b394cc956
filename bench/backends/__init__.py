"""Backends: engines that turn a batch of requests into timed generations (llama.cpp, OpenAI HTTP, vLLM, fake)."""

from bench.backends.base import Backend, Generation, LoadInfo, Request, create_backend

__all__ = ["Backend", "Generation", "LoadInfo", "Request", "create_backend"]
