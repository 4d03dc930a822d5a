"""How far the physical standbys lag, and a pacer that holds the next batch of a move until they
have replayed it (`max_replica_lag`, `max_replica_wait`).

What "behind" means. The primary knows a standby's position only from the standby's replies,
which pg_stat_replication shows as `replay_lsn`. Its `replay_lag` (how long ago the primary
wrote the WAL replayed last) looks backwards and only moves when a reply arrives: right after a
burst of WAL it still shows the small lag of before, so pacing on it lets batch after batch go
until the replies catch up, and the standby ends as far behind as all those batches take to
cross its link. The pacer looks forwards instead: when a wait begins it notes the end of the
WAL (`pg_current_wal_insert_lsn()`: the batch before it, with whatever the app wrote), and the
next batch starts once every standby has replayed up to there, but for what it replays in
`max_replica_lag` at the rate it has been replaying (measured from its `replay_lsn` while it
had WAL to replay; none is assumed before that). So a standby is never more than the limit plus
the batch in flight behind, whatever its link; a fast standby costs the move nothing; one that
replays nothing (recovery_min_apply_delay, paused, cut off) holds the move until the bounded
wait ends. WAL written during a wait (the app's) is for the next wait.

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

from alembic_lossless_unique.runtime.database import Database
from alembic_lossless_unique.runtime.settings import MigrationSettings

# How often a wait reads pg_stat_replication again: a cheap read of shared memory.
POLL_SECONDS = 0.1
# The sync_state the pacer gives a logical slot it waits for.
LOGICAL = "logical"
# The shortest span a standby's replay rate is measured over.
RATE_WINDOW = 0.5
# On an idle primary whose WAL ends at a page boundary, the insert position already counts the
# next page's header (at most 40 bytes), which no standby can replay before more WAL comes.
_PAGE_HEADER_BYTES = 40

_INSERT_POSITION = (
    "SELECT pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_insert_lsn(), '0/0')::int8"
)

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
       EXTRACT(EPOCH FROM pg_catalog.clock_timestamp() - r.reply_time)::float8 AS reply_age,
       pg_catalog.pg_wal_lsn_diff(r.replay_lsn, '0/0')::int8 AS replay_position
  FROM pg_catalog.pg_stat_replication r
 WHERE r.replay_lsn IS NOT NULL
   AND NOT EXISTS (SELECT FROM pg_catalog.pg_replication_slots s
                    WHERE s.active_pid = r.pid AND s.slot_type = 'logical')
 ORDER BY r.application_name, r.pid
"""

_LOGICAL_SLOTS = """
SELECT slot_name, active,
       pg_catalog.pg_wal_lsn_diff(confirmed_flush_lsn, '0/0')::int8 AS confirmed_position,
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
    replay_position: int | None = None  # replay_lsn, as bytes since 0/0

    def describe(self) -> str:
        if self.sync_state == LOGICAL:
            return f"logical slot {self.name!r} {_size(self.replay_bytes)} behind"
        lag = "unknown" if self.replay_lag is None else f"{self.replay_lag:.1f} s"
        return f"standby {self.name!r} ({self.sync_state}) {lag} behind, {_size(self.replay_bytes)}"

    def why_behind(self) -> str:
        """What a standby that stays behind looks like from the primary."""
        if self.sync_state == LOGICAL:
            return "its consumer has not confirmed the WAL since (stopped, or slower than the move)"
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
            replay_position=row.replay_position,
        )
        for row in db.rows(_STANDBYS)
    ]


def logical_slots_line(db: Database, paced: bool = False) -> str | None:
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
    return f"logical replication slots: {listed}; the move's WAL stays on the primary until" + (
        " their consumers confirm it, and they pace the move (pace_on_logical_slots on)"
        if paced
        else " their consumers confirm it, and they do not pace the move"
        " (-x pace_on_logical_slots=on to wait for them)"
    )


def logical_slot_positions(db: Database) -> list[StandbyLag]:
    """The logical slots as the pacer sees a standby: where their consumers have confirmed."""
    return [
        StandbyLag(
            name=slot.slot_name,
            replay_lag=None,
            replay_bytes=slot.retained_bytes,
            sync_state=LOGICAL,
            replay_position=slot.confirmed_position,
        )
        for slot in db.rows(_LOGICAL_SLOTS)
        if slot.confirmed_position is not None
    ]


class ReplicaPacer:
    """Called between the batches of a move: holds until every standby has replayed the batch
    before, within max_replica_lag (see the module docstring)."""

    def __init__(self, db: Database, settings: MigrationSettings, log: logging.Logger) -> None:
        self.db = db
        self.limit = settings.max_replica_lag
        self.max_wait = settings.max_replica_wait
        self.progress_interval = settings.progress_interval
        self.log = log
        self.skipped: set[str] = set()
        # Per standby: when and where its replay was last looked at, and whether it had WAL
        # to replay then; and the rate it replays at.
        self.replay_seen: dict[str, tuple[float, int, bool]] = {}
        self.replay_rates: dict[str, float] = {}
        self.started = False
        self.enabled = self.limit is not None
        self.pace_on_logical_slots = settings.pace_on_logical_slots == "on"

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
        target = int(self.db.scalar(_INSERT_POSITION))
        while True:
            behind = self._behind(target, self.limit)
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
        slots = logical_slots_line(self.db, self.pace_on_logical_slots)
        if slots is not None:
            self.log.info(slots)

    def _behind(self, target: int, limit: float) -> list[StandbyLag]:
        """The standbys that have not replayed up to `target`, but for what they replay in
        `limit` seconds at the rate they have been replaying."""
        now = time.monotonic()
        behind = []
        followers = standby_lags(self.db) or []
        if self.pace_on_logical_slots:
            followers += logical_slot_positions(self.db)
        for lag in followers:
            if lag.name in self.skipped or lag.replay_position is None:
                continue
            owed = target - lag.replay_position
            self._observe(lag.name, lag.replay_position, owed > _PAGE_HEADER_BYTES, now)
            if owed > max(_PAGE_HEADER_BYTES, self.replay_rates.get(lag.name, 0.0) * limit):
                behind.append(lag)
        return behind

    def _observe(self, name: str, position: int, busy: bool, now: float) -> None:
        """A standby's replay rate (bytes per second), from how far it moved over at least
        RATE_WINDOW while it had WAL to replay; an idle standby tells nothing of its speed."""
        last = self.replay_seen.get(name)
        if last is None or not last[2]:
            self.replay_seen[name] = (now, position, busy)
            return
        then, position_then, _ = last
        if now - then < RATE_WINDOW:
            return
        if position > position_then:
            measured = (position - position_then) / (now - then)
            previous = self.replay_rates.get(name)
            self.replay_rates[name] = measured if previous is None else (previous + measured) / 2
        self.replay_seen[name] = (now, position, busy)

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
