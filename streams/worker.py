"""Run one worker process: the Faust app with every agent, until SIGTERM or Ctrl-C."""

from __future__ import annotations

import logging

import faust

from streams.settings import Settings, get_settings


class _Worker(faust.Worker):
    """faust's Worker, with logging left at the configured level.

    mode's logging set-up leaves the root logger at DEBUG whatever loglevel says, which makes
    aiokafka build a debug record for every message it produces: a tenth of a busy worker's CPU.
    """

    def __init__(self, *args: object, log_level: str, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._aifleet_level = logging.getLevelName(log_level)

    def _setup_logging(self) -> None:
        super()._setup_logging()
        logging.getLogger().setLevel(self._aifleet_level)


def run(settings: Settings | None = None, *, role: str = "pipeline") -> None:
    """Start a worker in the foreground (role ``pipeline`` or ``analytics``); returns once told to stop."""
    from streams.admin import ensure_topics
    from streams.kafka_auth import librdkafka_config
    from streams.topics import Topics

    settings = settings or get_settings()
    bootstrap = settings.kafka_servers
    client_config = librdkafka_config(settings)
    from streams.app import changelog_topics

    ensure_topics(
        bootstrap,
        Topics.from_settings(settings).all(),
        partitions=settings.kafka.partitions,
        replication_factor=settings.kafka.replication_factor,
        client_config=client_config,
    )
    ensure_topics(
        bootstrap,
        changelog_topics(settings),
        partitions=settings.kafka.partitions,
        replication_factor=settings.kafka.replication_factor,
        config={"cleanup.policy": "compact"},
        client_config=client_config,
    )
    if settings.metrics_port is not None:
        from streams.metrics import start_metrics_server

        start_metrics_server(port=settings.metrics_port)
    if role == "analytics":
        from streams.analytics_app import build_analytics_app

        app = build_analytics_app(settings)
    else:
        from streams.app import build_app

        app = build_app(settings)
    worker = _Worker(
        app, loglevel=settings.log_level.lower(), quiet=True, redirect_stdouts=False, log_level=settings.log_level
    )
    worker.execute_from_commandline()


if __name__ == "__main__":
    import sys

    run(role=sys.argv[1] if len(sys.argv) > 1 else "pipeline")
