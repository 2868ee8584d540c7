"""One client for both backends, from ``ClickHouseSettings``.

``backend="chdb"`` opens the embedded chDB engine in this process through clickhouse-connect's
``interface="chdb"``; ``backend="http"`` talks to a ClickHouse server. Both give a
``clickhouse_connect`` ``Client`` with the same query/insert surface, so every statement in this
package runs unchanged on either.

chDB admits one process per data path. Readers in other processes therefore go through the
owning process's loopback query endpoint (``streams.analytics.endpoint``); ``open_reader`` picks
the right path. See docs/analytics.md.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

from streams.analytics.errors import (
    AnalyticsBackpressure,
    AnalyticsDataError,
    AnalyticsError,
    AnalyticsQueryError,
    AnalyticsUnavailable,
    EmbeddedStoreLocked,
)
from streams.settings import ClickHouseSettings

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# ClickHouse error codes that mean "up, but overloaded": the caller should slow down and retry.
_BACKPRESSURE_CODES = frozenset({159, 202, 241, 252})  # timeout, too many queries, memory, too many parts
# Codes that mean a value does not fit its column (the rows are at fault, not the statement):
# cannot parse, argument out of bound, cannot convert, type mismatch, value out of range, decimal overflow.
_DATA_CODES = frozenset({6, 53, 69, 70, 321, 407})
# Codes that mean the server (or a replica) cannot be reached.
_UNAVAILABLE_CODES = frozenset({209, 210, 225, 242, 319, 999, 1000})


class Reader(Protocol):
    """What reports and alert queries need: run one read-only statement with bound parameters."""

    def query_rows(self, sql: str, parameters: Mapping[str, Any] | None = None) -> tuple[list[str], list[tuple]]:
        """Run ``sql`` (ClickHouse ``{name:Type}`` parameters) and return column names and rows."""
        ...

    def close(self) -> None:
        """Release the connection."""
        ...


def check_identifier(name: str, what: str = "identifier") -> str:
    """Return ``name`` if it is a plain ClickHouse identifier; raise otherwise (it goes into SQL text)."""
    if not _IDENTIFIER.match(name):
        raise AnalyticsQueryError(f"invalid {what}: {name!r}")
    return name


def resolve_data_path(settings: ClickHouseSettings, home: Path | None = None) -> Path:
    """Where the embedded chDB engine keeps its data: ``data_path`` or ``<home>/clickhouse``."""
    if settings.data_path is not None:
        return settings.data_path
    if home is None:
        from streams.settings import DEFAULT_HOME

        home = DEFAULT_HOME
    return home / "clickhouse"


def resolve_backup_path(settings: ClickHouseSettings, home: Path | None = None) -> Path:
    """Where chDB backups go, and the only directory BACKUP/RESTORE may use: ``backup_path`` or ``<home>/backups``."""
    if settings.backup_path is not None:
        return settings.backup_path
    if home is None:
        from streams.settings import DEFAULT_HOME

        home = DEFAULT_HOME
    return home / "backups"


def translate_error(exc: BaseException, action: str) -> AnalyticsError:
    """Map a clickhouse-connect (or transport) exception to the analytics error tree."""
    if isinstance(exc, AnalyticsError):
        return exc
    from clickhouse_connect.driver import exceptions as ch_exc

    message = f"{action}: {exc}"
    code = getattr(exc, "code", None)
    if code in _BACKPRESSURE_CODES:
        return AnalyticsBackpressure(message, retry_after_s=1.0)
    if code in _UNAVAILABLE_CODES:
        return AnalyticsUnavailable(message, retry_after_s=1.0)
    if isinstance(exc, ch_exc.OperationalError | ConnectionError | TimeoutError | OSError):
        return AnalyticsUnavailable(message, retry_after_s=1.0)
    text = str(exc)
    if "Unable to open the chdb engine" in text or "Cannot lock file" in text:
        return EmbeddedStoreLocked(message, retry_after_s=1.0)
    if isinstance(exc, ch_exc.DataError) or code in _DATA_CODES:  # DataError: the client could not encode a value
        return AnalyticsDataError(message)
    if isinstance(exc, ch_exc.DatabaseError | ch_exc.Error):
        return AnalyticsQueryError(message)
    return AnalyticsUnavailable(message, retry_after_s=1.0)


def create_client(settings: ClickHouseSettings, *, home: Path | None = None, data_path: Path | None = None) -> Any:
    """A clickhouse-connect ``Client`` for the configured backend (no default database: SQL is qualified).

    Raises ``EmbeddedStoreLocked`` when another process owns the chDB path, ``AnalyticsUnavailable``
    when the server cannot be reached.
    """
    import clickhouse_connect

    try:
        if settings.backend == "chdb":
            path = data_path or resolve_data_path(settings, home)
            path.mkdir(parents=True, exist_ok=True)
            # the engine takes backups.allowed_path at open only: every process opens it the same way,
            # so `analytics backup` / `restore` work in whichever process owns the store
            backups = resolve_backup_path(settings, home).resolve()
            return clickhouse_connect.get_client(
                interface="chdb", path=str(path), chdb_options={"backups.allowed_path": str(backups)}
            )
        parsed = urlparse(settings.url)
        secure = parsed.scheme == "https"
        return clickhouse_connect.get_client(
            interface="https" if secure else "http",
            host=parsed.hostname or "127.0.0.1",
            port=parsed.port or (8443 if secure else 8123),
            username=settings.username,
            password=settings.password.get_secret_value() if settings.password else "",
            connect_timeout=5,
            send_receive_timeout=60,
            # Large bound arrays (the sink's event-id look-up) travel in the body, not the URL.
            form_encode_query_params=True,
        )
    except Exception as exc:
        raise translate_error(exc, f"cannot open ClickHouse ({settings.backend})") from exc


class ClientReader:
    """A ``Reader`` over a clickhouse-connect client (HTTP, or chDB when this process owns the path)."""

    def __init__(self, client: Any, *, owns_client: bool = True) -> None:
        self.client = client
        self._owns = owns_client

    def query_rows(self, sql: str, parameters: Mapping[str, Any] | None = None) -> tuple[list[str], list[tuple]]:
        """Run one statement and return ``(column_names, rows)``."""
        try:
            result = self.client.query(sql, parameters=dict(parameters or {}))
        except Exception as exc:
            raise translate_error(exc, "query failed") from exc
        return list(result.column_names), [tuple(r) for r in result.result_rows]

    def close(self) -> None:
        """Close the client if this reader opened it."""
        if self._owns:
            self.client.close()


def rows_as_dicts(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[dict[str, Any]]:
    """Zip column names onto each row."""
    return [dict(zip(columns, row, strict=True)) for row in rows]


def open_reader(settings: ClickHouseSettings, *, home: Path | None = None) -> Reader:
    """A reader that works whoever owns the store.

    HTTP backend: a plain client. chDB backend: the owning process's loopback query endpoint when
    one is advertised under the data path (a sink is running), else the engine itself in-process.
    """
    if settings.backend == "http":
        return ClientReader(create_client(settings, home=home))
    from streams.analytics.endpoint import EndpointReader, read_advertisement

    path = resolve_data_path(settings, home)
    advert = read_advertisement(path)
    if advert is not None:
        reader = EndpointReader(advert.url, advert.token)
        if reader.ping():
            return reader
        reader.close()
    try:
        return ClientReader(create_client(settings, home=home))
    except EmbeddedStoreLocked as exc:
        raise EmbeddedStoreLocked(
            f"{exc.message}; the chDB path {path} is owned by another process that does not serve "
            "the query endpoint (start the sink with serve_queries=True, or use the HTTP backend)"
        ) from exc
