"""The registry builds adapters from the catalog by adapter name, with keys from settings."""

from __future__ import annotations

import logging

import pytest
from pydantic import SecretStr, ValidationError

from infra.emulator.testing import test_catalog
from streams.catalog import ProviderSpec
from streams.errors import ConfigError
from streams.providers.anthropic import AnthropicProvider
from streams.providers.azure import AzureOpenAIProvider
from streams.providers.compatible import OpenAICompatibleProvider
from streams.providers.local import LocalProvider
from streams.providers.ollama import OllamaProvider
from streams.providers.openai import OpenAIProvider
from streams.providers.registry import (
    ADAPTERS,
    UnknownAdapter,
    api_key_for,
    build_provider,
    build_providers,
    register_adapter,
)
from streams.settings import ProviderKeys, Settings

SECRET = "sk-test-do-not-log-0123456789"


def spec(**update: object) -> ProviderSpec:
    return test_catalog().providers["anthropic"].model_copy(update=update)


def test_catalog_adapters_map_to_classes() -> None:
    built = build_providers(test_catalog(), ProviderKeys())
    kinds = {name: type(p) for name, p in built.items()}
    assert kinds == {
        "openai": OpenAIProvider,
        "azure": AzureOpenAIProvider,
        "anthropic": AnthropicProvider,
        "ollama": OllamaProvider,
        "grok": OpenAICompatibleProvider,
        "huggingface": OpenAICompatibleProvider,
        "vllm": OpenAICompatibleProvider,
        "local": LocalProvider,
    }
    assert all(p.name == name for name, p in built.items())


def test_keys_come_from_settings_and_stay_secret(caplog: pytest.LogCaptureFixture) -> None:
    keys = ProviderKeys(anthropic=SecretStr(SECRET), azure_openai=SecretStr("az-" + SECRET))
    assert api_key_for(spec(), keys) == SecretStr(SECRET)
    assert api_key_for(spec(key=None), keys) is None
    assert api_key_for(spec(key="xai"), keys) is None  # configured name, no secret set: keyless
    with caplog.at_level(logging.DEBUG):
        provider = build_provider("anthropic", spec(), keys)
    assert SECRET not in repr(vars(provider))
    assert SECRET not in caplog.text
    azure = build_provider("azure", test_catalog().providers["azure"], keys)
    assert isinstance(azure, AzureOpenAIProvider)
    assert azure._auth_headers() == {"api-key": "az-" + SECRET}
    assert azure._chat_url("gpt-4o-mini").endswith(
        "/openai/deployments/gpt-4o-mini/chat/completions?api-version=2024-10-21"
    )


def test_unknown_adapter_or_key_is_a_configuration_error() -> None:
    with pytest.raises(UnknownAdapter, match="unknown adapter"):
        build_provider("x", spec(adapter="nope"), ProviderKeys())
    with pytest.raises(UnknownAdapter, match=r"not a settings\.keys field"):
        build_provider("x", spec(key="nope"), ProviderKeys())


def test_register_adapter_adds_a_provider_without_code_changes() -> None:
    register_adapter("fake_ollama", OllamaProvider)
    try:
        assert isinstance(build_provider("x", spec(adapter="fake_ollama"), ProviderKeys()), OllamaProvider)
    finally:
        del ADAPTERS["fake_ollama"]


SECRET = "sk-proj-SECRETSECRET1234"


def test_keys_are_stripped_of_a_trailing_newline() -> None:
    keys = ProviderKeys(openai=SecretStr(SECRET + "\n"), anthropic=f"  {SECRET}\r\n")  # type: ignore[arg-type]
    assert keys.openai is not None and keys.openai.get_secret_value() == SECRET
    assert keys.anthropic is not None and keys.anthropic.get_secret_value() == SECRET
    assert ProviderKeys(xai="\n").xai is None  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [f"{SECRET}\nX", f"sk {SECRET}", f"{SECRET}\x00"])
def test_a_key_with_whitespace_inside_is_a_config_error_that_never_quotes_it(bad: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(keys={"openai": bad})  # type: ignore[arg-type]
    assert "keys.openai" in str(caught.value) and SECRET not in str(caught.value)
    unchecked = ProviderKeys.model_construct(openai=SecretStr(bad))
    spec = test_catalog().providers["openai"]
    with pytest.raises(ConfigError) as err:
        build_provider("openai", spec, unchecked)
    assert SECRET not in str(err.value)
