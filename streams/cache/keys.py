"""What makes two requests the same: cache keys, idempotency keys and semantic namespaces.

A key hashes everything that determines the answer (the scope, the kind, the model class, the
messages or inputs, and the parameters that change the output) and nothing that does not (ids,
timestamps, deadlines, reply topics, metadata). The scope comes first and is hashed in, so one
tenant's key can never equal another tenant's unless both are in the same shared scope.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import orjson

from schemas.request import Request, Tier


@dataclass(frozen=True, slots=True)
class CacheKeys:
    """A request's cache identity."""

    key: str
    """The exact-cache (or idempotency) key, prefixed by its scope."""
    idempotent: bool
    """True when the key comes from the client's idempotency key rather than the content."""
    semantic_ns: str | None
    """Namespace of the semantic index that may answer it (None: semantic lookup not allowed)."""


def is_deterministic(request: Request) -> bool:
    """Embeddings always are; a chat answer is when it is sampled greedily (temperature 0)."""
    return request.kind == "embedding" or request.temperature == 0


def model_class(request: Request, tier: Tier) -> str:
    """What picks the model: the tier and quality floor the router applies, and the model asked for.

    A requested model is a preference, not a choice: the router may serve it elsewhere when the tier does
    not allow it or the floor rules it out, so the tier and floor stay in the class even then.
    """
    floor = "" if request.quality_floor is None else f"{request.quality_floor:.3f}"
    wanted = f"/model:{request.model}" if request.model else ""
    return f"tier:{tier}/floor:{floor}{wanted}"


def _digest(parts: object) -> str:
    return hashlib.sha256(orjson.dumps(parts, option=orjson.OPT_SORT_KEYS)).hexdigest()[:40]


def _output_params(request: Request) -> dict[str, object]:
    return {"max_tokens": request.max_tokens, "temperature": request.temperature}


def semantic_text(request: Request) -> str:
    """The text the semantic cache embeds: the conversation, one 'role: content' line per message."""
    return "\n".join(f"{m.role}: {m.content}" for m in request.messages or [])


def cache_keys(request: Request, *, scope: str, tier: Tier) -> CacheKeys | None:
    """The request's keys, or None when it must neither be answered from nor fill the cache.

    An idempotency key always applies (within its window), whatever the sampling. Otherwise only
    deterministic requests are cached, unless the request opts in, and never with ``cache_bypass``.
    """
    if request.idempotency_key:
        # The tenant is hashed in: a shared scope shares answers to the same content, never the answer to
        # another tenant's request that happens to use the same idempotency key.
        digest = _digest(["idem", request.tenant, request.idempotency_key])
        return CacheKeys(key=f"{scope}|idem|{digest}", idempotent=True, semantic_ns=None)
    if request.cache_bypass or not (is_deterministic(request) or request.cache_nondeterministic):
        return None
    mclass = model_class(request, tier)
    params = _output_params(request)
    if request.kind == "embedding":
        payload: object = request.input
    else:
        payload = [[m.role, m.content] for m in request.messages or []]
    digest = _digest(["exact", request.kind, mclass, params, payload])
    semantic_ns = None
    if request.allow_semantic_cache and request.kind == "chat":
        semantic_ns = f"{scope}|{_digest(['semantic', mclass, params])[:16]}"
    return CacheKeys(key=f"{scope}|{digest}", idempotent=False, semantic_ns=semantic_ns)


def scope_of_key(key: str) -> str:
    """The scope a key belongs to (everything before the first '|')."""
    return key.split("|", 1)[0]
