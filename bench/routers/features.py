"""What a pre-router sees of a request: its text, its length in words, and its embedding from a catalog model.

The same functions serve calibration (`bench thresholds`, over a run's inputs.jsonl) and routing (`bench.router`
and `bench serve`, over one request), so a router applies exactly the features it was calibrated on. Embeddings
are computed once per sample and cached beside the run (features/embeddings-<model>-<sha12>.jsonl), never per
policy.
"""

from __future__ import annotations

import hashlib
import math
import re
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

WORD = re.compile(r"\w+|[^\w\s]")
EMBED_CTX = 512  # tokens of a request an embedding reads; longer inputs are cut (the same cut at routing time)


def request_text(fields: dict[str, Any] | None, input_fields: list[str], fallback: str = "") -> str:
    """The request as one string: the suite's input fields in order, one per line; free-form text otherwise."""
    if not fields:
        return fallback
    values = [fields.get(f) for f in input_fields]
    parts = [v if isinstance(v, str) else str(v) for v in values if v is not None]
    return "\n".join(parts) if parts else fallback


def word_count(text: str) -> int:
    """Input length in bench's word tokens (runs of letters and digits, and single punctuation marks)."""
    return len(WORD.findall(text))


def text_sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class Embedder:
    """One catalog model in llama.cpp's embedding mode (mean pooling, L2-normalized), one text at a time so that
    calibration and routing compute bit-identical vectors."""

    def __init__(self, model_id: str):
        from bench.models import resolve_model

        self.model_id = model_id
        self.model = resolve_model(model_id, None, quiet=True)
        self.sha256 = self.model.sha256
        self._llm: Any = None
        self._lock = threading.Lock()

    def _load(self) -> Any:
        if self._llm is None:
            import llama_cpp

            _quiet_llama(llama_cpp)
            self._llm = llama_cpp.Llama(model_path=str(self.model.path), embedding=True, n_ctx=EMBED_CTX,
                                        n_batch=EMBED_CTX, n_ubatch=EMBED_CTX, n_threads=max(1, _cores()),
                                        pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN, verbose=False)
        return self._llm

    def embed(self, text: str) -> np.ndarray:
        """The request's embedding: its first EMBED_CTX tokens, mean-pooled, unit length."""
        with self._lock:
            llm = self._load()
            vec = np.asarray(llm.embed(text or " ", truncate=True), dtype=np.float64).reshape(-1)
        norm = float(np.linalg.norm(vec))
        return vec / norm if norm > 0 and math.isfinite(norm) else vec

    def close(self) -> None:
        if self._llm is not None:
            self._llm.close()
            self._llm = None


_LOG_CALLBACK: Any = None


def _quiet_llama(llama_cpp: Any) -> None:
    """Silence llama.cpp's own log lines on stderr (model loading notes) in this process, once."""
    global _LOG_CALLBACK
    if _LOG_CALLBACK is None:
        import ctypes

        _LOG_CALLBACK = llama_cpp.llama_log_callback(lambda level, text, data: None)  # kept: C holds a pointer
        llama_cpp.llama_log_set(_LOG_CALLBACK, ctypes.c_void_p(0))


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def cache_path(run_dir: Path, model_id: str, sha256: str) -> Path:
    return run_dir / "features" / f"embeddings-{model_id}-{sha256[:12]}.jsonl"


def embeddings(run_dirs: list[Path], texts: dict[str, str], model_id: str
               ) -> tuple[dict[str, np.ndarray], dict[str, float], dict]:
    """sample_id -> embedding for every text, read from any run's cache where the text is unchanged and computed
    (then appended to the newest run's cache) where not. Returns the vectors, the seconds each took to compute,
    and what was done (for notes), with the share of texts whose seconds were measured while other processes took
    CPU (bench.measure.contention: `contended` in the cache rows, `contended_share` here)."""
    from bench.results.store import SampleWriter, iter_jsonl

    embedder = Embedder(model_id)
    found: dict[str, np.ndarray] = {}
    took: dict[str, float] = {}
    contended: set[str] = set()  # the texts whose seconds were measured beside other processes' work
    for d in run_dirs:
        for row in iter_jsonl(cache_path(d, model_id, embedder.sha256)):
            sid = str(row.get("sample_id"))
            if sid in texts and row.get("text_sha256") == text_sha(texts[sid]) and sid not in found:
                found[sid] = np.asarray(row["vector"], dtype=np.float64)
                took[sid] = float(row.get("seconds") or 0.0)
                if row.get("contended") is True:
                    contended.add(sid)
    todo = [sid for sid in sorted(texts) if sid not in found]
    seconds: list[float] = []
    if todo:
        from bench.measure.contention import ContentionMeter

        out = cache_path(run_dirs[-1], model_id, embedder.sha256)
        out.parent.mkdir(parents=True, exist_ok=True)
        writer = SampleWriter(out)
        meter = ContentionMeter()
        try:
            for sid in todo:
                t0 = time.perf_counter()
                vec = embedder.embed(texts[sid])
                seconds.append(time.perf_counter() - t0)
                found[sid], took[sid] = vec, seconds[-1]
                busy = meter.window()  # other processes' CPU while this text was embedded
                if busy["contended"]:
                    contended.add(sid)
                writer.write({"sample_id": sid, "text_sha256": text_sha(texts[sid]), "model": model_id,
                              "model_sha256": embedder.sha256, "seconds": seconds[-1],
                              "contended": busy["contended"], "vector": [float(x) for x in vec]})
        finally:
            writer.close()
            embedder.close()
    else:
        embedder.close()
    info = {"model": model_id, "sha256": embedder.sha256, "cached": len(texts) - len(todo), "computed": len(todo),
            "seconds_mean": float(np.mean(list(took.values()))) if took else None,
            "contended_share": len(contended & set(texts)) / len(texts) if texts else None}
    return found, took, info
