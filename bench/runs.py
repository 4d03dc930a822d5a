"""One contender, run once on a fresh clone while the app writes, and summed up as a Result."""

import re
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from bench.attribution import (
    PhaseSummary,
    SlowInsert,
    Span,
    Timeline,
    percentile,
    phase_spans,
    seconds_by_kind,
    slowest_inserts,
    summarise_phases,
    wait_ms,
)
from bench.db import alembic, command_env, conninfo, session
from bench.observe import ActivitySampler, CommandRun, PhaseStart
from bench.starting_tables import (
    DEDUPE_SQL,
    TEMPLATE_CONSTRAINED,
    TEMPLATE_DEDUPED,
    TEMPLATE_DRIFTED,
    TEMPLATE_KEYED_PARTITIONED,
    TEMPLATE_KEYED_PARTITIONED_UPGRADED,
    TEMPLATE_KEYED_PLAIN,
    TEMPLATE_KEYED_PLAIN_UPGRADED,
    TEMPLATE_UPGRADED,
    Census,
    TableShape,
    census,
    clone,
)
from bench.writers import (
    ACCEPTED,
    FAILED,
    REJECTED,
    Attempt,
    DuplicateStream,
    InsertProbe,
    PacedWriter,
)
from devtools.starting_states import SEED_MIGRATION
from devtools.throwaway_postgres import ThrowawayServer

PROJECT_ROOT = SEED_MIGRATION.parent.parent
# The writers keep going this long after the command exits, to catch inserts it held back.
WRITERS_TAIL = 0.25
LIMIT_SQL = (
    "CREATE UNIQUE INDEX bench_limit_unique"
    " ON public.meta_assets_cache (workspace_id, phone_number_id)"
)
# The recipe a DBA runs by hand to add the unique online, as psql runs it (autocommit, each
# statement on its own): delete the duplicates, keeping the row the package keeps (it archives
# nothing), build the unique index concurrently, promote it. Each step logs a phase line.
BY_HAND_STEPS = (
    ("delete duplicates", DEDUPE_SQL),
    (
        "build index concurrently",
        "CREATE UNIQUE INDEX CONCURRENTLY meta_assets_cache_workspace_id_phone_number_id_key"
        " ON public.meta_assets_cache (workspace_id, phone_number_id)",
    ),
    (
        "promote to constraint",
        "ALTER TABLE public.meta_assets_cache"
        " ADD CONSTRAINT meta_assets_cache_workspace_id_phone_number_id_key"
        " UNIQUE USING INDEX meta_assets_cache_workspace_id_phone_number_id_key",
    ),
)
# How the reference fails when a duplicate arrives between its DELETE and its index build.
DUPLICATE_BUILD_FAILURE = "could not create unique index"


@dataclass(frozen=True)
class Contender:
    key: str
    label: str
    template: str
    # The phase a run is in before it logs one: the whole run for the psql contenders.
    first_phase: str
    first_kind: str
    # The limit runs without it: a duplicate would make its plain build fail, and it measures
    # the build alone.
    duplicate_stream: bool = True
    # What the command is run with: `alembic <these>` for ours.
    alembic_arguments: tuple[str, ...] = ("upgrade", "head")
    # Whether a unique on the pair must be there afterwards: not after a rollback.
    leaves_unique: bool = True

    @property
    def is_reference(self) -> bool:
        return self.key.startswith("reference")


REFERENCE_PHASE = "psql -f seed_migration.sql"
CONTENDERS = (
    Contender(
        "reference",
        "reference SQL (psql -f seed_migration.sql)",
        TEMPLATE_DRIFTED,
        REFERENCE_PHASE,
        "reference SQL",
    ),
    Contender("ours", "ours (alembic upgrade head)", TEMPLATE_DRIFTED, "start-up", "start-up"),
    Contender(
        "by_hand",
        "by hand (DELETE ... USING, CREATE UNIQUE INDEX CONCURRENTLY, ADD CONSTRAINT ... USING"
        " INDEX)",
        TEMPLATE_DRIFTED,
        "start-up",
        "start-up",
    ),
    Contender(
        "limit",
        "physical limit (CREATE UNIQUE INDEX, deduplicated)",
        TEMPLATE_DEDUPED,
        "CREATE UNIQUE INDEX",
        "build",
        duplicate_stream=False,
    ),
    Contender(
        "reference_rerun",
        "reference SQL re-run (constrained)",
        TEMPLATE_CONSTRAINED,
        REFERENCE_PHASE,
        "reference SQL",
    ),
    Contender(
        "ours_rerun", "ours re-run (constrained)", TEMPLATE_CONSTRAINED, "start-up", "start-up"
    ),
    # Ours with its pacing on standby lag off: beside a standby, what pacing costs and saves.
    Contender(
        "ours_unpaced",
        "ours unpaced (alembic -x max_replica_lag=off upgrade head)",
        TEMPLATE_DRIFTED,
        "start-up",
        "start-up",
        alembic_arguments=("-x", "max_replica_lag=off", "upgrade", "head"),
    ),
    # The incident path: ours' upgrade of the drifted table, rolled back.
    Contender(
        "ours_rollback",
        "ours rollback (alembic downgrade -1)",
        TEMPLATE_UPGRADED,
        "start-up",
        "start-up",
        alembic_arguments=("downgrade", "-1"),
        leaves_unique=False,
    ),
)
GROWTH_CONTENDERS = tuple(c for c in CONTENDERS if c.key in ("reference", "ours", "ours_rollback"))
# The comparison without a standby (ours is unpaced there: it has none to wait for).
COMPARISON_CONTENDERS = tuple(c for c in CONTENDERS if c.key != "ours_unpaced")
# The race at 10M, with and without a streaming standby.
RACE_CONTENDERS = tuple(
    c for c in CONTENDERS if c.key in ("reference", "ours", "ours_unpaced", "by_hand")
)
RACE_WITHOUT_STANDBY = tuple(c for c in RACE_CONTENDERS if c.key != "ours_unpaced")


# The partitioned section: ours on the table with PRIMARY KEY (id, workspace_id), plain and
# hash-partitioned, both directions, through a migration whose row identity is that key.
KEYED_MIGRATION = ("-c", str(PROJECT_ROOT / "bench" / "partitioned_migration" / "alembic.ini"))
PARTITIONED_CONTENDERS = (
    Contender(
        "ours_plain",
        "plain table: alembic upgrade head",
        TEMPLATE_KEYED_PLAIN,
        "start-up",
        "start-up",
        alembic_arguments=(*KEYED_MIGRATION, "upgrade", "head"),
    ),
    Contender(
        "ours_partitioned",
        "partitioned table: alembic upgrade head",
        TEMPLATE_KEYED_PARTITIONED,
        "start-up",
        "start-up",
        alembic_arguments=(*KEYED_MIGRATION, "upgrade", "head"),
    ),
    Contender(
        "ours_plain_rollback",
        "plain table: alembic downgrade -1",
        TEMPLATE_KEYED_PLAIN_UPGRADED,
        "start-up",
        "start-up",
        alembic_arguments=(*KEYED_MIGRATION, "downgrade", "-1"),
        leaves_unique=False,
    ),
    Contender(
        "ours_partitioned_rollback",
        "partitioned table: alembic downgrade -1",
        TEMPLATE_KEYED_PARTITIONED_UPGRADED,
        "start-up",
        "start-up",
        alembic_arguments=(*KEYED_MIGRATION, "downgrade", "-1"),
        leaves_unique=False,
    ),
)


@dataclass(frozen=True)
class Workload:
    """What the app does while a contender runs."""

    shape: TableShape
    duplicate_rate: float  # inserts per second; 0 turns the stream off


@dataclass(frozen=True)
class Trace:
    """One run's raw observations, for the plot."""

    probe: list[Attempt]
    stream: list[Attempt]
    spans: list[Span]
    timeline: Timeline


@dataclass
class Result:
    key: str
    label: str
    seconds: float
    exit_code: int
    unique_on_pair: bool
    rows_deleted: int
    null_phone_lost: int
    rows_lost: int
    wal_bytes: int
    worst_wait_ms: float
    p99_wait_ms: float
    probe_inserts: int
    probe_errors: int
    stream_inserts: int
    stream_accepted: int
    stream_rejected: int
    stream_errors: int
    stream_worst_wait_ms: float
    stream_p99_wait_ms: float
    # The last lines of the command's output when it failed.
    failure: str = ""
    # Failed writes (probe or stream) by SQLSTATE and message.
    write_failures: dict[str, int] = field(default_factory=dict)
    # Samples of the probe inside an insert, by wait event, over the whole run.
    probe_wait_events: dict[str, int] = field(default_factory=dict)
    phases: list[PhaseSummary] = field(default_factory=list)
    # Seconds per phase kind of the median round: where `seconds` went.
    kind_seconds: dict[str, float] = field(default_factory=dict)
    slowest_inserts: list[SlowInsert] = field(default_factory=list)
    # Seconds of every repeat; `seconds` is their median.
    runs: list[float] = field(default_factory=list)
    # Whether the run must leave a unique on the pair (a rollback must not).
    leaves_unique: bool = True
    # The streaming standby's worst replay lag over the run (seconds); None without one.
    max_replay_lag: float | None = None
    # The batches ours moved its duplicates in (its log's "moved batch i of N"); 0 if none.
    batches: int = 0
    trace: Trace | None = field(default=None, repr=False)

    @property
    def failed_writes(self) -> int:
        return self.probe_errors + self.stream_errors

    @property
    def stream_broke_reference(self) -> bool:
        """The reference and the by-hand recipe cannot finish while duplicates keep arriving:
        their index build fails on one written after their DELETE. That is a finding about
        them, not a benchmark failure."""
        return (
            not self.key.startswith("ours")
            and self.stream_accepted > 0
            and DUPLICATE_BUILD_FAILURE in self.failure
        )

    @property
    def failed(self) -> bool:
        if self.exit_code != 0:
            return not self.stream_broke_reference
        return self.unique_on_pair != self.leaves_unique


def result_to_json(result: Result) -> dict:
    values = {f.name: getattr(result, f.name) for f in fields(Result) if f.name != "trace"}
    values["phases"] = [asdict(phase) for phase in result.phases]
    values["slowest_inserts"] = [asdict(insert) for insert in result.slowest_inserts]
    return values


def result_from_json(values: dict) -> Result:
    return Result(
        **{
            **values,
            "phases": [PhaseSummary(**phase) for phase in values["phases"]],
            "slowest_inserts": [SlowInsert(**insert) for insert in values["slowest_inserts"]],
        }
    )


def combine(repeats: list[Result]) -> Result:
    """The repeat with the median time, made pessimistic: the worst waits, every failed write,
    the most rows lost and any failure of any repeat. Its time per phase kind is the median
    round's; its phases, wait events and plot are the round with the worst insert wait's, so
    they explain that wait."""
    ordered = sorted(repeats, key=lambda result: result.seconds)
    median = ordered[(len(ordered) - 1) // 2]
    worst = max(repeats, key=lambda result: result.worst_wait_ms)
    failing = max(repeats, key=lambda result: abs(result.exit_code))
    lossiest = max(repeats, key=lambda result: result.rows_lost)
    return replace(
        median,
        exit_code=failing.exit_code,
        failure=failing.failure,
        worst_wait_ms=worst.worst_wait_ms,
        p99_wait_ms=max(result.p99_wait_ms for result in repeats),
        probe_errors=sum(result.probe_errors for result in repeats),
        stream_errors=sum(result.stream_errors for result in repeats),
        write_failures=dict(sum((Counter(r.write_failures) for r in repeats), Counter())),
        stream_worst_wait_ms=max(result.stream_worst_wait_ms for result in repeats),
        stream_p99_wait_ms=max(result.stream_p99_wait_ms for result in repeats),
        null_phone_lost=max(result.null_phone_lost for result in repeats),
        rows_deleted=lossiest.rows_deleted,
        rows_lost=lossiest.rows_lost,
        unique_on_pair=all(result.unique_on_pair for result in repeats),
        wal_bytes=worst.wal_bytes,
        probe_wait_events=worst.probe_wait_events,
        phases=worst.phases,
        slowest_inserts=worst.slowest_inserts,
        trace=worst.trace,
        runs=[result.seconds for result in repeats],
        max_replay_lag=max(
            (r.max_replay_lag for r in repeats if r.max_replay_lag is not None), default=None
        ),
    )


# Commands.


def psql(server: ThrowawayServer, database: str, *arguments: str) -> list[str]:
    # The server's own psql first: a PATH psql may be a wrapper of another major, or missing.
    bundled = server.bin_dir / "psql"
    psql_bin = str(bundled) if bundled.exists() else (shutil.which("psql") or "psql")
    connection = conninfo(server, database)
    return [psql_bin, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", connection, *arguments]


def contender_command(server: ThrowawayServer, contender: Contender, database: str) -> list[str]:
    if contender.is_reference:
        return psql(server, database, "-f", str(SEED_MIGRATION))
    if contender.key.startswith("ours"):
        return alembic(*contender.alembic_arguments)
    if contender.key == "by_hand":
        steps = (
            ("-c", f"\\warn 'INFO  [by hand] {phase} ...'", "-c", sql)
            for phase, sql in BY_HAND_STEPS
        )
        return psql(server, database, *(argument for step in steps for argument in step))
    return psql(server, database, "-c", LIMIT_SQL)


# Running one contender.


def start_duplicate_stream(
    server: ThrowawayServer, contender: Contender, database: str, workload: Workload
) -> DuplicateStream | None:
    if not contender.duplicate_stream or workload.duplicate_rate <= 0:
        return None
    return DuplicateStream(
        server, database, workload.shape, workload.duplicate_rate, seed=contender.key
    )


MOVED_BATCH = re.compile(r"moved batch \d+ of (\d+)")


def batches_moved(log_lines: list[str]) -> int:
    found = [int(match.group(1)) for line in log_lines if (match := MOVED_BATCH.search(line))]
    return max(found, default=1 if any("move duplicates" in line for line in log_lines) else 0)


@dataclass(frozen=True)
class Observed:
    """What one run of a contender saw."""

    seconds: float
    exit_code: int
    failure: str
    batches: int
    probe: InsertProbe
    stream: DuplicateStream | None
    spans: list[Span]
    timeline: Timeline

    @property
    def writers(self) -> list[PacedWriter]:
        return [self.probe, self.stream] if self.stream else [self.probe]

    @property
    def stream_attempts(self) -> list[Attempt]:
        return self.stream.attempts if self.stream else []


def run_contender(
    server: ThrowawayServer,
    contender: Contender,
    workload: Workload,
    before: Census,
    settle: Callable[[], None] = lambda: None,
    log_file: Path | None = None,
) -> Result:
    """`settle` runs once the contender's database is cloned and checkpointed, right before it
    starts: a standby then has the clone behind it too (replaying a FILE_COPY clone copies the
    whole template on the standby, seconds of replay that are not the contender's).
    `log_file`: where the command's stderr goes, as it printed it."""
    database = f"bench_run_{contender.key}"
    clone(server, contender.template, database)
    with session(server, database) as cursor:
        cursor.execute("CHECKPOINT")
    settle()
    probe = InsertProbe(server, database, contender.key, workload.shape)
    stream = start_duplicate_stream(server, contender, database, workload)
    writers = [probe, stream] if stream else [probe]
    sampler = ActivitySampler(server, {writer.name: writer.pid for writer in writers})
    command = CommandRun(
        contender_command(server, contender, database),
        PROJECT_ROOT,
        command_env(server, database),
        PhaseStart(contender.first_phase, contender.first_kind, 0.0),
    )
    origin = time.perf_counter()
    sampler.start(origin)
    for writer in writers:
        writer.start(origin)
    exit_code = command.run(origin)
    seconds = time.perf_counter() - origin
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        log_file.write_text("\n".join(command.stderr_lines) + "\n")
    time.sleep(WRITERS_TAIL)
    for writer in writers:
        writer.stop()
    # Every insert began before this: the tail span ends here, not after WRITERS_TAIL exactly.
    stopped = time.perf_counter() - origin
    sampler.stop()
    after = census(server, database)
    with session(server, "postgres") as cursor:
        cursor.execute(f"DROP DATABASE {database}")
    observed = Observed(
        seconds=seconds,
        exit_code=exit_code,
        failure=command.failure() if exit_code != 0 else "",
        batches=batches_moved(command.stderr_lines),
        probe=probe,
        stream=stream,
        spans=phase_spans(command.phases, seconds, stopped),
        timeline=Timeline(sampler.samples),
    )
    return summarise(contender, observed, account_rows(writers, before, after))


@dataclass(frozen=True)
class RowAccount:
    rows_deleted: int
    rows_lost: int
    null_phone_lost: int
    unique_on_pair: bool


def account_rows(writers: list[PacedWriter], before: Census, after: Census) -> RowAccount:
    """Every row that was in the table or the archive, or that a writer's insert was accepted
    for, must be in the table or the archive afterwards."""
    expected = (
        before.rows + before.archived_rows + sum(writer.count(ACCEPTED) for writer in writers)
    )
    return RowAccount(
        rows_deleted=expected - after.rows,
        rows_lost=expected - after.rows - after.archived_rows,
        null_phone_lost=before.null_phone_rows - after.null_phone_rows,
        unique_on_pair=after.unique_on_pair,
    )


def summarise(contender: Contender, observed: Observed, rows: RowAccount) -> Result:
    probe, stream, timeline = observed.probe, observed.stream, observed.timeline
    probe_ms, stream_ms = wait_ms(probe.attempts), wait_ms(observed.stream_attempts)
    failures = sum((Counter(writer.failures) for writer in observed.writers), Counter())
    phases = summarise_phases(observed.spans, probe.attempts, observed.stream_attempts, timeline)
    return Result(
        key=contender.key,
        label=contender.label,
        leaves_unique=contender.leaves_unique,
        max_replay_lag=timeline.max_replay_lag(0.0, observed.seconds),
        batches=observed.batches,
        seconds=observed.seconds,
        exit_code=observed.exit_code,
        failure=observed.failure,
        **asdict(rows),
        wal_bytes=timeline.wal_between(0.0, observed.seconds),
        worst_wait_ms=max(probe_ms, default=0.0),
        p99_wait_ms=percentile(probe_ms, 99),
        probe_inserts=len(probe.attempts),
        probe_errors=probe.count(FAILED),
        stream_inserts=len(observed.stream_attempts),
        stream_accepted=stream.count(ACCEPTED) if stream else 0,
        stream_rejected=stream.count(REJECTED) if stream else 0,
        stream_errors=stream.count(FAILED) if stream else 0,
        stream_worst_wait_ms=max(stream_ms, default=0.0),
        stream_p99_wait_ms=percentile(stream_ms, 99),
        write_failures=dict(failures),
        probe_wait_events=dict(timeline.events("probe", 0.0, observed.seconds).most_common()),
        phases=phases,
        kind_seconds=seconds_by_kind(phases),
        slowest_inserts=slowest_inserts(probe.attempts, observed.spans, timeline, "probe"),
        trace=Trace(probe.attempts, observed.stream_attempts, observed.spans, timeline),
    )
