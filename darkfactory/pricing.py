"""List prices per model, and the cost of a call's usage at them.

The built-in table covers the default model (`constants.DEFAULT_MODEL`) and the current Claude families;
`DARKFACTORY_PRICES_FILE` names a TOML file whose entries replace or add to it, so an operator can follow a
price change or a negotiated rate without a release:

    [models."claude-sonnet-5-5"]
    input = 2.0          # USD per million input tokens
    output = 10.0
    cache_write = 2.5    # 5-minute cache writes
    cache_read = 0.1

A model name matches the longest entry that equals it or starts it followed by `-` (`claude-sonnet-4-5-20250929`
takes `claude-sonnet-4-5`, else `claude-sonnet-4`). A model with no entry has no cost: `None`, shown as
"unknown", never $0. These are estimates for dashboards and budgets, not an invoice.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from darkfactory.contracts import CallPurpose, Usage

__all__ = [
    "PRICES_USD_PER_MTOK",
    "Price",
    "PriceTable",
    "PricesError",
    "PricingSettings",
    "estimate_cost_usd",
    "is_scripted",
    "load_prices",
    "price_for",
    "priced_usage",
]

SCRIPTED_MODEL = "scripted"
"""What a scripted client answers as its model (and the prefix of a scripted RunConfig.model)."""


class Price(BaseModel):
    """USD per million tokens."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    input: float = Field(ge=0)
    output: float = Field(ge=0)
    cache_write: float = Field(ge=0)
    """Writing to the 5-minute cache (the factory's breakpoints use the default TTL)."""
    cache_read: float = Field(ge=0)
    """Reading from the cache (a hit, which also refreshes the entry)."""


PriceTable = Mapping[str, Price]
"""Model name (or name prefix) -> list price."""


def _price(input: float, output: float, cache_write: float, cache_read: float) -> Price:
    return Price(input=input, output=output, cache_write=cache_write, cache_read=cache_read)


PRICES_USD_PER_MTOK: dict[str, Price] = {
    # Anthropic's published list prices (platform.claude.com model and pricing pages), 5-minute cache writes.
    # Sonnet 5.5's cache reads went from $0.20 to $0.10 on 2026-10-07.
    "claude-sonnet-5-5": _price(2.0, 10.0, 2.50, 0.10),
    "claude-sonnet-5": _price(2.0, 10.0, 2.50, 0.20),
    "claude-sonnet-4": _price(3.0, 15.0, 3.75, 0.30),
    "claude-opus-5-5": _price(4.0, 20.0, 5.0, 0.20),
    "claude-opus-5": _price(5.0, 25.0, 6.25, 0.50),
    "claude-opus-4-8": _price(5.0, 25.0, 6.25, 0.50),
    "claude-opus-4-7": _price(5.0, 25.0, 6.25, 0.50),
    "claude-opus-4-6": _price(5.0, 25.0, 6.25, 0.50),
    "claude-opus-4-5": _price(5.0, 25.0, 6.25, 0.50),
    "claude-opus-4": _price(15.0, 75.0, 18.75, 1.50),
    # Haiku 5.5 at its rate for prompts up to 100K tokens; longer prompts cost more and are underestimated.
    "claude-haiku-5-5": _price(0.10, 0.50, 0.125, 0.01),
    "claude-haiku-4": _price(1.0, 5.0, 1.25, 0.10),
    "claude-3-5-haiku": _price(0.80, 4.0, 1.0, 0.08),
}
"""The built-in table; `load_prices()` applies the operator's file over it."""


class PricesError(ValueError):
    """The prices file cannot be read or is invalid; the message names the file."""


class PricingSettings(BaseSettings):
    """Where the operator's price overrides live."""

    model_config = SettingsConfigDict(env_prefix="DARKFACTORY_", extra="ignore", env_ignore_empty=True)

    prices_file: Path | None = None
    """`DARKFACTORY_PRICES_FILE`: a TOML file with `[models."<name>"]` tables (input, output, cache_write,
    cache_read in USD per million tokens) that replace or add to the built-in prices."""


class _PricesFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    models: dict[str, Price] = Field(default_factory=dict)


def load_prices(settings: PricingSettings | None = None) -> dict[str, Price]:
    """The built-in prices with the operator's file (if any) applied over them."""
    path = (settings or PricingSettings()).prices_file
    table = dict(PRICES_USD_PER_MTOK)
    if path is None:
        return table
    try:
        raw = tomllib.loads(path.expanduser().read_text(encoding="utf-8"))
    except OSError as exc:
        raise PricesError(f"DARKFACTORY_PRICES_FILE={path}: cannot read it ({exc.strerror or exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise PricesError(f"DARKFACTORY_PRICES_FILE={path} is not valid TOML: {exc}") from None
    try:
        overrides = _PricesFile.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}" for error in exc.errors()[:5]
        )
        raise PricesError(f"DARKFACTORY_PRICES_FILE={path} is invalid: {problems}") from None
    table.update(overrides.models)
    return table


def price_for(model: str, prices: PriceTable | None = None) -> Price | None:
    """The price of `model`: its own entry, else the longest entry naming a family it belongs to."""
    table = PRICES_USD_PER_MTOK if prices is None else prices
    matches = [name for name in table if model == name or model.startswith(name + "-")]
    return table[max(matches, key=len)] if matches else None


def is_scripted(model: str) -> bool:
    return model == SCRIPTED_MODEL or model.startswith(SCRIPTED_MODEL + ":")


def estimate_cost_usd(model: str, usage: Usage, prices: PriceTable | None = None) -> float | None:
    """List-price cost of `usage` on `model`: 0.0 for a scripted model, None for a model without a price."""
    if is_scripted(model):
        return 0.0
    price = price_for(model, prices)
    if price is None:
        return None
    return (
        usage.input_tokens * price.input
        + usage.output_tokens * price.output
        + usage.cache_creation_input_tokens * price.cache_write
        + usage.cache_read_input_tokens * price.cache_read
    ) / 1_000_000


def priced_usage(usage: Usage, *, model: str, purpose: CallPurpose, prices: PriceTable | None = None) -> Usage:
    """One call's usage with its cost and its purpose filled in (the call is left unpriced if `model` has no
    price), ready to be added up by the workflows."""
    cost = estimate_cost_usd(model, usage, prices)
    part = Usage(
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cache_creation_input_tokens=usage.cache_creation_input_tokens,
        cache_read_input_tokens=usage.cache_read_input_tokens,
        calls=usage.calls,
        cost_usd=cost or 0.0,
        priced_calls=usage.calls if cost is not None else 0,
    )
    return part.model_copy(update={"by_purpose": {purpose: part}})
