"""The move is paced by real standbys: streaming (pg_basebackup -R) through a relay capped at
10 MB/s, so that a write of some 35 MB leaves them seconds behind, as between zones.

One standby, `zone_b`, is synchronous and capped; `delayed` applies with
recovery_min_apply_delay. The primary has wal_level = logical for a logical slot to report.
"""

import contextlib
import logging
import re
import threading
import time

import pytest
from sqlalchemy import create_engine

from alembic_lossless_unique.runtime.database import Database
from alembic_lossless_unique.runtime.errors import MigrationAbort
from alembic_lossless_unique.runtime.replicas import ReplicaPacer, StandbyLag, standby_lags
from alembic_lossless_unique.runtime.settings import MigrationSettings
from devtools.standby import StandbyTimeout, streaming_standby
from devtools.throwaway_postgres import throwaway_postgres
from tests.support import BASELINE, MIGRATOR, MigrationHarness, prepare_cluster, succeed

pytestmark = pytest.mark.slow

LOGGER = "alembic_lossless_unique"
LINK_RATE = 10_000_000  # bytes per second
LIMIT = 0.5  # max_replica_lag of the tests, in seconds
# About 35 MB of WAL: three and a half seconds over the capped link.
BIG_WRITE = (
    "INSERT INTO moved (payload) SELECT md5(g::text) || repeat('x', 900)"
    " FROM generate_series(1, 30000) g"
)
TABLE_DIGEST = "SELECT count(*), md5(string_agg(id || payload, ',' ORDER BY id)) FROM moved"


@pytest.fixture(scope="module")
def primary():
    with throwaway_postgres({"wal_level": "logical"}) as server:
        engine = create_engine(server.url(), isolation_level="AUTOCOMMIT")
        with engine.connect() as connection:
            connection.exec_driver_sql(
                "CREATE TABLE moved (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
                " payload text NOT NULL)"
            )
        engine.dispose()
        yield server


@pytest.fixture(scope="module")
def zone_b(primary):
    with streaming_standby(primary, "zone_b", rate=LINK_RATE, synchronous=True) as standby:
        yield standby


@pytest.fixture
def connect(primary):
    """connect(user=..., password=...) -> a Database on the primary (autocommit)."""
    engines = []

    def connect(settings: MigrationSettings, user=None, password=None) -> Database:
        url = primary.url()
        if user is not None:
            url = url.set(username=user, password=password)
        engine = create_engine(url, isolation_level="AUTOCOMMIT")
        engines.append(engine)
        return Database(engine.connect(), settings)

    yield connect
    for engine in engines:
        engine.dispose()


def settings(**changes) -> MigrationSettings:
    return MigrationSettings(**{"max_replica_lag": LIMIT, "max_replica_wait": 30.0, **changes})


def lag_of(db: Database, name: str) -> StandbyLag:
    lags = standby_lags(db)
    assert lags is not None
    return next(lag for lag in lags if lag.name == name)


def wait_for(probe, timeout: float = 15):
    deadline = time.monotonic() + timeout
    while not (found := probe()):
        assert time.monotonic() < deadline, "gave up waiting"
        time.sleep(0.05)
    return found


def timed_wait(pacer: ReplicaPacer) -> float:
    started = time.monotonic()
    pacer.wait()
    return time.monotonic() - started


@pytest.fixture(autouse=True)
def package_log_reaches_caplog(caplog, monkeypatch):
    """An earlier test's migration may have given the package's logger a handler of its own
    (environment.show_progress), which stops its records from reaching pytest's."""
    monkeypatch.setattr(logging.getLogger(LOGGER), "propagate", True)
    caplog.set_level(logging.INFO, LOGGER)


def messages(caplog, level=logging.INFO) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == level]


def test_the_pacer_holds_until_a_capped_standby_replays(zone_b, connect, caplog):
    caplog.set_level(logging.INFO, LOGGER)
    db = connect(settings())
    pacer = ReplicaPacer(db, db.settings, logging.getLogger(LOGGER))

    db.execute(BIG_WRITE)
    assert lag_of(db, "zone_b").replay_bytes > 5_000_000
    # The write took well under a second, and its WAL takes seconds to cross the link: the
    # pacer holds at once, without waiting for the standby's replies to say it is behind.
    waited = timed_wait(pacer)

    assert waited > 1.0
    # It let go once what was left was what the standby replays within LIMIT, at its rate.
    released = time.monotonic()
    zone_b.wait_replayed()
    assert time.monotonic() - released < LIMIT + 1.0
    assert zone_b.sql(TABLE_DIGEST) == db.rows(TABLE_DIGEST)
    waits = [line for line in messages(caplog) if line.startswith("waiting for")]
    assert len(waits) == 1 and "standby 'zone_b' (sync)" in waits[0], waits
    assert any("caught up" in line and "zone_b" in line for line in messages(caplog))


def test_a_role_that_cannot_read_the_lag_is_told_so_and_not_held(primary, zone_b, connect, caplog):
    caplog.set_level(logging.INFO, LOGGER)
    admin = connect(settings())
    admin.execute("DROP ROLE IF EXISTS lag_blind")
    admin.execute("CREATE ROLE lag_blind LOGIN PASSWORD 'blind-but-harmless'")
    admin.execute("GRANT INSERT, SELECT ON moved TO lag_blind")
    blind = connect(settings(), user="lag_blind", password="blind-but-harmless")
    assert standby_lags(blind) is None

    blind.execute(BIG_WRITE.replace("30000", "10000"))
    assert lag_of(admin, "zone_b").replay_bytes > 5_000_000
    waited = timed_wait(ReplicaPacer(blind, blind.settings, logging.getLogger(LOGGER)))

    assert waited < LIMIT
    [line] = messages(caplog, logging.WARNING)
    assert "pg_read_all_stats TO lag_blind" in line and "max_replica_lag=off" in line
    zone_b.wait_replayed()


def test_a_synchronous_standby_confirms_commits_and_reports_its_lag(zone_b, connect):
    db = connect(settings())
    assert lag_of(db, "zone_b").sync_state == "sync"
    db.execute("SET synchronous_commit = remote_apply")
    db.execute("INSERT INTO moved (payload) VALUES ('applied before the commit returns')")
    # remote_apply: the commit returned once the synchronous standby had applied it.
    assert zone_b.sql(TABLE_DIGEST) == db.rows(TABLE_DIGEST)
    assert timed_wait(ReplicaPacer(db, db.settings, logging.getLogger(LOGGER))) < LIMIT


def test_a_standby_that_stays_behind_is_skipped_after_the_bounded_wait(
    primary, zone_b, connect, caplog
):
    caplog.set_level(logging.INFO, LOGGER)
    # A limit with room for zone_b's lag under the app's writes on a busy test machine.
    db = connect(settings(max_replica_lag=1.5, max_replica_wait=1.5))
    pacer = ReplicaPacer(db, db.settings, logging.getLogger(LOGGER))
    db.execute("SELECT pg_create_logical_replication_slot('cdc_feed', 'pgoutput')")
    try:
        with (
            streaming_standby(primary, "delayed", apply_delay="3s") as delayed,
            app_traffic(connect(settings())),
        ):
            # Under the app's writes, a standby that applies 3 s late stays 3 s behind.
            wait_for(lambda: (lag_of(db, "delayed").replay_lag or 0) > 2)
            assert 1.5 <= timed_wait(pacer) < 5
            [skipped] = messages(caplog, logging.WARNING)
            assert skipped.startswith("standby 'delayed' (async)")
            assert "recovery_min_apply_delay" in skipped and "no longer waiting" in skipped

            assert lag_of(db, "delayed").replay_lag > 1.5
            assert timed_wait(pacer) < LIMIT
            assert len(messages(caplog, logging.WARNING)) == 1
            count = "SELECT count(*) FROM moved"
            assert delayed.sql(count)[0][0] < db.scalar(count)
    finally:
        db.execute("SELECT pg_drop_replication_slot('cdc_feed')")
    [slots] = [line for line in messages(caplog) if "logical replication slots" in line]
    assert "cdc_feed (inactive," in slots and "do not pace the move" in slots
    zone_b.wait_replayed()
    assert zone_b.sql(TABLE_DIGEST) == db.rows(TABLE_DIGEST)


def test_logical_slots_pace_the_move_only_when_asked(zone_b, connect, caplog):
    """An inactive logical slot (a CDC tool that is away) never holds the move by default; with
    pace_on_logical_slots=on it holds each wait as a standby would, until the bounded wait
    ends and one line names it."""
    caplog.set_level(logging.INFO, LOGGER)
    db = connect(settings(max_replica_wait=1.0))
    db.execute("SELECT pg_create_logical_replication_slot('cdc_away', 'pgoutput')")
    try:
        db.execute("INSERT INTO moved (payload) VALUES ('for the slot to confirm')")
        assert timed_wait(ReplicaPacer(db, db.settings, logging.getLogger(LOGGER))) < LIMIT
        assert not messages(caplog, logging.WARNING)

        asked = connect(settings(max_replica_wait=1.0, pace_on_logical_slots="on"))
        assert timed_wait(ReplicaPacer(asked, asked.settings, logging.getLogger(LOGGER))) >= 1.0
        [skipped] = messages(caplog, logging.WARNING)
        assert skipped.startswith("logical slot 'cdc_away'") and "no longer waiting" in skipped
    finally:
        db.execute("SELECT pg_drop_replication_slot('cdc_away')")
    zone_b.wait_replayed()


@contextlib.contextmanager
def app_traffic(db: Database):
    """A row every 50 ms, as an app writes, until the block ends."""
    stop = threading.Event()

    def write() -> None:
        while not stop.wait(0.05):
            db.execute("INSERT INTO moved (payload) VALUES ('app traffic')")

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    try:
        yield
    finally:
        stop.set()
        writer.join(timeout=10)


@pytest.mark.parametrize(
    ("raw", "expected"), [("off", None), ("500ms", 0.5), ("2s", 2.0), ("OFF", None)]
)
def test_max_replica_lag_is_a_duration_or_off(raw, expected):
    assert MigrationSettings.from_sources({"max_replica_lag": raw}).max_replica_lag == expected


def test_max_replica_lag_refuses_anything_else():
    with pytest.raises(MigrationAbort, match="max_replica_lag='soon' is not a duration"):
        MigrationSettings.from_sources({"max_replica_lag": "soon"})


def test_pacing_off_never_reads_the_standbys(zone_b, connect, caplog):
    db = connect(settings(max_replica_lag=None))
    db.execute(BIG_WRITE.replace("30000", "3000"))
    assert timed_wait(ReplicaPacer(db, db.settings, logging.getLogger(LOGGER))) < LIMIT
    assert not messages(caplog) and not messages(caplog, logging.WARNING)
    zone_b.wait_replayed()


# The whole upgrade, as a user runs it, behind a standby on a slow link: the move's batches
# wait for it, and it ends with the primary's rows.

SLOW_LINK_RATE = 150_000  # bytes per second: one batch of the move below takes about a second
BATCH_KEYS = 100
CONSTRAINT_NAME = "meta_assets_cache_workspace_id_phone_number_id_key"
TABLE_CONTENTS = "SELECT md5(string_agg(t::text, ',' ORDER BY id)) FROM public.meta_assets_cache t"
ARCHIVE_CONTENTS = (
    "SELECT md5(string_agg(a::text, ',' ORDER BY id))"
    " FROM meta_assets_migration.meta_assets_cache_archive a"
)


def test_the_move_and_the_restore_go_batch_by_batch_as_a_capped_standby_replays(primary, zone_b):
    """`alembic -x move_batch_keys=100 -x max_replica_lag=500ms upgrade head` on a drifted
    table, with a synchronous standby and one behind a 150 kB/s link: each batch waits for the
    slow one, whose replay lag while the move runs stays within the limit and about one batch
    (unpaced, it would grow with every batch), and both standbys end with the primary's rows
    and archive. The rollback's restore, in batches of 200 rows, is paced the same way."""
    prepare_cluster(primary)
    admin = create_engine(primary.url(), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        # FILE_COPY: a few WAL records, not the template's every page over the slow link.
        connection.exec_driver_sql("CREATE DATABASE paced STRATEGY FILE_COPY")
        connection.exec_driver_sql(f"GRANT pg_read_all_stats TO {MIGRATOR}")
    harness = MigrationHarness(primary, "paced")
    try:
        harness.build_state("drifted", keys=12_000)
        succeed(harness.cli("upgrade", BASELINE))
        with streaming_standby(primary, "slow_zone", rate=SLOW_LINK_RATE) as slow:
            for arguments, done_when, batch_line, contents in (
                (
                    ("-x", f"move_batch_keys={BATCH_KEYS}", "upgrade", "head"),
                    # The unique index's catalog entry, committed as its concurrent build starts.
                    f"SELECT count(*) > 0 FROM pg_class WHERE relname = '{CONSTRAINT_NAME}'",
                    "moved batch",
                    (TABLE_CONTENTS, ARCHIVE_CONTENTS),
                ),
                (
                    ("-x", "restore_batch_rows=200", "downgrade", "-1"),
                    # The archive goes in the final transaction, after the last batch.
                    "SELECT count(*) = 0 FROM pg_class WHERE relname = 'meta_assets_cache_archive'",
                    "restored batch",
                    (TABLE_CONTENTS,),
                ),
            ):
                with LagSampler(primary, "slow_zone", "paced", done_when) as lags:
                    result = harness.cli("-x", "max_replica_lag=500ms", *arguments)
                succeed(result)
                batches = int(re.search(rf"{batch_line} \d+ of (\d+)", result.output).group(1))
                assert batches >= 5, result.output
                # One batch's WAL on the link, from what all the batches wrote. Paced, the
                # standby is at most the limit and the batch in flight behind (with room for a
                # second batch and a second on a loaded machine); unpaced, it falls behind by
                # all of them.
                batch_seconds = lags.paced_wal_bytes / batches / SLOW_LINK_RATE
                unpaced = lags.paced_wal_bytes / SLOW_LINK_RATE
                assert lags.worst_lag <= 0.5 + 2 * batch_seconds + 1.0 < unpaced, (
                    arguments,
                    lags.worst_lag,
                    batch_seconds,
                    unpaced,
                )
                assert "waiting for standby 'slow_zone'" in result.output
                for standby in (slow, zone_b):
                    standby.wait_replayed()
                    for query in contents:
                        assert standby.sql(query, "paced") == harness.rows(query)
    finally:
        harness.close()
        admin.dispose()


class LagSampler:
    """How old the newest rows one standby serves are, sampled every 50 ms while the paced part
    of a run goes on: from before the migration until the standby has replayed everything
    written before `done_when` (a query in `database`) turned true. Measured from the primary's
    own WAL positions over time (the age of the oldest WAL the standby has not replayed), not
    from pg_stat_replication's replay_lag, which only moves when replies arrive. Also the WAL
    the paced part wrote."""

    def __init__(self, primary, standby: str, database: str, done_when: str) -> None:
        self.engine = create_engine(primary.url(database), isolation_level="AUTOCOMMIT")
        self.standby, self.done_when = standby, done_when
        self.worst_lag = 0.0
        self.paced_wal_bytes = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.sample, daemon=True)

    def __enter__(self) -> "LagSampler":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self.thread.join(timeout=60)
        self.stop.set()
        self.thread.join(timeout=10)
        self.engine.dispose()

    def sample(self) -> None:
        position = "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')::int8"
        with self.engine.connect() as connection:
            db = Database(connection, settings())
            written: list[tuple[float, int]] = []  # (when, the primary's WAL position)
            start = db.scalar(position)
            paced_end = None
            while not self.stop.wait(0.05):
                now, end = time.monotonic(), db.scalar(position)
                written.append((now, end))
                replayed = lag_of(db, self.standby).replay_position
                # An idle primary's insert position counts the next page's header (40 bytes).
                oldest = next((when for when, lsn in written if lsn > replayed + 40), now)
                self.worst_lag = max(self.worst_lag, now - oldest)
                if paced_end is None and db.scalar(self.done_when):
                    # Where the WAL was before: what follows (a build) is not paced.
                    paced_end = written[-2][1] if len(written) > 1 else start
                    self.paced_wal_bytes = paced_end - start
                if paced_end is not None and replayed >= paced_end:
                    return


def test_waiting_for_a_standby_whose_link_is_down_fails_at_once(primary, connect):
    """A standby the primary no longer sees streaming will never catch up: the devtools wait
    (the benchmark's settle between contenders) says so within `silent_for`, not at the end of
    its timeout."""
    db = connect(settings())
    with streaming_standby(primary, "cut_off") as cut_off:
        cut_off.relay.close()
        db.execute(BIG_WRITE)
        started = time.monotonic()
        with pytest.raises(StandbyTimeout, match="standby cut_off has not streamed for 2 s"):
            cut_off.wait_replayed(timeout=600, silent_for=2)
        assert time.monotonic() - started < 30
