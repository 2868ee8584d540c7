"""Provider keys never travel on in error messages: shapes, the wire, and the typed errors built from it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
import pytest
from pydantic import SecretStr

from infra.emulator.testing import RunningEmulator, running_emulator, test_catalog
from schemas.request import Message, Request
from streams.errors import AuthenticationFailed, ProviderError
from streams.providers.http import raise_for_status
from streams.providers.registry import build_provider
from streams.redact import REDACTED, looks_like_key, redact_keys
from streams.settings import ProviderKeys

KEY = "sk-proj-Zx81Qm3LrT0vB6nYp2Kd9sWfHa4Jc7Ue"
AZURE_KEY = "0f3c9a7e2b8d4c61a5e9f0b7d3c2a1e4"


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        (f"Incorrect API key provided: {KEY[:8]}{'*' * 26}{KEY[-4:]}. You can find it elsewhere.", KEY[-4:]),
        (f"invalid api key {KEY}", KEY[8:20]),
        (f"Access denied due to invalid subscription key {AZURE_KEY}.", AZURE_KEY),
        ("upstream said: Authorization: Bearer eyJhbGciOi.eyJzdWIiOi.c2lnbmF0dXJl", "eyJhbGciOi"),
        ("x-api-key sk-ant-api03-AbCdEfGhIjKlMnOp rejected", "AbCdEfGhIjKlMnOp"),
        ("hf_AbCdEfGhIjKlMnOpQrSt is not valid", "AbCdEfGhIjKlMnOpQrSt"),
    ],
)
def test_credentials_in_text_are_redacted(text: str, secret: str) -> None:
    out = redact_keys(text)
    assert secret not in out and REDACTED in out


def test_ordinary_error_text_is_left_alone() -> None:
    text = "This model's maximum context length is 128000 tokens. Request req-8f2a91 at 12:00 failed (code 429)."
    assert redact_keys(text) == text
    assert looks_like_key(KEY) and looks_like_key(AZURE_KEY) and not looks_like_key("gpt-4o-mini")


def test_a_body_that_quotes_the_whole_key_gives_an_error_without_it() -> None:
    body = orjson.dumps({"error": {"message": f"key {KEY} is revoked", "code": f"revoked:{KEY}"}})
    with pytest.raises(AuthenticationFailed) as caught:
        raise_for_status("compat", 401, {}, body)
    assert KEY not in caught.value.message and KEY[8:20] not in str(caught.value)
    with pytest.raises(ProviderError) as caught_raw:
        raise_for_status("compat", 502, {}, f"<html>bad gateway for Bearer {KEY}</html>".encode())
    assert KEY[8:20] not in caught_raw.value.message


def test_a_configured_key_of_any_shape_is_redacted_by_its_value() -> None:
    """A self-hosted server's key can be any string; the shapes miss it, its configured value does not."""
    odd = "team-key-2024"  # no known prefix, too short and too broken up for the long-token shape
    body = orjson.dumps({"error": {"message": f"Incorrect API key provided: {odd}"}})
    with pytest.raises(AuthenticationFailed) as before:
        raise_for_status("vllm", 401, {}, body)
    assert odd in before.value.message  # what the shapes alone let through
    spec = test_catalog().providers["openai"].model_copy(update={"key": "huggingface"})
    build_provider("vllm", spec, ProviderKeys(huggingface=SecretStr(odd)))
    with pytest.raises(AuthenticationFailed) as after:
        raise_for_status("vllm", 401, {}, body)
    assert odd not in after.value.message and REDACTED in after.value.message


@pytest.fixture
async def emulator() -> AsyncIterator[RunningEmulator]:
    async with running_emulator() as emu:
        yield emu


async def test_openais_401_quotes_the_key_and_the_typed_error_does_not(emulator: RunningEmulator) -> None:
    spec = test_catalog().with_base_url_override(emulator.url).providers["openai"]
    provider = build_provider("openai", spec, ProviderKeys(openai=SecretStr(KEY)))
    emulator.set_profile("openai", error_rates={"401": 1.0})
    request = Request(request_id="auth-1", tenant="acme", messages=[Message(role="user", content="hello")])
    try:
        with pytest.raises(AuthenticationFailed) as caught:
            await provider.complete(request, "gpt-4o-mini")
    finally:
        await provider.aclose()
    message = caught.value.message
    assert "Incorrect API key provided" in message and REDACTED in message  # the wire did quote it
    assert KEY[-4:] not in message and KEY[:8] not in message
