"""Roofline: bytes per decoded token, the bandwidth ceiling and the utilizations."""

from __future__ import annotations

import pytest

from bench.roofline import (
    bandwidth_utilization,
    bytes_per_token,
    decode_ceiling_tps,
    kv_bytes_per_token,
    prefill_utilization,
)


def test_bytes_per_token_is_weights_plus_kv_read():
    assert bytes_per_token(1_000_000) == 1_000_000
    assert bytes_per_token(1_000_000, n_ctx_tokens=100) == 1_000_000  # KV size unknown: left out
    assert bytes_per_token(1_000_000, n_ctx_tokens=100, kv_bytes_per_token=50) == 1_005_000
    assert bytes_per_token(1_000_000, n_layers=4, n_ctx_tokens=100, kv_bytes_per_token=50) == 1_020_000
    with pytest.raises(ValueError):
        bytes_per_token(-1)


def test_kv_bytes_per_token():
    # SmolLM2-135M: 30 layers, 3 KV heads of 64, f16 cache
    assert kv_bytes_per_token(30, 3, 64) == 2 * 30 * 3 * 64 * 2


def test_decode_ceiling():
    assert decode_ceiling_tps(100, 1e9) == pytest.approx(100.0)
    assert decode_ceiling_tps(None, 1e9) is None and decode_ceiling_tps(0, 1e9) is None
    assert decode_ceiling_tps(100, 0) is None


def test_bandwidth_utilization():
    assert bandwidth_utilization(25, 1e9, 100) == pytest.approx(0.25)
    assert bandwidth_utilization(25, 1e9, None) is None
    assert bandwidth_utilization(None, 1e9, 100) is None
    # a model served from cache beats the memory ceiling: capped unless asked for the raw ratio
    assert bandwidth_utilization(300, 1e9, 100) == 1.0
    assert bandwidth_utilization(300, 1e9, 100, clamp=False) == pytest.approx(3.0)


def test_prefill_utilization():
    # 1000 tok/s * 2 * 1e9 params = 2 TFLOP/s of a 10 TFLOPS peak
    assert prefill_utilization(1000, 1e9, 10) == pytest.approx(0.2)
    assert prefill_utilization(1000, 1e9, None) is None
    assert prefill_utilization(None, 1e9, 10) is None
    assert prefill_utilization(0, 1e9, 10) == 0.0
