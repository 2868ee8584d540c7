"""Run the emulator in-process on a free loopback port, for tests (no subprocess, no fixed port)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestServer

from infra.emulator.faults import FaultProfile
from infra.emulator.server import STATE, EmulatorState, create_app
from streams.catalog import Catalog, load_catalog

_CONFIG = Path(__file__).resolve().parent.parent / "config"


def test_catalog() -> Catalog:
    """The shipped catalog plus the proposed entries of ``providers.example.toml`` (until they are merged)."""
    providers = {}
    for name in ("providers.example.toml", "aifleet.toml"):
        path = _CONFIG / name
        if path.exists():
            providers.update(load_catalog(path).providers)
    return Catalog(providers=providers)


test_catalog.__test__ = False  # type: ignore[attr-defined]  # not a pytest test


@dataclass
class RunningEmulator:
    """A started emulator: its base URL and its live state (profiles and counters)."""

    url: str
    state: EmulatorState

    def base_url(self, provider: str, emulator_path: str = "/v1") -> str:
        """Where an adapter for ``provider`` should point (``<url>/<provider><emulator_path>``)."""
        return f"{self.url}/{provider}{emulator_path}"

    def set_profile(self, provider: str, **fields: Any) -> FaultProfile:
        """Install a fault profile for ``provider`` (keyword arguments are ``FaultProfile`` fields)."""
        profile = FaultProfile(**fields)
        self.state.set_profile(provider, profile)
        return profile

    def calls(self, provider: str) -> int:
        return self.state.calls[provider]

    def usage(self, provider: str) -> tuple[int, int]:
        """(input, output) tokens the emulator reported for ``provider`` in replies that completed."""
        return self.state.input_tokens[provider], self.state.output_tokens[provider]

    def reset(self) -> None:
        self.state.clear()


@asynccontextmanager
async def running_emulator(latency_ms: float = 0.0, seed: int = 0) -> AsyncIterator[RunningEmulator]:
    """Start the emulator on 127.0.0.1 (a free port) for the duration of the block."""
    app = create_app(latency_ms=latency_ms, seed=seed)
    server = TestServer(app, host="127.0.0.1", port=None)
    await server.start_server()
    try:
        yield RunningEmulator(url=str(server.make_url("")).rstrip("/"), state=app[STATE])
    finally:
        await server.close()
