"""The settings the benchmark's server runs with: a durable production server by default.

devtools.throwaway_postgres merges what we pass over its FAST_SETTINGS (fsync, full_page_writes
and synchronous_commit off, maintenance_work_mem raised), so the durable mode names every one of
those back explicitly.
"""

import argparse
import re
from pathlib import Path

# No checkpoint lands inside one contender's run and not another's: each starts right after a
# CHECKPOINT, so every first write to a page logs a full-page image, for all contenders alike.
# A DBA can measure their own values side by side with --server-setting max_wal_size=1GB.
CHECKPOINT_SETTINGS = {"max_wal_size": "8GB", "checkpoint_timeout": "30min"}

# What the report prints, besides any setting overridden on the command line.
REPORTED = (
    "fsync",
    "full_page_writes",
    "synchronous_commit",
    "shared_buffers",
    "work_mem",
    "maintenance_work_mem",
    "max_wal_size",
    "checkpoint_timeout",
    "wal_compression",
    "max_parallel_workers_per_gather",
    "max_parallel_maintenance_workers",
)

SETTING_NAME = re.compile(r"^[a-z][a-z0-9_.]*$")


def memory_total_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise RuntimeError("no MemTotal in /proc/meminfo")


def durable_settings() -> dict[str, str]:
    """What a production server has: every commit flushed, full-page images after a checkpoint,
    a quarter of memory as shared_buffers and PostgreSQL's default work_mem and
    maintenance_work_mem."""
    return {
        "fsync": "on",
        "full_page_writes": "on",
        "synchronous_commit": "on",
        "shared_buffers": f"{memory_total_mb() // 4}MB",
        "work_mem": "4MB",
        "maintenance_work_mem": "64MB",
        **CHECKPOINT_SETTINGS,
    }


def server_settings(fast: bool, overrides: dict[str, str]) -> dict[str, str]:
    """The settings to start the server with; --fast keeps the throwaway server's own."""
    base = dict(CHECKPOINT_SETTINGS) if fast else durable_settings()
    return {**base, **overrides}


def parse_setting(text: str) -> tuple[str, str]:
    """'wal_compression=on' -> ('wal_compression', 'on'), for argparse."""
    name, equals, value = text.partition("=")
    name, value = name.strip(), value.strip()
    if not equals or not SETTING_NAME.match(name) or not value:
        raise argparse.ArgumentTypeError(f"{text!r} is not name=value, e.g. wal_compression=on")
    return name, value


def effective_settings(cursor, names: tuple[str, ...]) -> dict[str, str]:
    """The values the running server reports, so the report shows what was measured."""
    cursor.execute(
        "SELECT name, current_setting(name) FROM unnest(%s::text[]) AS name",
        (list(names),),
    )
    return dict(cursor.fetchall())


def settings_line(mode: str, settings: dict[str, str]) -> str:
    return f"server ({mode}): " + ", ".join(f"{name}={value}" for name, value in settings.items())
