"""Metrics derived from a sample's raw timestamps: TTFT, prefill and decode time, tokens per second."""

from __future__ import annotations

from typing import Any


def derive(timings: dict[str, Any], prompt_tokens: int, completion_tokens: int,
           cached_tokens: int | None = None) -> dict[str, float | None]:
    """From raw times (seconds after t_start) to the sample's derived numbers.

    - ttft_s: start to first token.
    - prefill_s: start to the end of prompt evaluation where the backend separates it, else the TTFT.
    - decode_s: first token to the last token; decode tokens/s counts the tokens after the first.
    - latency_s: start to end.
    """
    t_first = timings.get("t_first_token")
    t_end = timings.get("t_end")
    t_pre = timings.get("t_prefill_end")
    token_times = timings.get("token_times") or []
    ttft = t_first
    prefill = t_pre if t_pre is not None else t_first
    last = token_times[-1] if token_times else t_end
    decode = (last - t_first) if (t_first is not None and last is not None) else None
    evaluated = max(prompt_tokens - (cached_tokens or 0), 0)
    prefill_tps = evaluated / prefill if prefill and evaluated else None
    decode_tps = (completion_tokens - 1) / decode if decode and completion_tokens > 1 else None
    return {"ttft_s": ttft, "prefill_s": prefill, "decode_s": decode, "latency_s": t_end,
            "prefill_tps": prefill_tps, "decode_tps": decode_tps}
