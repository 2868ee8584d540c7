"""Analytics on ClickHouse: the usage sink, migrations, reports, alerting and the webhook sender.

One client for both backends (clickhouse-connect; ``interface="chdb"`` in-process, HTTP against a
server). See ``docs/analytics.md`` for the design, notably how reads work while an embedded sink
owns the chDB data path.
"""
