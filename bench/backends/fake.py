"""A deterministic fake backend for unit tests: answers from the reference, right with a set probability."""

from __future__ import annotations

import hashlib
import json
import re
import time
from typing import Any

from bench.backends.base import Generation, LoadInfo, OnResult, Request


def _u(key: str) -> float:
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64


def _text(req: Request) -> str:
    return "\n".join(str(m.get("content", "")) for m in req.messages or []) + (req.prompt or "")


def _wrong(reference: Any) -> str:
    if isinstance(reference, dict):
        damaged = dict(reference)
        for k in list(damaged)[:2]:
            damaged[k] = None
        return json.dumps(damaged)
    text = str(reference)
    return "unsure" if len(text) < 12 else text[: len(text) // 3]


class FakeBackend:
    """Right on a share `accuracy` of requests (decided by a hash of the request id), with logprobs that
    are higher when right, so calibration has a real signal to find. Timings are synthetic, not slept."""

    kind = "fake"
    locality = "local"
    concurrency = 1

    def __init__(self, config: Any, model: Any = None):
        self.config = config
        self.model = model

    def load(self) -> LoadInfo:
        if self.config.fail_load:
            from bench.errors import ModelError

            raise ModelError("fake backend told to fail at load")
        return LoadInfo(load_s=0.01, chat=True)

    def _one(self, req: Request) -> Generation:
        if self.config.delay_s:
            time.sleep(self.config.delay_s)
        model_id = getattr(self.model, "id", "") or ""
        accuracy = self.config.accuracy_by_model.get(model_id, self.config.accuracy)
        if self.config.hard_pattern and re.search(self.config.hard_pattern, _text(req)):
            accuracy = self.config.accuracy_hard_by_model.get(model_id, accuracy)
        right = _u(f"{model_id}:{req.id}") < accuracy
        ref = req.reference
        text = (json.dumps(ref) if isinstance(ref, dict) else str(ref)) if right else _wrong(ref)
        n = max(1, len(text) // 4)
        tps = self.config.tokens_per_s_by_model.get(model_id, self.config.tokens_per_s)
        prompt_tokens = sum(len(m["content"]) for m in req.messages) // 4
        t_pre = prompt_tokens / (tps * 10)
        times = [t_pre + i / tps for i in range(n)]
        base_lp = -0.05 if right else -1.5
        lps = [base_lp - 0.3 * _u(f"{req.id}:{i}") for i in range(n)]
        return Generation(request_id=req.id, text=text, prompt_tokens=prompt_tokens, completion_tokens=n,
                          cached_tokens=0, token_logprobs=lps, t_start=time.time(), t_prefill_end=t_pre,
                          t_first_token=times[0], token_times=times, t_end=times[-1] + 1e-4, finish_reason="stop")

    def generate(self, requests: list[Request], on_result: OnResult | None = None) -> list[Generation]:
        out = []
        for req in requests:
            gen = self._one(req)
            if on_result:
                on_result(gen)
            out.append(gen)
        return out

    def close(self) -> None:
        pass
