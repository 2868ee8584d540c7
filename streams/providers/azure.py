"""Azure OpenAI: the OpenAI wire format behind per-deployment URLs and an ``api-key`` header.

    POST {base_url}/openai/deployments/{deployment}/chat/completions?api-version={api_version}
    POST {base_url}/openai/deployments/{deployment}/embeddings?api-version={api_version}

``base_url`` is the resource endpoint (``https://<resource>.openai.azure.com``); the catalog's model
name is the deployment name. Bodies, streams (``stream_options.include_usage``) and usage are the
OpenAI ones, so everything but the URL and the key header is inherited from ``OpenAIProvider``.
Azure's content filter answers HTTP 400 with code ``content_filter`` (or ``finish_reason:
content_filter``); both become ``ContentFiltered``.
"""

from __future__ import annotations

from urllib.parse import quote

from pydantic import SecretStr

from streams.catalog import ProviderSpec
from streams.providers.openai import OpenAIProvider

DEFAULT_API_VERSION = "2024-10-21"
"""The GA data-plane API version used when the catalog does not name one (supports include_usage)."""


class AzureOpenAIProvider(OpenAIProvider):
    """An adapter for Azure OpenAI deployments."""

    def __init__(self, name: str, spec: ProviderSpec, api_key: SecretStr | None) -> None:
        super().__init__(name, spec, api_key)
        self.api_version = spec.api_version or DEFAULT_API_VERSION

    def _deployment_url(self, deployment: str, operation: str) -> str:
        return self._url(
            f"/openai/deployments/{quote(deployment, safe='')}/{operation}?api-version={quote(self.api_version)}"
        )

    def _chat_url(self, model: str) -> str:
        return self._deployment_url(model, "chat/completions")

    def _embeddings_url(self, model: str) -> str:
        return self._deployment_url(model, "embeddings")

    def _auth_headers(self) -> dict[str, str]:
        if self._api_key is None:
            return {}
        return {"api-key": self._api_key.get_secret_value()}
