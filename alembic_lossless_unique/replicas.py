"""How far the physical standbys lag, and a pacer that holds the next batch of a move until they
have replayed it (`max_replica_lag`, `max_replica_wait`).

What "behind" means. The primary knows a standby's position only from the standby's replies,
which pg_stat_replication shows: `replay_lsn` (how far it has replayed) and `replay_lag` (how
long ago the primary wrote the WAL it replayed last: the age of the data the standby serves).
The time is what a limit is about (a reader on the standby sees rows that old, whatever their
size), but it alone misleads both ways: `replay_lag` is only computed when a reply arrives, it
is NULL after an idle spell until the first reply to new WAL, and it keeps its last value when
replies stop. The byte distance to the end of the primary's WAL
(`pg_wal_lsn_diff(pg_current_wal_insert_lsn(), replay_lsn)`: the insert position, since a
batch committed with synchronous_commit off may not be written out yet) settles what the time
cannot:

- nothing left to replay (0 bytes, or all it was sent): caught up, whatever `replay_lag` says;
- bytes left and a `replay_lag` above the limit: behind;
- bytes left and no `replay_lag` (no reply since the new WAL): behind until it replies, which
  a live standby does as soon as it has received the WAL, and a dead one never does.

A standby reports its replay position when it receives WAL and, otherwise, every
`wal_receiver_status_interval` (10 s by default): one that caught up while the primary was idle
can look behind for up to that long. Byte lag alone would not do as the limit: a megabyte is a
millisecond on one link and a second on another. Two consequences, documented in
docs/reference.md: right after a batch a standby that has just started replaying it is not yet
behind (its lag shows while the next batch runs, and the pacer holds then), so a standby can
fall behind by the limit plus about one batch; and PostgreSQL keeps the last measured
`replay_lag` while a standby replays nothing, so one paused right after catching up looks as
far behind as it was then.

Only physical standbys pace the move (a walsender whose slot is logical feeds a subscriber or a
CDC tool, and walsenders that never replay, pg_receivewal and pg_basebackup, report no replay
position). Logical slots are reported once, with the WAL they retain: a slow or stopped
consumer keeps WAL on the primary's disk, but holding the move for it would hold it for as long
as the consumer is away.

A wait is bounded by `max_replica_wait`; a standby still behind then is named, with what it
looks like (it received everything but does not replay it: recovery_min_apply_delay or a paused
replay; it has not replied for a while: down or cut off), and not waited for again in this run.
Nothing is changed by waiting, so a run stopped meanwhile is re-run as any other.

Reading the lag columns needs pg_read_all_stats (or a superuser): without it PostgreSQL shows
them as NULL, so the pacer says so in one line and the run goes on unpaced.
"""

import logging
import time
from dataclasses import dataclass

from alembic_lossless_unique.database import Database
from alembic_lossless_unique.settings import MigrationSettings

# How often a wait reads pg_stat_replication again: a cheap read of shared memory.
POLL_SECONDS = 0.1
# On an idle primary whose WAL ends at a page boundary, the insert position already counts the
# next page's header (at most 40 bytes), which no standby can replay before more WAL comes.
_PAGE_HEADER_BYTES = 40

_CAN_READ_LAG = """
SELECT pg_catalog.pg_has_role(current_user, 'pg_read_all_stats', 'USAGE')
       OR (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user)
"""

# Physical walsenders that replay: not the ones a logical slot feeds, nor pg_receivewal's and
# pg_basebackup's (they report no replay position).
_STANDBYS = """
SELECT r.application_name AS name,
       EXTRACT(EPOCH FROM r.replay_lag)::float8 AS replay_lag,
       pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_insert_lsn(), r.replay_lsn)::int8
           AS replay_bytes,
       r.sync_state,
       pg_catalog.pg_wal_lsn_diff(r.sent_lsn, r.replay_lsn)::int8 AS unreplayed_sent_bytes,
       pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_insert_lsn(), r.flush_lsn)::int8
           AS flush_bytes,
       EXTRACT(EPOCH FROM pg_catalog.clock_timestamp() - r.reply_time)::float8 AS reply_age
  FROM pg_catalog.pg_stat_replication r
 WHERE r.replay_lsn IS NOT NULL
   AND NOT EXISTS (SELECT FROM pg_catalog.pg_replication_slots s
                    WHERE s.active_pid = r.pid AND s.slot_type = 'logical')
 ORDER BY r.application_name, r.pid
"""

_LOGICAL_SLOTS = """
SELECT slot_name, active,
       pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), restart_lsn)::int8
           AS retained_bytes
  FROM pg_catalog.pg_replication_slots
 WHERE slot_type = 'logical'
 ORDER BY slot_name
"""


@dataclass(frozen=True)
class StandbyLag:
    name: str  # application_name, as pg_stat_replication shows it
    replay_lag: float | None  # seconds; None when unknown (no reply since the last idle spell)
    replay_bytes: int | None  # pg_wal_lsn_diff(pg_current_wal_insert_lsn(), replay_lsn)
    sync_state: str  # async, sync, potential, quorum
    flush_bytes: int | None = None  # WAL it has not yet written to its disk
    reply_age: float | None = None  # seconds since its last reply
    unreplayed_sent_bytes: int | None = None  # sent to it and not yet replayed

    def behind(self, limit: float) -> bool:
        """More than `limit` seconds behind, as the module docstring decides it."""
        if self.replay_bytes is None or self.replay_bytes <= _PAGE_HEADER_BYTES:
            return False
        # It has replayed all it was sent: what remains is not even written out yet.
        if self.unreplayed_sent_bytes is not None and self.unreplayed_sent_bytes <= 0:
            return False
        return self.replay_lag is None or self.replay_lag > limit

    def describe(self) -> str:
        lag = "unknown" if self.replay_lag is None else f"{self.replay_lag:.1f} s"
        return f"standby {self.name!r} ({self.sync_state}) {lag} behind, {_size(self.replay_bytes)}"

    def why_behind(self) -> str:
        """What a standby that stays behind looks like from the primary."""
        received = (self.replay_bytes or 0) - (self.flush_bytes or 0)
        if self.flush_bytes is not None and received > self.flush_bytes:
            return (
                "it has received most of the WAL it lacks but does not replay it"
                " (recovery_min_apply_delay, or replay paused)"
            )
        if self.reply_age is not None and self.reply_age > 10:
            return f"it has not replied for {self.reply_age:.0f} s (down or cut off?)"
        return "it replays slower than the primary writes"


def can_read_lag(db: Database) -> bool:
    return bool(db.scalar(_CAN_READ_LAG))


def standby_lags(db: Database) -> list[StandbyLag] | None:
    """Every physical standby streaming from this server and how far it lags; None when this
    role cannot read the lag (PostgreSQL shows it NULL without pg_read_all_stats)."""
    if not can_read_lag(db):
        return None
    return [
        StandbyLag(
            name=row.name,
            replay_lag=row.replay_lag,
            replay_bytes=row.replay_bytes,
            sync_state=row.sync_state,
            flush_bytes=row.flush_bytes,
            reply_age=row.reply_age,
            unreplayed_sent_bytes=row.unreplayed_sent_bytes,
        )
        for row in db.rows(_STANDBYS)
    ]


def logical_slots_line(db: Database) -> str | None:
    """One line on the logical slots and the WAL each keeps on the primary's disk; None when
    there are none."""
    slots = db.rows(_LOGICAL_SLOTS)
    if not slots:
        return None
    listed = ", ".join(
        f"{slot.slot_name} ({'active' if slot.active else 'inactive'},"
        f" {_size(slot.retained_bytes)} retained)"
        for slot in slots
    )
    return (
        f"logical replication slots: {listed}; the move's WAL stays on the primary until their"
        " consumers confirm it, and they do not pace the move"
    )


class ReplicaPacer:
    """Called between the batches of a move: holds while a standby lags above the limit."""

    def __init__(self, db: Database, settings: MigrationSettings, log: logging.Logger) -> None:
        self.db = db
        self.limit = settings.max_replica_lag
        self.max_wait = settings.max_replica_wait
        self.progress_interval = settings.progress_interval
        self.log = log
        self.skipped: set[str] = set()
        self.started = False
        self.enabled = self.limit is not None

    def wait(self) -> None:
        if not self.enabled or self.limit is None:
            return
        if not self.started:
            self._start()
            if not self.enabled:
                return
        waited_for: set[str] = set()
        started = time.monotonic()
        next_progress = started + self.progress_interval
        while True:
            behind = self._behind(self.limit)
            now = time.monotonic()
            if not behind:
                if waited_for:
                    self.log.info(
                        "standbys caught up after %.1f s: %s",
                        now - started,
                        ", ".join(sorted(waited_for)),
                    )
                return
            if now - started >= self.max_wait:
                self._skip(behind, now - started)
                return
            newly = [standby for standby in behind if standby.name not in waited_for]
            if newly or now >= next_progress:
                self.log.info(
                    "waiting for %s (max_replica_lag %s)",
                    "; ".join(standby.describe() for standby in (newly or behind)),
                    _seconds(self.limit),
                )
                waited_for.update(standby.name for standby in newly)
                next_progress = now + self.progress_interval
            time.sleep(POLL_SECONDS)

    def _start(self) -> None:
        self.started = True
        if not can_read_lag(self.db):
            self.enabled = False
            self.log.warning(
                "this role cannot read the standbys' replay lag, so the move is not paced on it:"
                " GRANT pg_read_all_stats TO %s, or -x max_replica_lag=off to say so",
                self.db.scalar("SELECT current_user"),
            )
            return
        slots = logical_slots_line(self.db)
        if slots is not None:
            self.log.info(slots)

    def _behind(self, limit: float) -> list[StandbyLag]:
        lags = standby_lags(self.db) or []
        return [lag for lag in lags if lag.name not in self.skipped and lag.behind(limit)]

    def _skip(self, behind: list[StandbyLag], waited: float) -> None:
        for standby in behind:
            self.skipped.add(standby.name)
            self.log.warning(
                "%s after %.0f s (max_replica_wait): %s; no longer waiting for it in this run",
                standby.describe(),
                waited,
                standby.why_behind(),
            )


def _size(amount: int | None) -> str:
    if amount is None:
        return "unknown bytes"
    if amount < 1024 * 1024:
        return f"{max(amount, 0) / 1024:.0f} kB"
    return f"{amount / (1024 * 1024):.1f} MB"


def _seconds(value: float) -> str:
    return f"{value * 1000:.0f}ms" if value < 1 else f"{value:g}s"
