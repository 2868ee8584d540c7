"""Host CPU utilisation from ``/proc/stat`` (psutil only where there is no /proc)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

PROC_STAT = Path("/proc/stat")


def parse_proc_stat(text: str) -> tuple[int, int]:
    """(busy, total) jiffies of the aggregate ``cpu`` line. iowait counts as idle; guest time is in user already."""
    for line in text.splitlines():
        fields = line.split()
        if fields and fields[0] == "cpu":
            values = [int(v) for v in fields[1:9]]  # user nice system idle iowait irq softirq steal
            values += [0] * (8 - len(values))
            idle = values[3] + values[4]
            total = sum(values)
            return total - idle, total
    raise ValueError("no aggregate cpu line in /proc/stat")


def cpu_percent(
    interval_s: float = 0.5,
    *,
    read: Callable[[], str] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> float | None:
    """Busy share of all CPUs over ``interval_s``, 0-100; None when it cannot be measured here."""
    if read is None and not PROC_STAT.exists():
        return _psutil_percent(interval_s)
    reader = read or PROC_STAT.read_text
    busy0, total0 = parse_proc_stat(reader())
    sleep(interval_s)
    busy1, total1 = parse_proc_stat(reader())
    dt = total1 - total0
    if dt <= 0:
        return 0.0
    return round(100.0 * (busy1 - busy0) / dt, 1)


def _psutil_percent(interval_s: float) -> float | None:
    try:
        import psutil  # type: ignore[import-untyped]
    except ImportError:
        return None
    return float(psutil.cpu_percent(interval=interval_s))
