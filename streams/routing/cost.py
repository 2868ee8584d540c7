"""What a request will cost before it is sent, and what it did cost after.

Before dispatch there are no token counts, so they are estimated from the request. tiktoken is the
exact tokenizer for OpenAI models, but it downloads its BPE files from the internet on first use
(``openaipublic.blob.core.windows.net``) and is not a dependency of this project; offline it cannot
load an encoding at all. The default estimate is therefore an approximation, documented in
docs/routing.md:

- text: ``ceil(ascii_chars / chars_per_token)`` plus one token per non-ASCII character (CJK and
  other scripts run close to a token per character; ``chars_per_token`` is 4 by default, the
  emulator's own count for ASCII text);
- chat: the sum over messages of text + ``tokens_per_message`` (role and separators), plus
  ``reply_priming_tokens`` once (the framing figures of OpenAI's chat format);
- output: ``max_tokens`` when the request sets it, else ``default_output_tokens``;
- embeddings: the sum over inputs, no output; the context check uses the largest single input.

``tiktoken_counter`` plugs the real tokenizer in where its files are cached
(``TIKTOKEN_CACHE_DIR``). After the call, cost is exact: the provider's reported usage times list
price (``actual_cost``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from schemas.request import Request
from schemas.response import TokenUsage
from streams.catalog import ModelSpec, RoutingSpec

TokenCounter = Callable[[str], int]
"""Counts the tokens of one text."""


def approx_tokens(text: str, chars_per_token: float = 4.0) -> int:
    """The approximate token count of ``text``: ceil(ASCII chars / chars_per_token) + non-ASCII chars."""
    if not text:
        return 0
    if text.isascii():
        return math.ceil(len(text) / chars_per_token)
    non_ascii = sum(1 for ch in text if ord(ch) > 127)
    return math.ceil((len(text) - non_ascii) / chars_per_token) + non_ascii


def approx_counter(chars_per_token: float = 4.0) -> TokenCounter:
    """``approx_tokens`` with a fixed ratio, as a counter."""
    return lambda text: approx_tokens(text, chars_per_token)


def tiktoken_counter(encoding: str = "o200k_base") -> TokenCounter | None:
    """The exact tiktoken counter, or None when tiktoken or its BPE file is not available offline."""
    try:
        import tiktoken  # type: ignore[import-not-found]

        enc = tiktoken.get_encoding(encoding)
    except (ImportError, OSError, ValueError):  # not installed, BPE file not reachable, unknown name
        return None
    return lambda text: len(enc.encode(text, disallowed_special=()))


@dataclass(frozen=True, slots=True)
class TokenEstimate:
    """Tokens a request is expected to use, before any provider saw it."""

    input_tokens: int
    output_tokens: int
    context_tokens: int
    """What must fit the model's context window: input + output for chat, the largest input for embeddings."""

    @property
    def total_tokens(self) -> int:
        """Input plus output: what the request takes from a provider's tokens-per-minute limit."""
        return self.input_tokens + self.output_tokens


def estimate_tokens(
    request: Request, spec: RoutingSpec | None = None, counter: TokenCounter | None = None
) -> TokenEstimate:
    """The token estimate of ``request`` (see the module docstring for the method)."""
    spec = spec or RoutingSpec()
    count = counter or approx_counter(spec.chars_per_token)
    if request.kind == "embedding":
        sizes = [count(text) for text in request.input or []]
        return TokenEstimate(input_tokens=sum(sizes), output_tokens=0, context_tokens=max(sizes, default=0))
    messages = request.messages or []
    input_tokens = sum(count(m.content) + spec.tokens_per_message for m in messages) + spec.reply_priming_tokens
    output_tokens = request.max_tokens if request.max_tokens is not None else spec.default_output_tokens
    return TokenEstimate(input_tokens, output_tokens, input_tokens + output_tokens)


def estimate_cost(model: ModelSpec, estimate: TokenEstimate) -> float:
    """USD the request is expected to cost on ``model``."""
    return model.cost_usd(estimate.input_tokens, estimate.output_tokens)


def actual_cost(model: ModelSpec, usage: TokenUsage) -> float:
    """USD a call cost, from the usage the provider reported."""
    return model.cost_usd(usage.input_tokens, usage.output_tokens)


def format_usd(amount: float) -> str:
    """A cost for humans: ``$0.000012``; amounts under a millionth in scientific notation."""
    if amount == 0:
        return "$0"
    if amount < 1e-6:
        return f"${amount:.2e}"
    if amount < 0.01:
        return f"${amount:.6f}".rstrip("0")
    return f"${amount:,.4f}".rstrip("0").rstrip(".")
