"""What one request used and cost: the tokens of a reply and the endpoint's prices.

A reply reports ``usage.prompt_tokens`` and ``usage.completion_tokens``; a
reply without them (some servers leave ``usage`` out) gets an estimate
instead, marked ``estimated``: prompt tokens from the request's messages as
the rate limiter estimates them (``estimate_tokens``), completion tokens from
the reply's text the same way (characters / ``CHARS_PER_TOKEN``, rounded up).
A reply that reports only ``total_tokens`` is split as ``total - estimated
prompt tokens`` (still marked estimated).

The cost of a request is ``input / 1e6 * price_in + output / 1e6 * price_out``
in US dollars, with the prices of the endpoint that served it (``Prices``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rewards.client.limits import CHARS_PER_TOKEN, estimate_tokens

__all__ = ["Prices", "RequestUsage", "request_cost", "request_usage"]


@dataclass(frozen=True)
class Prices:
    """US dollars per million prompt (``input``) and completion (``output``) tokens; both >= 0."""

    input_per_million: float = 0.0
    output_per_million: float = 0.0

    def __post_init__(self) -> None:
        if not (self.input_per_million >= 0 and self.output_per_million >= 0):
            raise ValueError(f"prices must be >= 0 US dollars per million tokens, got {self}")

    @property
    def priced(self) -> bool:
        """Whether a token costs anything here."""
        return self.input_per_million > 0 or self.output_per_million > 0


def request_cost(input_tokens: int, output_tokens: int, prices: Prices) -> float:
    """US dollars of one request: ``input/1e6 * price_in + output/1e6 * price_out``."""
    return input_tokens / 1e6 * prices.input_per_million + output_tokens / 1e6 * prices.output_per_million


@dataclass(frozen=True)
class RequestUsage:
    """The tokens of one request; ``estimated`` when the reply did not report them both."""

    input_tokens: int
    output_tokens: int
    estimated: bool = False

    def cost(self, prices: Prices) -> float:
        return request_cost(self.input_tokens, self.output_tokens, prices)


def request_usage(
    prompt_tokens: int | None,
    completion_tokens: int | None,
    total_tokens: int | None,
    messages: Sequence[dict[str, str]],
    content: str,
) -> RequestUsage:
    """The reply's reported tokens, or an estimate for what it left out (module docstring)."""
    if prompt_tokens is not None and completion_tokens is not None:
        return RequestUsage(prompt_tokens, completion_tokens)
    prompt = prompt_tokens if prompt_tokens is not None else estimate_tokens(messages, 0)
    if completion_tokens is not None:
        completion = completion_tokens
    elif total_tokens is not None and total_tokens >= prompt:
        completion = total_tokens - prompt
    else:
        completion = -(-len(content) // CHARS_PER_TOKEN)
    return RequestUsage(prompt, completion, estimated=True)
