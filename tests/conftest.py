"""Session-wide fixtures: one real Kafka broker for every test that needs it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.pipeline import session_broker


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The bootstrap address of the session's broker (started once, stopped at the end)."""
    with session_broker(tmp_path_factory.mktemp("broker")) as bootstrap:
        yield bootstrap


@pytest.fixture
def aifleet_home(tmp_path: Path) -> Path:
    return tmp_path / "home"
