"""Run one worker process: the Faust app with every agent, until SIGTERM or Ctrl-C."""

from __future__ import annotations

import logging

from streams.settings import Settings, get_settings


def run(settings: Settings | None = None) -> None:
    """Start the worker in the foreground; returns when it was told to stop."""
    import faust

    from streams.app import build_app

    from streams.admin import ensure_topics
    from streams.topics import Topics

    settings = settings or get_settings()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    bootstrap = settings.bootstrap or f"127.0.0.1:{settings.kafka.port}"
    ensure_topics(bootstrap, Topics.from_settings(settings).all(), partitions=settings.kafka.partitions,
                  replication_factor=settings.kafka.replication_factor)
    app = build_app(settings)
    worker = faust.Worker(app, loglevel=settings.log_level.lower(), quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()


if __name__ == "__main__":
    run()
