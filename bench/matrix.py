"""The matrix stage: models x quantizations x backends (x hardware), one planned cell each."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bench.config.suite import ModelRef, OpenAIBackendConfig, Suite, suite_line
from bench.errors import UserInputError, did_you_mean
from bench.models.catalog import CATALOG, DEFAULT_MODEL, get_entry
from bench.registry import backend_traits
from bench.results.schema import cell_id as make_cell_id


@dataclass
class CellPlan:
    """One point of the matrix and how to run it."""

    cell: dict[str, Any]
    backend: Any
    model_ref: ModelRef | None
    locality: str
    chat: bool = True
    cell_id: str = ""
    model: Any = None  # ResolvedModel, filled before the cell runs

    def __post_init__(self) -> None:
        self.cell_id = make_cell_id(self.cell)


def plan_cells(suite: Suite, models: list[str] | None, hardware_id: str, locality: str,
               quantizations: list[str] | None = None, hardware_ids: list[str] | None = None) -> list[CellPlan]:
    """Cross models x quantizations with local backends; each HTTP backend is a cell of its own.

    `quantizations` replaces every catalog model's list (variants are derived when missing)."""
    refs = suite.matrix.model_refs() or [ModelRef(id=DEFAULT_MODEL)]
    endpoints = {b.name: b for b in suite.matrix.backends if isinstance(b, OpenAIBackendConfig)}
    if models:
        by_id = {r.id: r for r in refs}
        chosen: list[ModelRef] = []
        for mid in models:
            if mid in by_id:
                chosen.append(by_id[mid])
            elif mid in CATALOG:
                chosen.append(ModelRef(id=mid))
            elif mid not in endpoints:
                known = sorted(set(CATALOG) | set(by_id) | set(endpoints))
                raise UserInputError(f"unknown model {mid!r}; known: {', '.join(known)}", field="--models",
                                     hint=did_you_mean(mid, known))
        refs = chosen
        endpoints = {k: v for k, v in endpoints.items() if k in models}
    gen = suite.generation.key()
    plans: list[CellPlan] = []
    for b_index, backend in enumerate(suite.matrix.backends):
        if backend_traits(backend.kind).in_process:
            for ref in refs:
                if ref.source is None:
                    try:
                        entry = get_entry(ref.id)
                    except UserInputError as exc:
                        exc.file = str(suite.path)
                        exc.line = suite_line(suite, "matrix", "models")
                        exc.field = "matrix.models"
                        raise
                    quants = quantizations or ref.quantizations or [entry.quantization]
                    chat = entry.chat if ref.chat is None else ref.chat
                else:
                    quants = ref.quantizations or ["unknown"]
                    chat = True if ref.chat is None else ref.chat
                for q in quants:
                    for hw in hardware_ids or [hardware_id]:  # the hardware axis: one cell per profile
                        cell: dict[str, Any] = {"model": ref.id, "quantization": q, "backend": backend.kind, "hardware": hw,
                                "gen": gen}
                        plans.append(CellPlan(cell=cell, backend=backend, model_ref=ref, locality=locality,
                                              chat=chat))
        elif isinstance(backend, OpenAIBackendConfig) and backend.name in endpoints:
            cell = {"model": backend.name, "quantization": None, "backend": "openai",
                    "hardware": backend.hardware or "remote", "gen": gen}
            where = backend.locality if backend_traits(backend.kind).locality_from == "config" else locality
            plans.append(CellPlan(cell=cell, backend=backend, model_ref=None, locality=where,
                                  chat=backend.chat))
    return plans
