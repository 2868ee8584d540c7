"""Loopback query endpoint: how other processes read an embedded chDB store while the sink writes.

chDB admits one process per data path (a second fails to lock it). The process that owns the
path (the one running the usage sink) therefore serves read-only queries on 127.0.0.1, on a free
port, behind a random bearer token. It advertises ``{url, token, pid}`` in
``<data_path>/aifleet-query-endpoint.json`` (mode 0600); ``open_reader`` in other processes
(``aifleet report``, the alerting agent) reads that file and sends queries here.

Every query runs with ``readonly=1`` on its own chDB handle (so reads never queue behind the
sink's inserts on one handle), and only one ``SELECT``/``WITH`` statement is accepted.

Wire format: ``POST /query`` ``{"sql": str, "parameters": {...}}`` ->
``{"columns": [...], "types": [...], "rows": [[...]]}``; ``GET /ping`` -> ``{"ok": true}``.
Decimals travel as strings and date/times as ISO text; ``EndpointReader`` restores them. JSON has
no NaN: a non-finite float arrives as null and is restored as NaN (in a non-Nullable float column).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import orjson
from aiohttp import web

from streams.analytics.client import create_client, translate_error
from streams.analytics.errors import AnalyticsQueryError, AnalyticsUnavailable
from streams.settings import ClickHouseSettings

ADVERT_FILE = "aifleet-query-endpoint.json"
_READ_ONLY = re.compile(r"^\s*(SELECT|WITH)\b", re.IGNORECASE)
_MAX_BODY = 4 * 1024 * 1024


@dataclass(frozen=True)
class Advertisement:
    """Where the owning process serves queries."""

    url: str
    token: str
    pid: int


def read_advertisement(data_path: Path) -> Advertisement | None:
    """The endpoint advertised under ``data_path``, or None when no owner serves one."""
    path = data_path / ADVERT_FILE
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return Advertisement(url=str(raw["url"]), token=str(raw["token"]), pid=int(raw["pid"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _jsonable(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _restore(value: Any, type_name: str) -> Any:
    base = type_name.removeprefix("LowCardinality(").removeprefix("Nullable(").removeprefix("LowCardinality(")
    if value is None:
        # JSON has no NaN/inf: orjson writes them as null. A non-Nullable float column never holds
        # NULL, so the null was a non-finite float; NaN is what a direct reader would have returned.
        return float("nan") if base.startswith("Float") and "Nullable(" not in type_name else None
    if base.startswith("Decimal"):
        return Decimal(value)
    if base.startswith("DateTime"):
        return datetime.fromisoformat(value)
    if base.startswith("Date"):
        return date.fromisoformat(value)
    return value


def check_read_only(sql: str) -> str:
    """Accept exactly one SELECT/WITH statement (trailing ';' allowed)."""
    body = sql.strip().rstrip(";").strip()
    if not _READ_ONLY.match(body) or ";" in body:
        raise AnalyticsQueryError("the query endpoint accepts one SELECT statement")
    return body


class QueryEndpoint:
    """Serves read-only queries on the chDB engine this process owns."""

    def __init__(self, settings: ClickHouseSettings, data_path: Path, *, port: int = 0) -> None:
        self.settings = settings
        self.data_path = data_path
        self.port = port
        self.token = secrets.token_urlsafe(24)
        self.url = ""
        self._client: Any = None
        self._runner: web.AppRunner | None = None
        self._queries = asyncio.Semaphore(4)

    async def start(self) -> None:
        """Open a read handle, bind 127.0.0.1 and write the advertisement file."""
        self._client = await asyncio.to_thread(create_client, self.settings, data_path=self.data_path)
        app = web.Application(client_max_size=_MAX_BODY)
        app.router.add_get("/ping", self._ping)
        app.router.add_post("/query", self._query)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        server = site._server  # aiohttp exposes the bound socket only here
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{self.port}"
        advert = self.data_path / ADVERT_FILE
        tmp = advert.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump({"url": self.url, "token": self.token, "pid": os.getpid()}, fh)
        tmp.replace(advert)

    async def stop(self) -> None:
        """Withdraw the advertisement, stop serving and close the read handle."""
        advert = read_advertisement(self.data_path)
        if advert is not None and advert.token == self.token:
            with contextlib.suppress(OSError):
                (self.data_path / ADVERT_FILE).unlink()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._client is not None:
            self._client.close()
            self._client = None

    async def _ping(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response({"error": "unauthorized"}, status=401)
        return web.json_response({"ok": True, "pid": os.getpid()})

    def _authorized(self, request: web.Request) -> bool:
        given = request.headers.get("Authorization", "")
        return secrets.compare_digest(given.encode(), f"Bearer {self.token}".encode())

    async def _query(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response({"error": "unauthorized"}, status=401)
        try:
            payload = orjson.loads(await request.read())
            sql = check_read_only(str(payload["sql"]))
            parameters = payload.get("parameters") or {}
            if not isinstance(parameters, dict):
                raise AnalyticsQueryError("parameters must be an object")
        except (ValueError, KeyError, TypeError, AnalyticsQueryError) as exc:
            return web.json_response({"error": f"bad request: {exc}"}, status=400)
        async with self._queries:
            try:
                result = await asyncio.to_thread(self._run, sql, parameters)
            except Exception as exc:  # noqa: BLE001 (every failure becomes a typed HTTP answer)
                err = translate_error(exc, "query failed")
                status = 503 if err.retryable else 400
                return web.json_response({"error": err.message}, status=status)
        return web.Response(body=orjson.dumps(result), content_type="application/json")

    def _run(self, sql: str, parameters: dict[str, Any]) -> dict[str, Any]:
        result = self._client.query(sql, parameters=parameters, settings={"readonly": 1})
        return {
            "columns": list(result.column_names),
            "types": [t.name for t in result.column_types],
            "rows": [[_jsonable(v) for v in row] for row in result.result_rows],
        }


class EndpointReader:
    """A ``Reader`` that sends queries to the owning process's ``QueryEndpoint``."""

    def __init__(self, url: str, token: str, *, timeout_s: float = 120.0) -> None:
        self.url = url.rstrip("/")
        self._http = httpx.Client(timeout=timeout_s, headers={"Authorization": f"Bearer {token}"}, trust_env=False)

    def ping(self) -> bool:
        """True when the endpoint answers (a stale advertisement of a dead process does not)."""
        try:
            return self._http.get(f"{self.url}/ping", timeout=10.0).status_code == 200
        except httpx.HTTPError:
            return False

    def query_rows(self, sql: str, parameters: Mapping[str, Any] | None = None) -> tuple[list[str], list[tuple]]:
        """Run one read-only statement in the owning process."""
        body = orjson.dumps({"sql": sql, "parameters": _jsonable_params(parameters or {})})
        try:
            response = self._http.post(f"{self.url}/query", content=body, headers={"Content-Type": "application/json"})
        except httpx.HTTPError as exc:
            raise AnalyticsUnavailable(f"query endpoint {self.url} unreachable: {exc}", retry_after_s=1.0) from exc
        data = response.json()
        if response.status_code == 503:
            raise AnalyticsUnavailable(data.get("error", "unavailable"), retry_after_s=1.0)
        if response.status_code != 200:
            raise AnalyticsQueryError(data.get("error", f"HTTP {response.status_code}"))
        types = data["types"]
        rows = [tuple(_restore(v, t) for v, t in zip(row, types, strict=True)) for row in data["rows"]]
        return list(data["columns"]), rows

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._http.close()


def _jsonable_params(parameters: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in parameters.items():
        if isinstance(value, datetime):
            out[key] = value.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
        else:
            out[key] = _jsonable(value)
    return out
