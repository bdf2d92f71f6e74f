"""Token and cost accounting: a price table, image-token estimates, spend so far."""

from __future__ import annotations

import math
from dataclasses import dataclass

from pydantic import BaseModel, Field


class Price(BaseModel):
    """USD per million tokens."""

    input: float = Field(ge=0, description="USD per 1M input (prompt) tokens")
    output: float = Field(ge=0, description="USD per 1M output (completion) tokens")


# OpenAI list prices (USD per 1M tokens, standard tier). Override or extend per model with
# `prices:` in the label config. A model not listed (e.g. a self-hosted vLLM one) has no known
# price: runs and --dry-run say "price unknown" rather than $0.00 (list it with 0 if it is free).
DEFAULT_PRICES: dict[str, Price] = {
    "gpt-4.1": Price(input=2.00, output=8.00),
    "gpt-4.1-mini": Price(input=0.40, output=1.60),
    "gpt-4.1-nano": Price(input=0.10, output=0.40),
    "gpt-4o": Price(input=2.50, output=10.00),
    "gpt-4o-mini": Price(input=0.15, output=0.60),
}
BATCH_DISCOUNT = 0.5  # the Batch API bills half the standard price


def price_for(model: str, prices: dict[str, Price]) -> Price | None:
    """The price of a model: an exact entry, else the longest listed prefix (dated snapshots);
    None when neither the table nor the config lists it."""
    table = {**DEFAULT_PRICES, **prices}
    if model in table:
        return table[model]
    matches = [name for name in table if model.startswith(name)]
    return table[max(matches, key=len)] if matches else None


def request_cost(
    price: Price, prompt_tokens: int, completion_tokens: int, batch: bool = False
) -> float:
    """USD for one request's tokens."""
    cost = (prompt_tokens * price.input + completion_tokens * price.output) / 1_000_000
    return cost * (BATCH_DISCOUNT if batch else 1.0)


def image_tokens(model: str, width: int, height: int, coords: str = "") -> int:
    """Estimated prompt tokens of one image as the model counts them."""
    if coords == "qwen2.5-vl" or "qwen" in model.lower():
        return max(1, (width // 28) * (height // 28))  # one token per 28x28 patch after merging
    if any(tag in model for tag in ("-mini", "-nano")) and model.startswith("gpt-4.1"):
        patches = math.ceil(width / 32) * math.ceil(height / 32)
        return min(patches, 1536)  # 32 px patches, capped (OpenAI's rule for these models)
    # GPT-4o / GPT-4.1 "high" detail: fit in 2048x2048, shortest side 768, 170 per 512 tile + 85.
    scale = min(1.0, 2048 / max(width, height))
    w, h = width * scale, height * scale
    scale = min(1.0, 768 / min(w, h))
    w, h = w * scale, h * scale
    return 85 + 170 * math.ceil(w / 512) * math.ceil(h / 512)


def text_tokens(text: str) -> int:
    """Estimated tokens of a text (about 4 characters per token)."""
    return max(1, len(text) // 4)


@dataclass
class Spend:
    """Tokens and money spent so far, per teacher."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    usd: float = 0.0
    priced: bool = True  # False once a request of a model without a known price is counted

    def add(
        self, price: Price | None, prompt_tokens: int, completion_tokens: int, batch: bool = False
    ) -> None:
        """Account one request (its tokens only, when the price is unknown)."""
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens
        if price is None:
            self.priced = False
        else:
            self.usd += request_cost(price, prompt_tokens, completion_tokens, batch)


PRICE_UNKNOWN = "price unknown (list the model under `prices:` in the label config)"


def format_usd(usd: float | None) -> str:
    """$1.23, or 'price unknown' for a model without a price."""
    return PRICE_UNKNOWN if usd is None else f"${usd:.2f}"
