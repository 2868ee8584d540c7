"""Errors of the analytics store. All are ``AifleetError``s so agents can branch on ``retryable``."""

from __future__ import annotations

from schemas.errors import ErrorReason
from streams.errors import AifleetError


class AnalyticsError(AifleetError):
    """Something went wrong talking to the analytics store."""

    reason = ErrorReason.INTERNAL


class AnalyticsUnavailable(AnalyticsError):
    """ClickHouse (or the embedded chDB engine, or its query endpoint) cannot be reached right now.

    The Kafka agent must not commit the offsets of the batch that raised this; it retries later.
    """

    retryable = True


class AnalyticsBackpressure(AnalyticsUnavailable):
    """ClickHouse is up but refuses load (too many parts, memory limit, too many queries): slow down."""


class AnalyticsQueryError(AnalyticsError):
    """A query was rejected (bad SQL, unknown table, failed migration): retrying will not help."""


class AnalyticsDataError(AnalyticsQueryError):
    """The store cannot hold a value of the rows it was given (out of its column's range, unconvertible).

    The statement is fine and so are other rows: the usage consumer isolates and dead-letters the rows.
    """


class InvalidReportRequest(AnalyticsError):
    """A report was asked for with an unknown kind, grouping column, format or time span."""


class EmbeddedStoreLocked(AnalyticsUnavailable):
    """The chDB data path is owned by another process and no query endpoint for it was found."""


class BackupError(AnalyticsError):
    """A backup or restore could not be done as asked; the message says what to change."""


class BackupExists(BackupError):
    """The backup destination already exists (backups are never overwritten)."""


class BackupNotFound(BackupError):
    """There is no backup at the given source."""


class BackupPathNotAllowed(BackupError):
    """The destination or source is outside the store's ``backups.allowed_path``."""


class RestoreTargetExists(BackupError):
    """The database to restore already exists and ``replace`` was not asked for."""


class RebuildError(AnalyticsError):
    """The usage sink's consumer group offsets could not be reset."""


class ConsumerGroupActive(RebuildError):
    """The group still has members (an analytics process runs): offsets can only move while it is empty.

    Retryable: it succeeds once the analytics process is stopped (a killed one leaves after its session timeout).
    """

    retryable = True


class WebhookDeliveryFailed(AnalyticsError):
    """A webhook could not be delivered after all retries."""

    retryable = True
