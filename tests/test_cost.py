"""Cost: the shipped price table, token and machine-time costs, user overrides and price-file errors."""

from __future__ import annotations

import datetime as dt
import textwrap

import pytest

from bench.cost import (
    cost_per_1k,
    find_price,
    hourly_cost_usd,
    load_prices,
    token_cost_usd,
)
from bench.errors import UserInputError

EXPECTED = ["gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano", "claude-sonnet-4-5",
            "claude-haiku-4-5", "claude-3-5-haiku", "gemini-2.5-flash", "gemini-2.5-pro"]


def test_shipped_prices_are_dated_and_sourced():
    prices = load_prices()
    assert set(EXPECTED) <= set(prices)
    for key, p in prices.items():
        assert p.output_usd_per_mtok >= p.input_usd_per_mtok > 0, key
        assert p.source.startswith("https://"), key
        assert dt.date(2024, 1, 1) <= p.as_of <= dt.date.today(), key
        if p.cached_input_usd_per_mtok is not None:
            assert p.cached_input_usd_per_mtok < p.input_usd_per_mtok, key


def test_token_cost_arithmetic():
    # gpt-4o-mini: $0.15 in, $0.60 out, $0.075 cached, per million tokens
    assert token_cost_usd("gpt-4o-mini", 1_000_000, 0) == pytest.approx(0.15)
    assert token_cost_usd("gpt-4o-mini", 0, 1_000_000) == pytest.approx(0.60)
    assert token_cost_usd("gpt-4o-mini", 1000, 500) == pytest.approx((1000 * 0.15 + 500 * 0.60) / 1e6)
    # 400 of the 1000 prompt tokens came from the prompt cache
    assert token_cost_usd("gpt-4o-mini", 1000, 500, cached_tokens=400) == pytest.approx(
        (600 * 0.15 + 400 * 0.075 + 500 * 0.60) / 1e6)
    # no cached price known: cached tokens cost the input price
    uncached = token_cost_usd("gemini-2.5-flash", 1000, 0)
    assert token_cost_usd("gemini-2.5-flash", 1000, 0, cached_tokens=1000) == uncached


def test_aliases_and_unknown_keys():
    assert find_price("claude-3-5-haiku-20241022") == find_price("claude-3-5-haiku")
    with pytest.raises(UserInputError) as exc:
        token_cost_usd("gpt-4o-minii", 1, 1)
    assert exc.value.field == "price" and "gpt-4o-mini" in (exc.value.hint or "")
    with pytest.raises(ValueError):
        token_cost_usd("gpt-4o", -1, 0)


def test_user_file_overrides_and_adds(tmp_path, monkeypatch):
    extra = tmp_path / "prices.yaml"
    extra.write_text(textwrap.dedent("""\
        schema_version: 1
        prices:
          gpt-4o:
            provider: openai
            input_usd_per_mtok: 1.0
            output_usd_per_mtok: 2.0
            as_of: 2026-01-01
            source: https://example.com/negotiated
          my-model:
            provider: acme
            input_usd_per_mtok: 0.5
            output_usd_per_mtok: 0.5
            as_of: 2026-01-01
            source: https://example.com/acme
        """))
    prices = load_prices(extra)
    assert prices["gpt-4o"].input_usd_per_mtok == 1.0 and "gpt-4o-mini" in prices and "my-model" in prices
    assert token_cost_usd("my-model", 1_000_000, 1_000_000, prices=prices) == pytest.approx(1.0)
    monkeypatch.setenv("BENCH_PRICES", str(extra))
    assert token_cost_usd("gpt-4o", 1_000_000, 0) == pytest.approx(1.0)
    monkeypatch.delenv("BENCH_PRICES")
    assert token_cost_usd("gpt-4o", 1_000_000, 0) == pytest.approx(2.5)


def test_bad_price_file_names_file_line_and_field(tmp_path):
    bad = tmp_path / "prices.yaml"
    bad.write_text("schema_version: 1\nprices:\n  x:\n    provider: acme\n    input_usd_per_mtok: 1\n"
                   "    output_per_mtok: 2\n    as_of: 2026-01-01\n    source: https://example.com\n")
    with pytest.raises(UserInputError) as exc:
        load_prices(bad)
    assert exc.value.file == str(bad) and exc.value.line == 6 and exc.value.field == "prices.x.output_per_mtok"
    assert "output_usd_per_mtok" in (exc.value.hint or "")
    with pytest.raises(UserInputError, match="not found"):
        load_prices(tmp_path / "missing.yaml")


def test_hourly_cost_is_the_request_share_of_machine_time():
    assert hourly_cost_usd(3.6, 10) == pytest.approx(0.01)
    assert hourly_cost_usd(3.6, 10, concurrency=4) == pytest.approx(0.0025)
    assert hourly_cost_usd(None, 10) is None
    with pytest.raises(ValueError):
        hourly_cost_usd(1.0, 1.0, concurrency=0)


def test_cost_per_1k():
    assert cost_per_1k([0.001, 0.003]) == pytest.approx(2.0)
    assert cost_per_1k([None, 0.002]) == pytest.approx(2.0)
    assert cost_per_1k([None, None]) is None and cost_per_1k([]) is None
