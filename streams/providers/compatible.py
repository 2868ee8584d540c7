"""Servers that speak the OpenAI wire format at their own base URL: vLLM, xAI Grok, Hugging Face TGI.

Only the base URL and the (optional) bearer key differ from OpenAI, so this is ``OpenAIProvider``
with a name of its own. Self-hosted servers (vLLM, TGI) usually run without a key: ``api_key=None``
sends no ``Authorization`` header. Streamed usage still comes from the server's own stream
(``stream_options.include_usage``, which vLLM, xAI and TGI >= 2 honour); a server that sends no
usage makes the stream fail as malformed rather than report an estimate.
"""

from __future__ import annotations

from streams.providers.openai import OpenAIProvider


class OpenAICompatibleProvider(OpenAIProvider):
    """An adapter for any OpenAI-compatible server, addressed by ``spec.base_url`` (ending in ``/v1``)."""
