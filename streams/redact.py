"""Credential shapes, so a provider key never travels on: not in a metric label, not in an error message.

Provider error bodies can quote the key a request presented (OpenAI's 401 quotes it partly masked;
some OpenAI-compatible servers and proxies quote it whole). Their text becomes the ``message`` of a
typed error, which reaches the requester's reply topic, logs and the dead-letter topic. So every
provider error message passes through :func:`redact_keys` where it is built
(``providers.http.raise_for_status``). Shapes are not enough (a self-hosted server's key can be any
string), so the keys the providers are built with are registered too, and their literal values redacted.
"""

from __future__ import annotations

import re

REDACTED = "[redacted]"
# Prefixes providers give their keys: OpenAI/Anthropic (sk-, sk-proj-, sk-ant-), xAI, Hugging Face, Groq, AWS.
_PREFIXED = r"(?:sk-|sk_|xai-|hf_|gsk_)[A-Za-z0-9_\-.*]{6,}|AKIA[0-9A-Z]{16}"
# Long unbroken tokens: Azure's 32-hex keys, bearer tokens, JWT parts.
_LONG = r"[A-Za-z0-9_\-]{32,}"
_KEY_IN_TEXT = re.compile(rf"(?:\bBearer\s+\S+)|(?<![A-Za-z0-9_\-])(?:{_PREFIXED}|{_LONG})")
_KEY_LIKE = re.compile(r"^(sk-|sk_|xai-|hf_|gsk_|AKIA)|^[A-Za-z0-9]{32,}$")


def looks_like_key(text: str) -> bool:
    """True when ``text`` as a whole has the shape of a credential."""
    return bool(_KEY_LIKE.search(text))


_SECRETS: set[str] = set()
_MIN_SECRET = 6  # shorter values would redact ordinary words


def register_secret(value: str | None) -> None:
    """Remember a configured secret, so its literal value is redacted whatever its shape (a vLLM
    ``--api-key`` such as ``team-key-2024``, a base64 key with ``+`` and ``/``)."""
    if value and len(value) >= _MIN_SECRET:
        _SECRETS.add(value)


def redact_keys(text: str) -> str:
    """``text`` with every configured secret and every credential-shaped token (and ``Bearer <token>``)
    replaced by ``[redacted]``."""
    for secret in sorted(_SECRETS, key=len, reverse=True):  # longest first: one may contain another
        if secret in text:
            text = text.replace(secret, REDACTED)
    return _KEY_IN_TEXT.sub(REDACTED, text)


__all__ = ["REDACTED", "looks_like_key", "redact_keys", "register_secret"]
