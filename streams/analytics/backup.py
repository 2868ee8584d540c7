"""Backups of the analytics store with ClickHouse's own ``BACKUP`` / ``RESTORE``, to a directory.

``backup`` and ``restore`` take an open client and run the same SQL on both backends:

- chDB (embedded): the engine is opened with ``backups.allowed_path`` set to
  ``settings.clickhouse.backup_path`` (default ``<home>/backups``) by ``create_client``, so a backup
  is a plain directory on this machine. chDB has no zip support: ``File('<dir>')`` only. The
  store must not be open in another process (the analytics process owns it while it runs).
- a ClickHouse server: the path is on the server and must lie under the server's own
  ``<backups><allowed_path>`` (see docs/operations.md). With ``cluster`` set the statements run
  ``ON CLUSTER``; every host then writes to that path, so it must be storage they share.

A backup never overwrites another (``BackupExists``). ``restore`` refuses to touch a database
that exists unless ``replace`` is asked for; it then first proves the backup is readable (it
restores its ``schema_migrations`` table into a scratch database) before dropping anything.

``open_store`` opens the configured store for these operations and turns "another process owns
the chDB path" into an ``EmbeddedStoreLocked`` that says to stop the analytics process first.
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from streams.analytics.client import (
    check_identifier,
    create_client,
    resolve_backup_path,
    resolve_data_path,
    translate_error,
)
from streams.analytics.errors import (
    AnalyticsError,
    BackupError,
    BackupExists,
    BackupNotFound,
    BackupPathNotAllowed,
    EmbeddedStoreLocked,
    RestoreTargetExists,
)
from streams.settings import ClickHouseSettings

_CLUSTER_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_BACKUP_ALREADY_EXISTS = 598
_BACKUP_NOT_FOUND = 599
PROBE_SUFFIX = "__restore_probe"


@dataclass(frozen=True)
class BackupResult:
    """One finished ``BACKUP``: its id and status, where it went and how big and long it was."""

    id: str
    status: str
    database: str
    location: str
    files: int
    size_bytes: int
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return asdict(self)


@dataclass(frozen=True)
class RestoreResult:
    """One finished ``RESTORE``: what was restored from where, what it replaced, how long it took."""

    id: str
    status: str
    database: str
    location: str
    replaced: bool
    tables: int
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return asdict(self)


def default_destination(settings: ClickHouseSettings, home: Path | None = None, now: datetime | None = None) -> Path:
    """``<backup_path>/<UTC timestamp>``, e.g. ``~/.aifleet/backups/20250101T120000Z``."""
    stamp = (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    return resolve_backup_path(settings, home) / stamp


def file_target(location: str | Path) -> str:
    """The ``File('<location>')`` backup target, the path quoted as a ClickHouse string literal."""
    text = str(location)
    if not text or any(ord(ch) < 32 for ch in text):
        raise BackupError(f"invalid backup location: {text!r}")
    return "File('" + text.replace("\\", "\\\\").replace("'", "\\'") + "')"


def _on_cluster(cluster: str | None) -> str:
    if cluster is None:
        return ""
    if not _CLUSTER_NAME.match(cluster):
        raise BackupError(f"invalid cluster name: {cluster!r}")
    return f" ON CLUSTER '{cluster}'"


def _translate(exc: BaseException, action: str, location: str | Path) -> AnalyticsError:
    code = getattr(exc, "code", None)
    text = str(exc)
    if code == _BACKUP_ALREADY_EXISTS or "BACKUP_ALREADY_EXISTS" in text:
        return BackupExists(f"{action}: a backup already exists at {location}; choose another destination")
    if code == _BACKUP_NOT_FOUND or "BACKUP_NOT_FOUND" in text:
        return BackupNotFound(f"{action}: there is no backup at {location}")
    if "not allowed for backups" in text:
        return BackupPathNotAllowed(
            f"{action}: {location} is outside backups.allowed_path (chDB: settings.clickhouse.backup_path, "
            "AIFLEET_CLICKHOUSE__BACKUP_PATH; a server: its <backups><allowed_path> config)"
        )
    return translate_error(exc, action)


def _first_row(result: Any, action: str) -> tuple[str, str]:
    rows = list(result.result_rows)
    if not rows or len(rows[0]) < 2:
        raise BackupError(f"{action}: the server returned no status")
    return str(rows[0][0]), str(rows[0][1])


def backup(client: Any, database: str, dest: str | Path, *, cluster: str | None = None) -> BackupResult:
    """``BACKUP DATABASE <database> TO File('<dest>')`` and wait for it to finish.

    Raises ``BackupExists`` when ``dest`` holds a backup already, ``BackupPathNotAllowed`` when it
    is outside ``backups.allowed_path``, ``BackupError`` when the backup did not complete.
    """
    db = check_identifier(database, "database name")
    action = f"backup of {db} to {dest}"
    sql = f"BACKUP DATABASE {db}{_on_cluster(cluster)} TO {file_target(dest)}"
    started = time.perf_counter()
    try:
        backup_id, status = _first_row(client.query(sql), action)
    except BackupError:
        raise
    except Exception as exc:
        raise _translate(exc, action, dest) from exc
    seconds = time.perf_counter() - started
    if status != "BACKUP_CREATED":
        raise BackupError(f"{action}: finished with status {status}")
    files, size = _backup_size(client, backup_id)
    return BackupResult(backup_id, status, db, str(dest), files, size, round(seconds, 3))


def _backup_size(client: Any, backup_id: str) -> tuple[int, int]:
    try:
        rows = client.query(
            "SELECT num_files, total_size FROM system.backups WHERE id = {id:String}", parameters={"id": backup_id}
        ).result_rows
    except Exception:  # noqa: BLE001 - the size is informative; the backup itself succeeded
        return 0, 0
    return (int(rows[0][0]), int(rows[0][1])) if rows else (0, 0)


def database_exists(client: Any, database: str) -> bool:
    """Whether ``database`` exists on the store (the host this client talks to)."""
    try:
        result = client.query(
            "SELECT count() FROM system.databases WHERE name = {db:String}", parameters={"db": database}
        )
    except Exception as exc:
        raise translate_error(exc, "cannot list databases") from exc
    return int(result.result_rows[0][0]) > 0


def _table_count(client: Any, database: str) -> int:
    result = client.query("SELECT count() FROM system.tables WHERE database = {db:String}", parameters={"db": database})
    return int(result.result_rows[0][0])


def probe_backup(client: Any, database: str, src: str | Path) -> None:
    """Prove ``src`` holds a readable backup of ``database`` without touching ``database``.

    Restores the backup's small ``schema_migrations`` table into a scratch database and drops it.
    Raises ``BackupNotFound`` (or another ``BackupError``) when it cannot.
    """
    db = check_identifier(database, "database name")
    probe = db + PROBE_SUFFIX
    action = f"reading the backup at {src}"
    try:
        client.command(f"DROP DATABASE IF EXISTS {probe} SYNC")
        client.command(f"CREATE DATABASE {probe}")
        try:
            _, status = _first_row(
                client.query(
                    f"RESTORE TABLE {db}.schema_migrations AS {probe}.schema_migrations FROM {file_target(src)}"
                ),
                action,
            )
        finally:
            client.command(f"DROP DATABASE IF EXISTS {probe} SYNC")
    except BackupError:
        raise
    except Exception as exc:
        raise _translate(exc, action, src) from exc
    if status != "RESTORED":
        raise BackupError(f"{action}: finished with status {status}")


def restore(
    client: Any, database: str, src: str | Path, *, replace: bool = False, cluster: str | None = None
) -> RestoreResult:
    """``RESTORE DATABASE <database> FROM File('<src>')``; with ``replace``, drop the live database first.

    Raises ``RestoreTargetExists`` when the database exists and ``replace`` is false,
    ``BackupNotFound`` when ``src`` holds no backup (checked before anything is dropped).
    """
    db = check_identifier(database, "database name")
    on_cluster = _on_cluster(cluster)
    action = f"restore of {db} from {src}"
    started = time.perf_counter()
    existed = database_exists(client, db)
    if existed and not replace:
        raise RestoreTargetExists(
            f"{action}: database {db} exists; restore with replace (--replace) to drop it and restore the backup"
        )
    if existed:
        probe_backup(client, db, src)  # a missing or unreadable backup must not cost the live data
        try:
            client.command(f"DROP DATABASE IF EXISTS {db}{on_cluster} SYNC")
        except Exception as exc:
            raise translate_error(exc, f"{action}: cannot drop {db}") from exc
    try:
        restore_id, status = _first_row(
            client.query(f"RESTORE DATABASE {db}{on_cluster} FROM {file_target(src)}"), action
        )
    except BackupError:
        raise
    except Exception as exc:
        raise _translate(exc, action, src) from exc
    if status != "RESTORED":
        raise BackupError(f"{action}: finished with status {status}")
    seconds = time.perf_counter() - started
    return RestoreResult(restore_id, status, db, str(src), existed, _table_count(client, db), round(seconds, 3))


def open_store(settings: ClickHouseSettings, *, home: Path | None = None) -> Any:
    """A client on the configured store for backup and restore (chDB: this process must own it).

    Raises ``EmbeddedStoreLocked`` telling the user to stop the analytics process when another
    process owns the chDB path.
    """
    try:
        return create_client(settings, home=home)
    except EmbeddedStoreLocked as exc:
        path = resolve_data_path(settings, home)
        raise EmbeddedStoreLocked(
            f"the chDB store at {path} is open in another process (the analytics process, `aifleet sink`); "
            "stop it first, then back up or restore, then start it again",
            retry_after_s=exc.retry_after_s,
        ) from exc


def check_local_location(settings: ClickHouseSettings, location: Path, *, home: Path | None = None) -> Path:
    """chDB: ``location`` made absolute, refused with ``BackupPathNotAllowed`` if outside ``backup_path``."""
    allowed = resolve_backup_path(settings, home).resolve()
    resolved = location if location.is_absolute() else allowed / location
    resolved = resolved.resolve()
    if resolved != allowed and allowed not in resolved.parents:
        raise BackupPathNotAllowed(
            f"{location} is outside the backup directory {allowed}; put it under that directory or set "
            "AIFLEET_CLICKHOUSE__BACKUP_PATH (settings.clickhouse.backup_path)"
        )
    if resolved == allowed:
        raise BackupPathNotAllowed(f"{location} is the backup directory itself; name a directory inside it")
    return resolved
