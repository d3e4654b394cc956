"""Roofline arithmetic: how close decode gets to the memory-bandwidth ceiling, and prefill to peak compute.

Decoding one token at batch size 1 reads every weight once, plus the KV cache of the context so far:

    bytes_per_token = model_bytes + n_ctx_tokens * kv_bytes_per_token * (n_layers or 1)

so no machine can decode faster than

    decode_ceiling_tps = bandwidth_gbs * 1e9 / bytes_per_token

and the share of that ceiling a measured rate reaches is

    bandwidth_utilization = decode_tps * bytes_per_token / (bandwidth_gbs * 1e9)     (0..1)

Prefill is compute-bound: a forward pass costs about 2 FLOPs per parameter per token, so

    prefill_utilization = prefill_tps * 2 * params / (peak_tflops * 1e12)            (0..1)

Bandwidths are in GB/s (1e9 bytes), peaks in TFLOPS (1e12). A utilization above 1 means the model
(or part of it) was served from cache rather than memory, so it is capped at 1; pass clamp=False to
see the raw ratio.
"""

from __future__ import annotations


def kv_bytes_per_token(n_layers: int, n_kv_heads: int, head_dim: int, bytes_per_element: float = 2.0) -> int:
    """KV-cache bytes one token adds across all layers: K and V, each n_kv_heads * head_dim per layer."""
    return int(2 * n_layers * n_kv_heads * head_dim * bytes_per_element)


def bytes_per_token(model_bytes: int, n_layers: int | None = None, n_ctx_tokens: int = 0,
                    kv_bytes_per_token: int | None = None) -> int:
    """Bytes read from memory to decode one token: the weights once, plus the KV cache of the context.

    kv_bytes_per_token is per layer when n_layers is given, else already summed over the layers.
    Without it the KV term is left out (a fair approximation for short contexts).
    """
    if model_bytes < 0 or n_ctx_tokens < 0:
        raise ValueError("model_bytes and n_ctx_tokens cannot be negative")
    kv = 0
    if kv_bytes_per_token and n_ctx_tokens:
        kv = n_ctx_tokens * kv_bytes_per_token * (n_layers or 1)
    return int(model_bytes + kv)


def decode_ceiling_tps(bandwidth_gbs: float | None, bytes_per_token: int | float) -> float | None:
    """Fastest possible batch-1 decode in tokens/s: bandwidth / bytes per token; None when unknown."""
    if not bandwidth_gbs or bandwidth_gbs <= 0 or not bytes_per_token or bytes_per_token <= 0:
        return None
    return bandwidth_gbs * 1e9 / bytes_per_token


def bandwidth_utilization(decode_tps: float | None, bytes_per_token: int | float, bandwidth_gbs: float | None,
                          clamp: bool = True) -> float | None:
    """Share of the bandwidth ceiling that decode reached, 0..1; None when the bandwidth is unknown."""
    ceiling = decode_ceiling_tps(bandwidth_gbs, bytes_per_token)
    if ceiling is None or decode_tps is None or decode_tps < 0:
        return None
    ratio = decode_tps / ceiling
    return min(ratio, 1.0) if clamp else ratio


def prefill_utilization(prefill_tps: float | None, params: float | None, peak_tflops: float | None,
                        clamp: bool = True) -> float | None:
    """Share of peak compute that prefill reached (2 * params FLOPs per token), 0..1; None when unknown."""
    if prefill_tps is None or prefill_tps < 0 or not params or params <= 0 or not peak_tflops or peak_tflops <= 0:
        return None
    ratio = prefill_tps * 2 * params / (peak_tflops * 1e12)
    return min(ratio, 1.0) if clamp else ratio
