"""Before `alembic upgrade`: what ensure_unique_constraint or ensure_unique_index would find and
do, without changing a thing.

    DATABASE_URL=... python -m alembic_lossless_unique.preflight \
        --table orders --columns customer_id,number --keep-newest-by updated_at [--json]
    DATABASE_URL=... python -m alembic_lossless_unique.preflight --table users \
        --index users_email_key --columns 'lower(email)' --where 'deleted_at IS NULL' ...

Everything runs in one READ ONLY transaction that is rolled back (it works on a read replica
too), from the same plan, listing and checks the upgrade itself runs. The index form's key is
read first by its probe (ddl/probe.py), in a transaction of its own that is rolled back: the
probe creates a temporary table, which PostgreSQL refuses in a READ ONLY transaction (and on a
replica, where the index form's report cannot run).

It reports the starting state, the size of the table, the rows the upgrade would archive (the
very listing the dedupe uses), the rows with a NULL key it keeps, each step with the lock it
holds, the foreign keys into the table with the child rows that would be re-pointed, the user
triggers and publications that see the move, and everything that would make the upgrade or the
downgrade refuse.
"""

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar, cast

import sqlalchemy as sa
from sqlalchemy import Connection
from sqlalchemy.engine import URL

from alembic_lossless_unique.ddl import (
    checks,
    dedupe,
    foreign_keys,
    indexes,
    ledger,
    partitions,
    probe,
)
from alembic_lossless_unique.ddl.comparisons import regclass
from alembic_lossless_unique.ddl.plan import Plan
from alembic_lossless_unique.ddl.sqltext import ident, list_items
from alembic_lossless_unique.operations import offline
from alembic_lossless_unique.operations.convergence import (
    REBUILT_STEPS,
    read_plan,
    restores_in_batches,
)
from alembic_lossless_unique.operations.ops import (
    target_from_arguments,
    target_from_index_arguments,
)
from alembic_lossless_unique.operations.target import (
    DEFAULT_PRIVATE_SCHEMA,
    UniqueTarget,
    default_constraint_name,
)
from alembic_lossless_unique.runtime import drivers, session, surroundings
from alembic_lossless_unique.runtime.database import AnyRow, Database
from alembic_lossless_unique.runtime.database_url import DatabaseUrlError, database_url, one_line
from alembic_lossless_unique.runtime.errors import MigrationAbort
from alembic_lossless_unique.runtime.settings import MigrationSettings

R = TypeVar("R")

NO_TABLE_LOCK = "none on the table"
ARCHIVE_LOCK = (
    "ROW EXCLUSIVE: deletes only the duplicate rows, a batch of keys per transaction; writes to"
    " those rows wait for their batch's commit"
)
# {unique}: what the operation ends with (UniqueTarget.the_unique).
GUARD_LOCK = (
    "SHARE ROW EXCLUSIVE for a moment (CREATE TRIGGER), under lock_timeout with retries; from"
    " then on a new duplicate key is rejected as {unique} will reject it"
)
CONCURRENT_LOCK = (
    "SHARE UPDATE EXCLUSIVE (CONCURRENTLY): reads and writes go on;"
    " waits for transactions older than itself"
)


# Rates for the estimates of how long the app waits, from the durable benchmark (BENCHMARKS.md:
# PostgreSQL 15, 2 CPUs, fsync on): a unique build reads about 90 MB of heap a second, the
# move archives about 160k rows a second. Hardware differs: the estimates are the order of
# magnitude, not a promise.
BUILD_BYTES_PER_SECOND = 90 * 1024 * 1024
# A concurrent build scans the heap twice (build, then validate), so it takes about twice as long.
CONCURRENT_BUILD_PASSES = 2
MOVE_ROWS_PER_SECOND = 160_000
# The offline script's blocking form stalls writes about this long per GB of table
# (pg_total_relation_size), measured by bench/offline_forms.py (BENCHMARKS.md, "The offline
# script's two forms").
BLOCKING_STALL_SECONDS_PER_GB = 9.6
# Above this, the blocking form's stall is one the app notices: say to prefer the other paths.
NOTICEABLE_STALL_SECONDS = 1.0


def build_seconds(table_bytes: int, *, concurrently: bool) -> float:
    """About how long a unique build on a table of `table_bytes` of heap takes."""
    passes = CONCURRENT_BUILD_PASSES if concurrently else 1
    return table_bytes / BUILD_BYTES_PER_SECOND * passes


def about_seconds(seconds: float) -> str:
    return "well under a second" if seconds < 0.5 else f"about {seconds:.0f} s"


@dataclass
class Step:
    action: str
    lock: str
    # What the app's queries and ON CONFLICT upserts see while the step runs, and how long.
    app_sees: str = ""
    # What the step is, in one stable word (STEP_KINDS): what hazards.py reads.
    kind: str = ""
    # About how long the app waits on the step, where that depends on the table's size.
    seconds: float | None = None


# The kinds of steps, upgrade then downgrade.
STEP_KINDS = (
    "create_private_tables",
    "drop_invalid",
    "install_guard",
    "archive",
    "build_concurrently",
    "promote",
    "remove_guard",
    "rename",
    "drop_redundant",
    "leave_alone",
    "rebuild_concurrently",
    "downgrade_transaction",
)


@dataclass
class ForeignKey:
    name: str
    child: str
    on_delete: str
    rows_to_repoint: int | None


@dataclass
class Report:
    table: str
    # What the operation makes: "unique constraint", or "unique index" (the index form).
    kind: str = "unique constraint"
    state: str = ""
    state_description: str = ""
    table_exists: bool = False
    estimated_rows: int = 0
    table_bytes: int = 0
    total_bytes: int = 0
    null_key_rows: int = 0
    # What becomes of them: never touched, unless the unique is NULLS NOT DISTINCT.
    null_key_rule: str = "kept: NULLs never conflict"
    duplicate_groups: int = 0
    rows_to_archive: int = 0
    rows_already_archived: int = 0
    resumes_interrupted_run: bool = False
    uniques: list[str] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    downgrade_steps: list[Step] = field(default_factory=list)
    replication: list[str] = field(default_factory=list)
    foreign_keys: list[ForeignKey] = field(default_factory=list)
    triggers_skipped: bool = False
    surroundings: list[str] = field(default_factory=list)
    # The offline script's blocking form (the SQL editor's): how long it would hold the table's
    # writes while it builds; None when it builds nothing. See offline_lines.
    offline_blocking_seconds: float | None = None
    offline: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    # A partitioned table's: each partition as one line (reports/partitioned.py), and when ON
    # CONFLICT on the key starts to work.
    partitions: list[str] = field(default_factory=list)
    on_conflict: str = ""

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def replication_lines(db: Database, schemas: list[str], ddl_command: str) -> list[str]:
    """The run's replication refusal, where a run creating tables in `schemas` would refuse."""
    refusal = surroundings.unready_subscribers(db, schemas, ddl_command)
    return [f"the upgrade refuses unless declared ready: {refusal}"] if refusal else []


def catalog_lock(settings: MigrationSettings) -> str:
    return (
        "ACCESS EXCLUSIVE for a catalog change only (milliseconds), under lock_timeout"
        f" {settings.lock_timeout:g} s with up to {settings.lock_retries} attempts"
    )


@dataclass(frozen=True)
class Probed:
    """A target as the report reads it: the index form's with its key read by its probe, or
    with the refusal the probe met (a syntax error, an expression not IMMUTABLE, ...)."""

    target: UniqueTarget
    refusal: str | None = None


def probed(db: Database, target: UniqueTarget) -> Probed:
    """`target` with the index form's key (probe.py). The probe creates a temporary table, so
    this runs before the report's transaction turns READ ONLY (see probing). A table that does
    not exist yet (a pending revision creates it) has no key to read."""
    if not target.is_index or not db.relation_exists(target.qualified_table):
        return Probed(target)
    try:
        return Probed(probe.resolve(db, target))
    except MigrationAbort as refused:
        return Probed(target, str(refused))


def gather(
    db: Database, target: UniqueTarget, ddl_command: str | None = None, refusal: str | None = None
) -> Report:
    """The report for one target; `db` is inside a read-only transaction. The index form's
    target comes with its key read (`probed`), or with the `refusal` its probe met. `ddl_command`
    is the command that prints what logical subscribers need (default: the library's)."""
    report = Report(table=target.display_table, kind=target.kind)
    if not db.relation_exists(target.qualified_table) or refusal is not None:
        # No key to check the rest against: what stops the upgrade is here already.
        report.problems += problems_of(db, checks.table_checks_sql(target, refuse=False))
        if refusal is not None:
            report.table_exists = True
            report.problems.append(refusal)
            report.state, report.state_description = "blocked", refusal
        return report
    report.problems += problems_of(db, checks.upgrade_checks_sql(target, refuse=False))
    if partitions.is_partitioned(db, target):
        # Imported here: that report is written with this module's parts.
        from alembic_lossless_unique.reports import partitioned

        return partitioned.gather(db, target, report, ddl_command)
    report.table_exists = True
    report.triggers_skipped = surroundings.may_skip_user_triggers(db)
    facts = db.execute(
        "SELECT pg_catalog.pg_relation_size(c.oid) AS table_bytes,"
        " pg_catalog.pg_total_relation_size(c.oid) AS total_bytes,"
        " greatest(c.reltuples, 0)::bigint AS estimated_rows"
        " FROM pg_catalog.pg_class c WHERE c.oid = pg_catalog.to_regclass(:table)",
        {"table": target.qualified_table},
    ).one()
    report.table_bytes, report.total_bytes = facts.table_bytes, facts.total_bytes
    report.estimated_rows = facts.estimated_rows
    if target.nulls_not_distinct:
        report.null_key_rule = "judged like any key: NULLS NOT DISTINCT"
    report.null_key_rows = db.scalar(
        f"SELECT pg_catalog.count(*) FROM {target.qualified_table} t"
        f" WHERE {target.key.admits('t')} AND {target.key_has_null('t')}"
    )
    archived = db.relation_exists(target.archive)
    if archived:
        report.rows_already_archived = db.scalar(
            f"SELECT pg_catalog.count(*) FROM {target.archive}"
        )
    steps_done = ledger.steps(db, target)
    plan = read_plan(db, target, steps_done)
    if archived or not plan.converged:
        report.problems += downgrade_problems(db, target, archived, report.problems)
    report.resumes_interrupted_run = bool(steps_done) and not plan.converged
    report.uniques = [
        step.description for step in plan.steps if step.index_name and step.action != "build"
    ]
    report.state, report.state_description = plan.state()
    if not plan.converged and not ledger.exists(db, target):  # the upgrade creates its tables
        report.replication = replication_lines(
            db, [target.private_schema], ddl_command or surroundings.subscriber_ddl_command(target)
        )
    if plan.refusal:
        report.problems.append(plan.refusal)
    neighbours = surroundings.read(db, target)
    report.surroundings = surroundings.announcements(neighbours, report.triggers_skipped)
    if plan.main is not None and plan.main.action == "build":
        losers = losers_sql(db, target)
        counts = db.execute(
            f"SELECT pg_catalog.count(*) AS rows, pg_catalog.count(DISTINCT"
            f" ({', '.join(ident(dedupe.work_kept(c)) for c in target.row_identity)}))"
            f" AS groups FROM ({losers}) AS losers"
        ).one()
        report.rows_to_archive, report.duplicate_groups = counts.rows, counts.groups
        report.foreign_keys = foreign_keys_into(db, target, losers)
    report.steps = planned_steps(db, target, plan, report)
    report.downgrade_steps = planned_downgrade(db, target, steps_done, report)
    report.offline_blocking_seconds, report.offline = offline_lines(plan, report)
    return report


def downgrade_problems(
    db: Database, target: UniqueTarget, archived: bool, upgrade_problems: list[str]
) -> list[str]:
    """What would make the downgrade refuse: now, with the archive there; or once the upgrade
    has made it (its privileges). Problems the upgrade shares are said once."""
    found = problems_of(
        db, checks.downgrade_checks_sql(target, refuse=False, archive_expected=not archived)
    )
    when = (
        "the downgrade would refuse"
        if archived
        else "after this upgrade, the downgrade would refuse"
    )
    return [f"{when}: {problem}" for problem in found if problem not in upgrade_problems]


def offline_lines(plan: Plan, report: Report) -> tuple[float | None, list[str]]:
    """What the offline script would do to the table's writes, in each form."""
    main = plan.main
    if main is None or main.action != "build":
        return None, [
            "either form builds nothing here: catalog locks only, for milliseconds, each at most"
            f" lock_timeout ({offline.LOCK_TIMEOUT})"
        ]
    gigabytes = report.total_bytes / 1e9
    seconds = round(gigabytes * BLOCKING_STALL_SECONDS_PER_GB, 1)
    how_long = f"about {seconds:g} s" if seconds >= 0.1 else "under 0.1 s"
    lines = [
        f"blocking form (SQL editor): writes wait {how_long} while it archives the"
        f" duplicates and builds the index ({report.total_bytes} bytes at"
        f" ~{BLOCKING_STALL_SECONDS_PER_GB:g} s per GB)",
        "concurrent form (psql -f, supabase db push) and `alembic upgrade head`: writes wait"
        f" at most lock_timeout per strong-lock step (offline {offline.LOCK_TIMEOUT}, no"
        " retries; online with retries)",
    ]
    if seconds >= NOTICEABLE_STALL_SECONDS:
        lines.append(
            "prefer `alembic upgrade head` (or the concurrent form through psql or db push):"
            f" a {seconds:g} s write stall is one the app notices"
        )
    return seconds, lines


def problems_of(db: Database, checks_sql: str) -> list[str]:
    """Run a checks block in report mode and read the problems it left in its setting."""
    db.execute(checks_sql)
    found = db.scalar(
        "SELECT pg_catalog.current_setting(:name, true)", {"name": checks.PROBLEMS_SETTING}
    )
    return json.loads(found) if found else []


def losers_sql(db: Database, target: UniqueTarget) -> str:
    """The dedupe's own listing, with the operators filled in: what it would archive."""
    select, compare = dedupe.losers_select(target)
    return cast(
        str,
        db.scalar(
            f"SELECT pg_catalog.format(:template, VARIADIC"
            f" {compare.operators_sql(regclass(target.qualified_table))})",
            {"template": select},
        ),
    )


def foreign_keys_into(db: Database, target: UniqueTarget, losers: str) -> list[ForeignKey]:
    """Each foreign key into the table, with how many child rows point at a row to archive."""
    found = []
    table = regclass(target.qualified_table)
    for fk in db.rows(foreign_keys.inbound_sql(table)):
        rows = None  # not countable: the role may not read the child (a problem says so)
        if db.scalar(_MAY_READ, {"child": fk.child_oid}):
            rows = count_children(db, target, fk, losers)
        found.append(
            ForeignKey(
                name=fk.constraint_name,
                child=fk.child_table,
                on_delete=surroundings.ON_DELETE.get(fk.on_delete, fk.on_delete),
                rows_to_repoint=rows,
            )
        )
    return found


_MAY_READ = (
    "SELECT pg_catalog.has_schema_privilege(c.relnamespace, 'USAGE')"
    " AND pg_catalog.has_table_privilege(c.oid, 'SELECT')"
    " FROM pg_catalog.pg_class c WHERE c.oid = :child"
)


def count_children(db: Database, target: UniqueTarget, fk: AnyRow, losers: str) -> int:
    """Child rows of foreign key `fk` that point at a row the dedupe would archive."""
    match = " AND ".join(
        f"ch.{ident(c)} {op} p.{ident(pc)}"
        for c, op, pc in zip(fk.child_columns, fk.operators, fk.parent_columns, strict=True)
    )
    return cast(
        int,
        db.scalar(
            f"SELECT pg_catalog.count(*) FROM {fk.child_table} ch"
            f" JOIN {target.qualified_table} p ON {match}"
            f" JOIN ({losers}) AS l ON l.{dedupe.ROW_CTID} = p.ctid"
        ),
    )


def planned_steps(db: Database, target: UniqueTarget, plan: Plan, report: Report) -> list[Step]:
    settings = db.settings
    name = target.constraint_name
    unique = target.the_unique
    waits = lock_waits(settings)
    no_upsert_fails = f"{waits}; no upsert fails"
    steps = []
    missing = [t for t in (target.ledger, target.archive) if not db.relation_exists(t)]
    if missing and not plan.converged:
        steps.append(
            Step(
                f"create {' and '.join(missing)}", NO_TABLE_LOCK, "nothing", "create_private_tables"
            )
        )
    for step in plan.of("drop_invalid"):
        steps.append(
            Step(
                f"drop INVALID index {step.index_name}",
                catalog_lock(settings),
                no_upsert_fails,
                "drop_invalid",
            )
        )
    main = plan.main
    if main is not None and main.action == "build":
        repointed = sum(fk.rows_to_repoint or 0 for fk in report.foreign_keys)
        no_unique = "ON CONFLICT upserts of the key keep failing (42P10: no unique serves them yet)"
        move = report.rows_to_archive + report.duplicate_groups
        move_seconds = move / MOVE_ROWS_PER_SECOND
        batches = max(1, -(-report.duplicate_groups // settings.move_batch_keys))
        build_for = build_seconds(report.table_bytes, concurrently=True)
        steps += [
            Step(
                "install the duplicate guard (two triggers and a function)",
                GUARD_LOCK.format(unique=unique),
                f"{waits}; from then on an insert or key update that would duplicate a key fails"
                f" with 23505 (unique_violation), as it will once {unique} exists",
                "install_guard",
            ),
            Step(
                f"archive {report.rows_to_archive} duplicate rows from"
                f" {report.duplicate_groups} groups into {target.archive} (the newest row of"
                " each key stays)"
                + (f", re-pointing {repointed} child rows to the kept rows" if repointed else ""),
                ARCHIVE_LOCK,
                f"writes to the {move} rows of those keys wait for their batch"
                f" ({batches} of up to {settings.move_batch_keys} keys,"
                f" {about_seconds(move_seconds / batches)} each); other rows are unaffected;"
                f" {no_unique}",
                "archive",
                move_seconds / batches,
            ),
            Step(
                f"build unique index {name} concurrently",
                CONCURRENT_LOCK,
                f"nothing waits ({about_seconds(build_for)} of build);"
                f" {no_unique} until the index is valid, then they work",
                "build_concurrently",
                build_for,
            ),
            Step(
                "remove the guard: the index is the end state"
                if target.is_index
                else "promote it to the constraint and remove the guard",
                catalog_lock(settings),
                no_upsert_fails,
                "remove_guard" if target.is_index else "promote",
            ),
        ]
    elif main is not None and main.action == "rename":
        renamed = (
            f"index {main.index_name}" if target.is_index else f"constraint {main.constraint_name}"
        )
        steps.append(
            Step(f"rename {renamed} to {name}", catalog_lock(settings), no_upsert_fails, "rename")
        )
    elif main is not None and main.action == "promote":
        steps.append(
            Step(
                f"promote index {main.index_name} to constraint {name} (no build)",
                catalog_lock(settings),
                no_upsert_fails,
                "promote",
            )
        )
    for step in plan.of("drop_redundant"):
        what = (
            f"constraint {step.constraint_name}"
            if step.constraint_name
            else f"index {step.index_name}"
        )
        steps.append(
            Step(
                f"drop redundant {what}", catalog_lock(settings), no_upsert_fails, "drop_redundant"
            )
        )
    for step in plan.of("leave_alone"):
        steps.append(
            Step(
                f"leave {step.description} alone: partial or expression unique",
                "none",
                "",
                "leave_alone",
            )
        )
    return steps


def lock_waits(settings: MigrationSettings) -> str:
    return (
        f"queries on the table wait up to {settings.lock_timeout:g} s per attempt while the"
        " lock is queued for"
    )


def planned_downgrade(
    db: Database, target: UniqueTarget, steps_done: list[ledger.Step], report: Report
) -> list[Step]:
    """What `alembic downgrade` of this target would do, when an upgrade has run: the uniques
    it rebuilds (downgrade_rebuild decides how, for this table) and its one transaction."""
    if not steps_done:
        return []
    settings = db.settings
    rebuilt = [s.detail for s in steps_done if s.action in REBUILT_STEPS]
    concurrent_build = build_seconds(report.table_bytes, concurrently=True)
    one_build = build_seconds(report.table_bytes, concurrently=False)
    inside = bool(rebuilt) and indexes.rebuild_in_transaction(db, target)
    steps = []
    if rebuilt and not inside:
        steps.append(
            Step(
                "rebuild " + ", ".join(d["index_name"] for d in rebuilt) + " concurrently",
                CONCURRENT_LOCK,
                f"nothing waits; while it builds ({about_seconds(concurrent_build)} a unique),"
                " PostgreSQL 18 and older fail some ON CONFLICT upserts that race on a key with"
                " 23505 (unique_violation) or 40P01 (deadlock):"
                " -x downgrade_rebuild=in_transaction trades that for waiting",
                "rebuild_concurrently",
                len(rebuilt) * concurrent_build,
            )
        )
    restored = report.rows_already_archived
    in_batches = restores_in_batches(steps_done, restored, settings)
    if in_batches:
        batches = -(-restored // settings.restore_batch_rows)
        per_batch = settings.restore_batch_rows / MOVE_ROWS_PER_SECOND
        steps += [
            Step(
                f"drop {'index' if target.is_index else 'constraint'} {target.constraint_name}",
                catalog_lock(settings),
                f"{lock_waits(settings)}; afterwards no unique serves ON CONFLICT upserts (42P10),"
                " as before"
                " the upgrade",
                "drop_constraint",
            ),
            Step(
                f"restore {restored} archived rows in {batches} batches of up to"
                f" {settings.restore_batch_rows} rows, each its own transaction, paced on the"
                " standbys",
                "ROW EXCLUSIVE: inserts the archived rows, locks their parents FOR KEY SHARE",
                f"nothing waits on the table (about {about_seconds(per_batch)} a batch)",
                "restore_batches",
                per_batch,
            ),
        ]
        restored = 0
    lock_for = [f"{restored} archived rows move back"] if restored else []
    held = restored / MOVE_ROWS_PER_SECOND
    if inside:
        lock_for.append(
            "the build of "
            + ", ".join(d["index_name"] for d in rebuilt)
            + f" ({about_seconds(one_build)} each)"
        )
        held += len(rebuilt) * one_build
    serves_after = any(s.detail.get("uniques") for s in steps_done if s.action == "found")
    after = (
        "no upsert fails"
        if serves_after
        else "afterwards no unique serves ON CONFLICT upserts (42P10), as before the upgrade"
    )
    steps.append(
        Step(
            f"in one transaction with the revision: drop {target.the_unique} (or rename it back),"
            + (" build the uniques the upgrade dropped," if inside else "")
            + f" restore {restored} archived rows, drop the archive and ledger",
            f"ACCESS EXCLUSIVE, under lock_timeout {settings.lock_timeout:g} s with up to"
            f" {settings.lock_retries} attempts",
            f"the table's reads and writes wait while {' and '.join(lock_for) or 'it commits'}"
            f" ({about_seconds(held)}); {after}",
            "downgrade_transaction",
            held,
        )
    )
    return steps


def text_lines(report: Report, *, upgrade: bool = True) -> list[str]:
    """The report for a person: one fact per line, nothing said twice. Without `upgrade`, what
    only the downgrade meets (the plan of an undo_unique_constraint)."""
    if not report.table_exists:
        return [f"  table                {report.table}: does not exist"]
    lines = [
        f"  starting state       {report.state}: {report.state_description}",
        f"  size                 ~{report.estimated_rows} rows (planner estimate), table"
        f" {report.table_bytes} bytes, {report.total_bytes} bytes with indexes and TOAST",
        f"  uniques on the key   {'; '.join(report.uniques) or 'none'}",
    ]
    if upgrade:
        lines += [
            f"  duplicate groups     {report.duplicate_groups}",
            f"  rows to archive      {report.rows_to_archive} (restored by the downgrade)",
            f"  NULL-key rows        {report.null_key_rows} ({report.null_key_rule})",
        ]
    if report.rows_already_archived:
        lines.append(f"  already archived     {report.rows_already_archived}")
    if report.resumes_interrupted_run:
        lines.append("  resumes              an interrupted run (its ledger is there)")
    for fk in report.foreign_keys:
        lines.append(
            f"  foreign key          {fk.name} of {fk.child} (ON DELETE {fk.on_delete}):"
            f" {'?' if fk.rows_to_repoint is None else fk.rows_to_repoint} child rows to re-point"
        )
    lines += [f"  partition            {line}" for line in report.partitions]
    if report.on_conflict:
        lines.append(f"  ON CONFLICT          {report.on_conflict}")
    lines += [f"  around the table     {line}" for line in report.surroundings]
    lines += [f"  replication          {line}" for line in report.replication]
    if upgrade:
        lines += [f"  offline script       {line}" for line in report.offline]
    if upgrade and report.steps:
        lines.append("  steps the upgrade would take:")
        lines += step_lines(report.steps)
    elif upgrade or not report.downgrade_steps:
        lines.append("  steps                none: nothing to do")
    if report.downgrade_steps:
        lines.append("  steps the downgrade would take:")
        lines += step_lines(report.downgrade_steps)
    return lines


def step_lines(steps: list[Step]) -> list[str]:
    lines = []
    for number, step in enumerate(steps, 1):
        lines.append(f"    {number}. {step.action}")
        lines.append(f"       lock: {step.lock}")
        if step.app_sees:
            lines.append(f"       the app: {step.app_sees}")
    return lines


# The command: read-only, one FAILED line for anything that goes wrong.


def read_only(url: URL, application_name: str, gather_report: Callable[[Database], R]) -> R:
    """`gather_report` in one READ ONLY transaction that is rolled back, through the migrator's
    own safe session (pooler refusal, fixed search_path)."""
    return on_safe_session(
        url,
        application_name,
        lambda connection, settings: in_read_only_transaction(connection, settings, gather_report),
    )


def on_safe_session(
    url: URL, application_name: str, work: Callable[[Connection, MigrationSettings], R]
) -> R:
    """`work(connection, settings)` on the migrator's own safe session (pooler refusal, fixed
    search_path), with the default settings."""
    session.refuse_transaction_pooler(url)
    settings = MigrationSettings.from_sources({})
    return session.connected(
        url,
        application_name,
        lambda connection: work(connection, settings),
        app_schema=session.DEFAULT_APP_SCHEMA,
    )


def probing(
    connection: Connection, settings: MigrationSettings, work: Callable[[Database], R]
) -> R:
    """`work(db)` in a transaction of its own that is rolled back, before the report's READ
    ONLY one: what must write to read (the index form's probes create a temporary table, which
    PostgreSQL refuses in a READ ONLY transaction), and nothing else."""
    try:
        return work(Database(connection, settings, concurrent=False))
    finally:
        connection.rollback()


def in_read_only_transaction(
    connection: Connection, settings: MigrationSettings, work: Callable[[Database], R]
) -> R:
    """`work(db)` in one READ ONLY transaction on `connection`, rolled back afterwards."""
    # The first statement of the transaction: nothing below can write.
    connection.exec_driver_sql("SET TRANSACTION READ ONLY")
    try:
        return work(Database(connection, settings, concurrent=False))
    finally:
        connection.rollback()


def command(
    argv: Sequence[str] | None,
    parser: argparse.ArgumentParser,
    make_report: Callable[[argparse.Namespace, Any], Any],
    lines: Callable[[Any], list[str]],
) -> int:
    """Parse, report (`make_report(arguments, url)`), print text or --json; exit status 1 with
    one FAILED line for a bad URL, a refusal or a database error."""
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    arguments = parser.parse_args(argv)
    url = None
    try:
        url = database_url()
        report = make_report(arguments, url)
    except (DatabaseUrlError, MigrationAbort) as error:
        print(f"FAILED: {error}", file=sys.stderr)
        return 1
    except drivers.database_errors() as error:
        print(f"FAILED: database error: {one_line(error, url)}", file=sys.stderr)
        return 1
    if arguments.json:
        print(json.dumps(report.as_json(), indent=2))
    else:
        print("\n".join(lines(report)))
    return 0


def _names(raw: str) -> list[str]:
    return [name.strip() for name in raw.split(",") if name.strip()]


def add_target_arguments(parser: argparse.ArgumentParser) -> None:
    """The operation's arguments, as the commands that take a target spell them: the
    constraint form's, or with --index the index form's."""
    parser.add_argument("--table", required=True)
    parser.add_argument(
        "--columns",
        required=True,
        help="the key, comma-separated, in order; with --index, the index's elements as CREATE"
        " INDEX takes them: columns and expressions, each maybe with an operator class",
    )
    name = parser.add_mutually_exclusive_group()
    name.add_argument("--constraint", help="its name (default: PostgreSQL's, TABLE_COLS_key)")
    name.add_argument(
        "--index", help="the index form (ensure_unique_index): the unique index's name"
    )
    parser.add_argument("--where", help="with --index: the partial index's predicate")
    parser.add_argument("--schema", default="public")
    parser.add_argument("--keep-newest-by", default="", help="comma-separated")
    parser.add_argument("--row-identity", default="id", help="comma-separated")
    parser.add_argument("--private-schema", default=DEFAULT_PRIVATE_SCHEMA)
    parser.add_argument("--archive-table", default="", help="default: CONSTRAINT_archive")
    parser.add_argument("--ledger-table", default="", help="default: CONSTRAINT_steps")
    parser.add_argument(
        "--nulls-not-distinct",
        action="store_true",
        help="NULLs in the key conflict (postgresql_nulls_not_distinct)",
    )
    parser.add_argument("--include", default="", help="INCLUDE columns, comma-separated")
    parser.add_argument("--deferrable", action="store_true", help="DEFERRABLE")
    parser.add_argument("--initially", choices=("IMMEDIATE", "DEFERRED"), type=str.upper)


def target_of(arguments: argparse.Namespace) -> UniqueTarget:
    if arguments.index:
        return index_target_of(arguments)
    if arguments.where is not None:
        raise MigrationAbort("--where is the index form's: give the index's name with --index")
    columns = _names(arguments.columns)
    return target_from_arguments(
        arguments.constraint or default_constraint_name(arguments.table, columns),
        arguments.table,
        columns,
        **_shared_options(arguments),
        deferrable=arguments.deferrable or None,
        initially=arguments.initially,
    )


def _shared_options(arguments: argparse.Namespace) -> dict[str, Any]:
    """The options both forms take, from the command line."""
    return {
        "schema": arguments.schema,
        "keep_newest_by": _names(arguments.keep_newest_by),
        "row_identity": _names(arguments.row_identity),
        "private_schema": arguments.private_schema,
        "archive_table": arguments.archive_table,
        "ledger_table": arguments.ledger_table,
        "postgresql_include": _names(arguments.include),
        "postgresql_nulls_not_distinct": arguments.nulls_not_distinct,
    }


def index_target_of(arguments: argparse.Namespace) -> UniqueTarget:
    """The index form's target: each element of --columns is SQL, as CREATE INDEX reads it."""
    if arguments.deferrable or arguments.initially:
        raise MigrationAbort(
            "--deferrable and --initially are the constraint form's: a unique index has no"
            " deferral (give --constraint instead of --index)"
        )
    return target_from_index_arguments(
        arguments.index,
        arguments.table,
        [sa.text(element) for element in list_items(arguments.columns)],
        **_shared_options(arguments),
        postgresql_where=arguments.where,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m alembic_lossless_unique.preflight",
        description="Read-only report: what ensure_unique_constraint, or with --index"
        " ensure_unique_index, would find and do.",
    )
    add_target_arguments(parser)

    def make_report(arguments: argparse.Namespace, url: URL) -> Report:
        target = target_of(arguments)

        def report(connection: Connection, settings: MigrationSettings) -> Report:
            found = probing(connection, settings, lambda db: probed(db, target))
            return in_read_only_transaction(
                connection, settings, lambda db: gather(db, found.target, refusal=found.refusal)
            )

        return on_safe_session(url, "alembic_lossless_unique preflight", report)

    def report_lines(report: Report) -> list[str]:
        return [
            f"preflight for {report.table}; read only, nothing was changed",
            *text_lines(report),
            *(f"  PROBLEM: {problem}" for problem in report.problems),
        ]

    return command(argv, parser, make_report, report_lines)
