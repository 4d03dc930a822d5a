"""Knobs a DBA sets per database: `alembic -x lock_timeout=2s upgrade head`, or the environment
(`MIGRATION_LOCK_TIMEOUT=2s`). `-x` wins over the environment; both win over the defaults."""

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from alembic_lossless_unique.runtime.errors import MigrationAbort

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.runtime.migration import MigrationContext

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|min)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "min": 60.0, None: 1.0}
_MEMORY = re.compile(r"^\s*(\d+)\s*(kB|MB|GB)\s*$")


def parse_seconds(name: str, raw: str) -> float:
    """'500ms', '2s', '1.5', '10min' -> seconds (a bare number means seconds)."""
    match = _DURATION.match(raw)
    if not match:
        raise MigrationAbort(f"{name}={raw!r} is not a duration: use e.g. 500ms, 2s or 10min")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def parse_seconds_or_off(name: str, raw: str) -> float | None:
    """A duration, or `off` (None): a limit that can be switched off."""
    if raw.strip().lower() == "off":
        return None
    return parse_seconds(name, raw)


def parse_count(name: str, raw: str) -> int:
    if not raw.strip().isdigit() or int(raw) < 1:
        raise MigrationAbort(f"{name}={raw!r} must be a whole number of at least 1")
    return int(raw)


def parse_memory(name: str, raw: str) -> str:
    """'64MB', '512kB', '1GB' -> the same amount in PostgreSQL's spelling."""
    match = _MEMORY.match(raw)
    if not match or int(match.group(1)) < 1:
        raise MigrationAbort(f"{name}={raw!r} is not an amount of memory: use e.g. 16MB or 1GB")
    return f"{int(match.group(1))}{match.group(2)}"


# `python -m alembic_lossless_unique plan` prints its fingerprint as this many hex digits.
FINGERPRINT_DIGITS = 16
_FINGERPRINT = re.compile(rf"^[0-9a-f]{{{FINGERPRINT_DIGITS}}}$")


def parse_fingerprint(name: str, raw: str) -> str:
    if not _FINGERPRINT.match(raw.strip()):
        raise MigrationAbort(
            f"{name}={raw!r} is not a plan's fingerprint: use the {FINGERPRINT_DIGITS} hex digits"
            " that `python -m alembic_lossless_unique plan` prints"
        )
    return raw.strip()


# How the downgrade rebuilds a unique that sits beside the target constraint on the same key.
DOWNGRADE_REBUILDS = ("auto", "in_transaction", "concurrently")
# How an `alembic --sql` script builds the unique index.
OFFLINE_BUILDS = ("concurrent", "blocking")


# The value of subscribers_ready that declares every publication ready.
EVERY_PUBLICATION = "all"


def parse_names(name: str, raw: str) -> tuple[str, ...]:
    """'pub1, pub2' -> ('pub1', 'pub2'); 'all' declares every one; '' none."""
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def choice(*options: str) -> Callable[[str, str], str]:
    """A parser for a setting that takes one of `options`."""

    def parse(name: str, raw: str) -> str:
        if raw.strip() not in options:
            raise MigrationAbort(f"{name}={raw!r} must be one of: {', '.join(options)}")
        return raw.strip()

    return parse


_PARSERS = {float: parse_seconds, "float": parse_seconds, str: parse_memory, "str": parse_memory}
# Settings whose parser is not the one of their type.
_NAMED_PARSERS: dict[str, Callable[[str, str], object]] = {
    "expect_plan": parse_fingerprint,
    "downgrade_rebuild": choice(*DOWNGRADE_REBUILDS),
    "offline_build": choice(*OFFLINE_BUILDS),
    "max_replica_lag": parse_seconds_or_off,
    "pace_on_logical_slots": choice("off", "on"),
    "subscribers_ready": parse_names,
}


@dataclass(frozen=True)
class MigrationSettings:
    # How long one attempt may queue for a strong lock; the app's queries queue behind it.
    lock_timeout: float = 1.0
    # Attempts at a strong lock before giving up cleanly.
    lock_retries: int = 10
    # Pause after the first failed attempt; doubles each time, capped at lock_retry_max_wait.
    lock_retry_wait: float = 0.5
    lock_retry_max_wait: float = 15.0
    # Concurrent builds retried after a duplicate slipped in between dedupe and build.
    build_attempts: int = 3
    # How long a second migrator waits for the first before giving up.
    migrator_wait: float = 1800.0
    # How often a long concurrent build reports its progress.
    progress_interval: float = 10.0
    # The fingerprint of the plan that was reviewed: the run refuses, before changing anything,
    # when what that plan depended on has changed since (expected_plan.py). Empty: no check.
    expect_plan: str = ""
    # work_mem of the dedupe's transaction, if the server's is lower. Finding the duplicates
    # hashes every keyed row; at 64MB a million rows hash in memory. Parallel workers each get
    # as much (times hash_mem_multiplier), so lower it on a server with little memory.
    dedupe_work_mem: str = "64MB"
    # Keys whose duplicates move in one transaction. A writer of a duplicate key waits for one
    # batch at most, and each batch's WAL is one burst for the standbys; larger batches move
    # a little faster. The offline script moves all keys in one transaction.
    move_batch_keys: int = 10_000
    # Archived rows the downgrade moves back per transaction, when there are more than this
    # (fewer come back in its one final transaction). The table's constraint goes first, in
    # a transaction of its own; a rollback stopped between batches is finished by running
    # it again. Each batch waits for the standbys as the move's do.
    restore_batch_rows: int = 20_000
    # The downgrade rebuilds the uniques the upgrade dropped beside the constraint. Built
    # concurrently, PostgreSQL (18 and older) fails some ON CONFLICT upserts of the key while
    # the build runs (23505, 40P01); built inside the downgrade's transaction, no upsert fails,
    # but the table's reads and writes wait for the build. `auto` builds inside the
    # transaction when the table's heap is at most downgrade_rebuild_limit, else concurrently.
    downgrade_rebuild: str = "auto"
    downgrade_rebuild_limit: str = "256MB"
    # How an `alembic --sql` script builds the unique index: CONCURRENTLY, between transactions
    # (psql -f, supabase db push: each statement sent on its own), or blocking writes inside
    # the revision's transaction (the Supabase SQL editor: the whole script as one query).
    offline_build: str = "concurrent"
    # The move's next batch waits while a physical standby replays more than this far behind
    # the primary (pg_stat_replication); None (`off`) never waits. A standby a second behind
    # serves reads a second old, and its WAL backlog drains in about as long.
    max_replica_lag: float | None = 1.0
    # The longest one wait for standbys lasts; a standby still behind then (one that applies
    # with recovery_min_apply_delay, a dead one) is named and no longer waited for in this run.
    max_replica_wait: float = 60.0
    # `on`: the logical slots' consumers (subscribers, CDC tools) pace the move as standbys do,
    # by the position they confirm. Off by default: a consumer may be away for hours, and
    # only keeps WAL on the primary's disk meanwhile.
    pace_on_logical_slots: str = "off"
    # Publications whose subscribers are ready for the tables a run creates in the private
    # schema (each logical subscriber ran the subscriber DDL, or the publication only feeds a
    # CDC stream, which just sees new tables), or "all". A publication that would carry those
    # tables and is not named here makes the run refuse before it writes anything: a logical
    # subscriber lacking them stops replicating every table at their first row.
    subscribers_ready: tuple[str, ...] = ()

    @classmethod
    def from_sources(
        cls, x_arguments: Mapping[str, str], environ: Mapping[str, str] = os.environ
    ) -> "MigrationSettings":
        known = {field.name: field for field in fields(cls)}
        unknown = sorted(set(x_arguments) - known.keys())
        if unknown:
            raise MigrationAbort(
                f"unknown -x setting {unknown[0]!r}; known settings: {', '.join(sorted(known))}"
            )
        values: dict[str, Any] = {}
        for name, field in known.items():
            raw = x_arguments.get(name, environ.get(f"MIGRATION_{name.upper()}"))
            if raw is None:
                continue
            parse = _NAMED_PARSERS.get(name) or _PARSERS.get(field.type, parse_count)
            values[name] = parse(name, raw)
        return cls(**values)

    @classmethod
    def from_config(cls, config: "Config | None") -> "MigrationSettings":
        return cls.from_sources(x_arguments(config))

    @classmethod
    def from_context(cls, context: "MigrationContext") -> "MigrationSettings":
        return cls.from_config(context.config)


def x_arguments(config: "Config | None") -> dict[str, str]:
    raw = getattr(getattr(config, "cmd_opts", None), "x", None) or []
    pairs = {}
    for item in raw:
        name, separator, value = item.partition("=")
        if not separator:
            raise MigrationAbort(f"-x {item!r} must look like name=value")
        pairs[name.strip()] = value.strip()
    return pairs
