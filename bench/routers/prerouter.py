"""A task's fitted pre-router, loaded from its artefact, as bench.router and `bench serve` apply it.

It scores a request with exactly the family function, parameters, isotonic knots and embedding model that
calibration used (bench.routers.families, bench.routers.features); a mismatch in any of them is refused at load.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from bench.errors import UserInputError
from bench.routers import artifacts
from bench.routers.families import probability
from bench.routers.features import Embedder, request_text, text_sha

CACHE = 1024  # decisions remembered per task (a service asks for the same request's route more than once)


class LoadedPreRouter:
    """One task's pre-router: `route(fields, text)` -> the path a request takes, with its probability."""

    def __init__(self, task: str, block: dict[str, Any], routing_path: str | Path | None, input_fields: list[str]):
        from bench.registry import ROUTER_FAMILIES

        field = f"tasks.{task}.prerouter"
        self.task, self.block, self.input_fields = task, block, input_fields
        self.doc = artifacts.load(routing_path, block.get("artifact") or {}, field + ".artifact")
        where = str(routing_path) if routing_path else None
        for key in ("family", "cheap"):
            if self.doc.get(key) != block.get(key):
                raise UserInputError(f"the artefact's {key} is {self.doc.get(key)!r}, routing.json says "
                                     f"{block.get(key)!r}", file=where, field=field + "." + key)
        self.family = ROUTER_FAMILIES.get(self.doc["family"])
        self.embedder: Embedder | None = None
        if self.family.needs_embedding:
            emb = self.doc.get("embedding") or {}
            if not emb.get("model") or emb != (block.get("embedding") or emb):
                raise UserInputError("the embedding pre-router names no embedding model, or another one than "
                                     "routing.json", file=where, field=field + ".embedding")
            self.embedder = Embedder(emb["model"])
            if self.embedder.sha256 != emb.get("sha256"):
                raise UserInputError(f"embedding model {emb['model']} here has sha256 {self.embedder.sha256[:12]}..., "
                                     f"the pre-router was fitted on {str(emb.get('sha256'))[:12]}...", file=where,
                                     field=field + ".embedding.sha256")
        self._cache: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def probability(self, text: str) -> float:
        emb = None if self.embedder is None else self.embedder.embed(text)[None, :]
        raw = self.family.raw(self.doc["params"], [text], emb)
        return float(probability(np.asarray(raw), self.doc["calibration"])[0])

    def route(self, fields: dict[str, Any] | None, text: str) -> dict[str, Any]:
        """The decision for one request: {family, probability, path: cheap|strong, cells}."""
        text = request_text(fields, self.input_fields, fallback=text)
        key = text_sha(text)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        p = self.probability(text)
        cheap = p >= self.block["threshold"]
        b = self.block
        cells = ([b["cheap"], b["strong"]] if b.get("then") == "cascade" else [b["cheap"]]) if cheap else [b["strong"]]
        decision = {"family": b["family"], "probability": p, "threshold": b["threshold"],
                    "path": "cheap" if cheap else "strong", "cells": cells}
        with self._lock:
            self._cache[key] = decision
            while len(self._cache) > CACHE:
                self._cache.popitem(last=False)
        return decision

    def close(self) -> None:
        if self.embedder is not None:
            self.embedder.close()
