"""Dollars per request: token prices for cloud models, the machine's hourly price for self-hosted ones."""

from __future__ import annotations

import datetime as dt
import functools
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bench.config.suite import OpenAIBackendConfig
from bench.config.yamlpos import line_for, load_yaml_with_lines
from bench.errors import BenchError, UserInputError, did_you_mean

if TYPE_CHECKING:
    from bench.matrix import CellPlan

PRICES_FILE = Path(__file__).parent / "prices.yaml"
PRICES_ENV = "BENCH_PRICES"  # a user price file whose entries override the shipped ones


class Price(BaseModel):
    """One model's token prices (USD per million tokens) and where and when they were listed."""

    model_config = ConfigDict(extra="forbid")

    provider: str
    input_usd_per_mtok: float = Field(..., ge=0)
    output_usd_per_mtok: float = Field(..., ge=0)
    cached_input_usd_per_mtok: float | None = Field(None, ge=0, description="prompt-cache hits; default: input price")
    aliases: list[str] = []
    as_of: dt.date
    source: str = Field(..., pattern=r"^https?://")
    note: str = ""


class PriceFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = 1
    prices: dict[str, Price]


def _load_file(path: Path) -> dict[str, Price]:
    data, lines = load_yaml_with_lines(path)
    if not isinstance(data, dict):
        raise UserInputError("a price file must be a YAML mapping with a 'prices' key", file=str(path))
    try:
        return PriceFile.model_validate(data).prices
    except ValidationError as exc:
        # an unknown key first: it is usually the misspelling behind a "missing" error
        first = sorted(exc.errors(), key=lambda e: e.get("type") != "extra_forbidden")[0]
        keys = tuple(k for k in first["loc"] if isinstance(k, (str, int)))
        hint = None
        if first.get("type") == "extra_forbidden":
            known = Price.model_fields if len(keys) == 3 else PriceFile.model_fields
            hint = did_you_mean(str(keys[-1]), known)
        message = {"extra_forbidden": "unknown key", "missing": "required key is missing"}.get(
            first.get("type", ""), str(first.get("msg", "invalid value")).removeprefix("Value error, "))
        raise UserInputError(message, file=str(path), line=line_for(lines, keys),
                             field=".".join(str(k) for k in keys) or None, hint=hint) from None


@functools.lru_cache(maxsize=8)
def _cached(paths: tuple[str, ...], stamps: tuple[float, ...]) -> dict[str, Price]:
    prices: dict[str, Price] = {}
    for p in paths:
        prices.update(_load_file(Path(p)))
    return prices


def load_prices(extra_file: str | Path | None = None) -> dict[str, Price]:
    """The shipped price table, with entries from extra_file (or $BENCH_PRICES) replacing same-named ones."""
    extra = extra_file if extra_file is not None else os.environ.get(PRICES_ENV) or None
    paths = [PRICES_FILE] + ([Path(extra).expanduser()] if extra else [])
    for p in paths[1:]:
        if not p.is_file():
            raise UserInputError("price file not found", file=str(p))
    stamps = tuple(p.stat().st_mtime for p in paths)
    return dict(_cached(tuple(str(p) for p in paths), stamps))


def find_price(price_key: str, prices: dict[str, Price] | None = None) -> Price:
    """The entry for a model name or one of its aliases; an unknown name suggests the closest."""
    prices = load_prices() if prices is None else prices
    if price_key in prices:
        return prices[price_key]
    for price in prices.values():
        if price_key in price.aliases:
            return price
    names = list(prices) + [a for p in prices.values() for a in p.aliases]
    fallback = f"add it to a price file named by ${PRICES_ENV}, or set input_usd_per_mtok and output_usd_per_mtok"
    raise UserInputError(f"no price for {price_key!r} in the price table", field="price",
                         hint=did_you_mean(price_key, names) or fallback)


def token_cost_usd(price_key: str, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0,
                   prices: dict[str, Price] | None = None) -> float:
    """Dollars for one request. cached_tokens are the part of prompt_tokens served from the prompt cache.

    cost = ((prompt - cached) * input + cached * cached_input + completion * output) / 1e6
    """
    if min(prompt_tokens, completion_tokens, cached_tokens) < 0:
        raise ValueError("token counts cannot be negative")
    price = find_price(price_key, prices)
    cached = min(cached_tokens, prompt_tokens)
    cached_rate = price.cached_input_usd_per_mtok
    if cached_rate is None:
        cached_rate = price.input_usd_per_mtok
    return ((prompt_tokens - cached) * price.input_usd_per_mtok + cached * cached_rate
            + completion_tokens * price.output_usd_per_mtok) / 1e6


def hourly_cost_usd(cost_per_hour_usd: float | None, wall_s: float, concurrency: int = 1) -> float | None:
    """One request's share of machine time: cost_per_hour * wall_s / 3600 / concurrency.

    With `concurrency` requests in flight at once, each holds the machine for 1/concurrency of its
    wall time. None when the machine's price is unknown.
    """
    if cost_per_hour_usd is None:
        return None
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    return cost_per_hour_usd * max(0.0, wall_s) / 3600 / concurrency


def cost_per_1k(costs: list[float | None]) -> float | None:
    """Mean cost of a request times 1000, over the requests whose cost is known; None when none is."""
    known = [c for c in costs if c is not None]
    if not known:
        return None
    return sum(known) / len(known) * 1000


class CostModel:
    """Dollars per request: token prices for cloud tiers, the machine's hourly price for self-hosted ones."""

    def __init__(self, plan: CellPlan, profile: Any, profiles: dict[str, Any]):
        self.price_key: str | None = None
        self.hourly: float | None = None
        self.inline: tuple[float, float] | None = None
        b = plan.backend
        if isinstance(b, OpenAIBackendConfig):
            if b.hardware and b.hardware in profiles:
                self.hourly = profiles[b.hardware].cost_per_hour_usd
            elif b.input_usd_per_mtok is not None and b.output_usd_per_mtok is not None:
                self.inline = (b.input_usd_per_mtok, b.output_usd_per_mtok)
            else:
                self.price_key = b.price or b.model
        elif profile is not None:
            self.hourly = profile.cost_per_hour_usd
        self.concurrency = getattr(b, "concurrency", 1) or 1

    def cost(self, gen: dict[str, Any]) -> float | None:
        if self.hourly is not None:
            wall = gen.get("extra", {}).get("wall_s") or gen.get("t_end") or 0.0
            # a request decoded beside others (llama.cpp --parallel) holds the machine for its share of the time
            return hourly_cost_usd(self.hourly, wall, gen.get("concurrency") or self.concurrency)
        if self.inline:
            i, o = self.inline
            return ((gen.get("prompt_tokens") or 0) * i + (gen.get("completion_tokens") or 0) * o) / 1e6
        if self.price_key:
            try:
                return token_cost_usd(self.price_key, gen.get("prompt_tokens") or 0,
                                      gen.get("completion_tokens") or 0, gen.get("cached_tokens") or 0)
            except BenchError:
                return None
        return None
