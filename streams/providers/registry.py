"""Build ``Provider`` instances from the catalog and the configured keys.

The catalog's ``adapter`` field names a class in ``ADAPTERS``; nothing else branches on a provider's
name. A provider's ``key`` names a field of ``settings.keys`` (``ProviderKeys``); a missing secret
means "no key" (the emulator, or a self-hosted server), never an error. Keys stay ``SecretStr`` and
are unwrapped only inside adapters, when a header is built.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from pydantic import SecretStr

from streams.catalog import Catalog, ProviderSpec
from streams.errors import ConfigError
from streams.providers.anthropic import AnthropicProvider
from streams.providers.azure import AzureOpenAIProvider
from streams.providers.base import Provider
from streams.providers.compatible import OpenAICompatibleProvider
from streams.providers.local import LocalProvider
from streams.providers.ollama import OllamaProvider
from streams.providers.openai import OpenAIProvider
from streams.redact import register_secret
from streams.settings import ProviderKeys, clean_api_key


class ProviderFactory(Protocol):
    """What an adapter class looks like to the registry: ``cls(name, spec, api_key)``."""

    def __call__(self, name: str, spec: ProviderSpec, api_key: SecretStr | None) -> Provider: ...


ADAPTERS: dict[str, ProviderFactory] = {
    "openai": OpenAIProvider,
    "azure": AzureOpenAIProvider,
    "anthropic": AnthropicProvider,
    "ollama": OllamaProvider,
    "compatible": OpenAICompatibleProvider,
    "local": LocalProvider,
}
"""Catalog ``adapter`` value (the module name under streams/providers/) -> adapter class."""


class UnknownAdapter(ValueError):
    """The catalog names an adapter or a key that does not exist (a configuration error, found at start-up)."""


def register_adapter(name: str, factory: ProviderFactory) -> None:
    """Make ``adapter = "<name>"`` usable in the catalog (tests and plug-ins)."""
    ADAPTERS[name] = factory


def api_key_for(spec: ProviderSpec, keys: ProviderKeys) -> SecretStr | None:
    """The secret ``spec.key`` names in ``keys``, or None when the provider takes none or it is unset."""
    if spec.key is None:
        return None
    if spec.key not in type(keys).model_fields:
        known = ", ".join(sorted(type(keys).model_fields))
        raise UnknownAdapter(f"provider key {spec.key!r} is not a settings.keys field (known: {known})")
    value = getattr(keys, spec.key)
    if not isinstance(value, SecretStr):
        return None
    try:  # again here: keys built without validation (model_construct) must not reach a header unchecked
        key = clean_api_key(value, f"keys.{spec.key}")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    register_secret(key.get_secret_value() if key is not None else None)  # redacted from error text by value
    return key


def build_provider(name: str, spec: ProviderSpec, keys: ProviderKeys) -> Provider:
    """One adapter instance for the catalog entry ``name``."""
    factory = ADAPTERS.get(spec.adapter)
    if factory is None:
        raise UnknownAdapter(
            f"provider {name!r}: unknown adapter {spec.adapter!r} (known: {', '.join(sorted(ADAPTERS))})"
        )
    return factory(name, spec, api_key_for(spec, keys))


def build_providers(
    catalog: Catalog, keys: ProviderKeys, only: Mapping[str, object] | None = None
) -> dict[str, Provider]:
    """An adapter for every provider in the catalog (or only those named in ``only``), by name.

    Call ``aclose()`` on each when the worker stops.
    """
    return {
        name: build_provider(name, spec, keys)
        for name, spec in catalog.providers.items()
        if only is None or name in only
    }
