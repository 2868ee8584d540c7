"""Numbered, idempotent ClickHouse migrations (``schemas/clickhouse/NNN_name.sql``), applied in order.

Each file is a template: ``{{db}}``, ``{{local}}``, ``{{on_cluster}}``, ``{{cluster}}``,
``{{ttl_days}}``, ``{{rollup_ttl_days}}`` and ``{{engine X(args)}}``. Without a cluster they render
to plain MergeTree-family tables; with ``settings.clickhouse.cluster`` set, every statement gets
``ON CLUSTER``, engines become ``Replicated*`` on ``<table>_local`` and a ``Distributed`` table
takes the plain name (statements marked ``-- @cluster-only`` appear only then). Applied versions
are recorded in ``<db>.schema_migrations``; every statement is also ``IF NOT EXISTS``, so
re-running a file is harmless.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from streams.analytics.client import check_identifier, translate_error
from streams.analytics.errors import AnalyticsQueryError
from streams.settings import ClickHouseSettings

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "schemas" / "clickhouse"
DEFAULT_TTL_DAYS = 90
DEFAULT_ROLLUP_TTL_DAYS = 730

_FILE_NAME = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")
_PLACEHOLDER = re.compile(r"\{\{\s*([a-z_]+)(?:\s+([^}]*?))?\s*\}\}")
_ENGINE = re.compile(r"^([A-Za-z]+MergeTree)(?:\((.*)\))?$")
_CLUSTER_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_STATEMENT_END = re.compile(r";[ \t]*(?:\n|$)")
REPLICA_PATH = "'/clickhouse/tables/{shard}/{database}/{table}', '{replica}'"


@dataclass(frozen=True)
class Migration:
    """One numbered migration, rendered for a target."""

    version: int
    name: str
    checksum: str
    statements: tuple[str, ...]


@dataclass(frozen=True)
class RenderOptions:
    """What a migration renders against."""

    database: str = "aifleet"
    cluster: str | None = None
    ttl_days: int = DEFAULT_TTL_DAYS
    rollup_ttl_days: int = DEFAULT_ROLLUP_TTL_DAYS

    @classmethod
    def from_settings(
        cls,
        settings: ClickHouseSettings,
        *,
        ttl_days: int | None = None,
        rollup_ttl_days: int = DEFAULT_ROLLUP_TTL_DAYS,
    ) -> RenderOptions:
        """Options for the configured database and cluster; the usage TTL is ``settings.ttl_days`` unless given."""
        return cls(
            settings.database, settings.cluster, settings.ttl_days if ttl_days is None else ttl_days, rollup_ttl_days
        )


def _engine(spec: str, cluster: str | None) -> str:
    match = _ENGINE.match(spec.strip())
    if not match:
        raise AnalyticsQueryError(f"bad engine placeholder: {spec!r}")
    name, args = match.group(1), (match.group(2) or "").strip()
    if cluster is None:
        return f"{name}({args})" if args else name
    extra = f", {args}" if args else ""
    return f"Replicated{name}({REPLICA_PATH}{extra})"


def render(text: str, options: RenderOptions) -> list[str]:
    """Render one migration file to its list of statements for ``options``."""
    db = check_identifier(options.database, "database name")
    cluster = options.cluster
    if cluster is not None and not _CLUSTER_NAME.match(cluster):
        raise AnalyticsQueryError(f"invalid cluster name: {cluster!r}")
    if options.ttl_days < 1 or options.rollup_ttl_days < 1:
        raise AnalyticsQueryError("TTL must be at least one day")
    values = {
        "db": db,
        "local": "_local" if cluster else "",
        "on_cluster": f" ON CLUSTER '{cluster}'" if cluster else "",
        "cluster": f"'{cluster}'" if cluster else "",
        "ttl_days": str(int(options.ttl_days)),
        "rollup_ttl_days": str(int(options.rollup_ttl_days)),
    }

    def substitute(match: re.Match[str]) -> str:
        key, arg = match.group(1), match.group(2)
        if key == "engine" and arg:
            return _engine(arg, cluster)
        if key in values and not arg:
            return values[key]
        raise AnalyticsQueryError(f"unknown placeholder {match.group(0)!r}")

    statements: list[str] = []
    for chunk in _STATEMENT_END.split(text):
        lines = chunk.strip().splitlines()
        comments = [ln for ln in lines if ln.lstrip().startswith("--")]
        body = "\n".join(ln for ln in lines if not ln.lstrip().startswith("--")).strip()
        if not body:
            continue
        if any("@cluster-only" in c for c in comments) and cluster is None:
            continue
        statements.append(_PLACEHOLDER.sub(substitute, body))
    return statements


def load_migrations(options: RenderOptions, directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Every migration file under ``directory``, rendered, in version order."""
    migrations = []
    for path in sorted(directory.glob("*.sql")):
        match = _FILE_NAME.match(path.name)
        if not match:
            raise AnalyticsQueryError(f"migration file not named NNN_name.sql: {path.name}")
        text = path.read_text(encoding="utf-8")
        migrations.append(
            Migration(
                version=int(match.group(1)),
                name=match.group(2),
                checksum=hashlib.sha256(text.encode()).hexdigest(),
                statements=tuple(render(text, options)),
            )
        )
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions):
        raise AnalyticsQueryError(f"duplicate migration versions in {directory}")
    return migrations


def bootstrap_statements(options: RenderOptions) -> list[str]:
    """The database and the ``schema_migrations`` table, created before any migration runs."""
    text = """
CREATE DATABASE IF NOT EXISTS {{db}}{{on_cluster}};
CREATE TABLE IF NOT EXISTS {{db}}.schema_migrations{{on_cluster}}
(
    version UInt32,
    name String,
    checksum String,
    applied_at DateTime64(3, 'UTC')
)
ENGINE = {{engine ReplacingMergeTree(applied_at)}}
ORDER BY version;
"""
    return render(text, options)


def applied_versions(client: Any, database: str) -> dict[int, str]:
    """Versions already recorded in ``schema_migrations``, with their checksums."""
    db = check_identifier(database, "database name")
    try:
        result = client.query(
            f"SELECT version, argMax(checksum, applied_at) FROM {db}.schema_migrations GROUP BY version"  # noqa: S608 (db is a checked identifier)
        )
    except Exception as exc:
        raise translate_error(exc, "cannot read schema_migrations") from exc
    return {int(v): str(c) for v, c in result.result_rows}


def migrate(
    client: Any,
    options: RenderOptions,
    *,
    directory: Path = MIGRATIONS_DIR,
    force: bool = False,
) -> list[int]:
    """Apply pending migrations in order and return the versions applied.

    ``force`` re-runs every statement of every file (they are all idempotent) and records them again.
    """
    try:
        for statement in bootstrap_statements(options):
            client.command(statement)
    except Exception as exc:
        raise translate_error(exc, "cannot create the database or schema_migrations") from exc
    done = applied_versions(client, options.database)
    applied: list[int] = []
    for migration in load_migrations(options, directory):
        if migration.version in done and not force:
            continue
        for statement in migration.statements:
            try:
                client.command(statement)
            except Exception as exc:
                raise translate_error(exc, f"migration {migration.version:03d}_{migration.name} failed") from exc
        client.insert(
            f"{options.database}.schema_migrations",
            [[migration.version, migration.name, migration.checksum, datetime.now(UTC)]],
            column_names=["version", "name", "checksum", "applied_at"],
        )
        applied.append(migration.version)
    return applied


def render_all(options: RenderOptions, directory: Path = MIGRATIONS_DIR) -> str:
    """The full SQL a migrate run would send, for review (``aifleet analytics migrate --print``)."""
    parts = [s + ";" for s in bootstrap_statements(options)]
    for migration in load_migrations(options, directory):
        parts.append(f"-- {migration.version:03d}_{migration.name}")
        parts.extend(s + ";" for s in migration.statements)
    return "\n\n".join(parts) + "\n"
