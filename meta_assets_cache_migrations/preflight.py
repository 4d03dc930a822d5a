"""Before `alembic upgrade head`: what it would find and do, without changing a thing.

    DATABASE_URL=postgresql://... python -m meta_assets_cache_migrations.preflight [--json]

Reports the starting state of public.meta_assets_cache, its size, the duplicate rows the upgrade
would archive, the rows with a NULL phone_number_id it keeps, and each step it would take with
the lock that step holds. Everything runs in one READ ONLY transaction that is rolled back.
"""

import argparse
import json
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy.exc import DBAPIError

from alembic_lossless_unique import archive, catalog, convergence, ledger
from alembic_lossless_unique.database import Database
from alembic_lossless_unique.database_url import (
    DatabaseUrlError,
    database_url,
    engine_for,
    one_line,
)
from alembic_lossless_unique.errors import MigrationAbort
from alembic_lossless_unique.settings import MigrationSettings
from meta_assets_cache_migrations.names import (
    ARCHIVE,
    CANONICAL_UNIQUE_NAME,
    TABLE,
    UNIQUE_PAIR_LEDGER,
)

CANONICAL = CANONICAL_UNIQUE_NAME

NO_TABLE_LOCK = "none on the table"
ARCHIVE_LOCK = "ROW EXCLUSIVE: deletes only the duplicate rows, in one short transaction"
CONCURRENT_LOCK = (
    "SHARE UPDATE EXCLUSIVE (CONCURRENTLY): reads and writes go on;"
    " waits for transactions older than itself"
)
DUPLICATE_COUNTS = f"""
SELECT count(*) AS groups, coalesce(sum(copies - 1), 0)::bigint AS rows
  FROM (SELECT count(*) AS copies FROM {TABLE}
         WHERE phone_number_id IS NOT NULL
         GROUP BY workspace_id, phone_number_id
        HAVING count(*) > 1) AS duplicates
"""


@dataclass
class Step:
    action: str
    lock: str


@dataclass
class Report:
    database: str
    role: str
    server_version: str
    alembic_revision: str | None
    state: str
    state_description: str
    table_exists: bool
    estimated_rows: int = 0
    table_bytes: int = 0
    total_bytes: int = 0
    null_phone_rows: int = 0
    duplicate_groups: int = 0
    rows_to_archive: int = 0
    rows_already_archived: int = 0
    resumes_interrupted_run: bool = False
    uniques: list[str] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def state_name(description: str) -> str:
    """describe_state()'s text -> one word: empty, created, constrained, drifted, seedindex,
    both, renamed."""
    return description.split(" ", 1)[0]


def catalog_lock(settings: MigrationSettings) -> str:
    return (
        "ACCESS EXCLUSIVE for a catalog change only (milliseconds), under lock_timeout"
        f" {settings.lock_timeout:g} s with up to {settings.lock_retries} attempts"
    )


def gather(db: Database) -> Report:
    settings = db.settings
    facts = db.execute(
        "SELECT current_database() AS database, current_user AS role,"
        " current_setting('server_version') AS server_version"
    ).one()
    revision = (
        db.scalar("SELECT string_agg(version_num, ',') FROM public.alembic_version")
        if catalog.relation_exists(db, "public.alembic_version")
        else None
    )
    common = {
        "database": facts.database,
        "role": facts.role,
        "server_version": facts.server_version,
        "alembic_revision": revision,
    }
    if not catalog.relation_exists(db, TABLE):
        return Report(
            **common,
            state="empty",
            state_description=f"empty (no {TABLE}: the baseline revision creates it)",
            table_exists=False,
            steps=[
                Step(
                    f"create public.workspaces (when missing) and {TABLE} with the constraint"
                    f" {CANONICAL}",
                    "none: new tables",
                )
            ],
        )

    report = Report(**common, state="", state_description="", table_exists=True)
    try:
        catalog.require_table_owned_by_current_role(db)
    except MigrationAbort as problem:
        report.problems.append(str(problem))
    report.estimated_rows = catalog.estimated_row_count(db)
    sizes = db.execute(
        "SELECT pg_relation_size(to_regclass(:t)) AS table_bytes,"
        " pg_total_relation_size(to_regclass(:t)) AS total_bytes",
        {"t": TABLE},
    ).one()
    report.table_bytes, report.total_bytes = sizes.table_bytes, sizes.total_bytes
    report.null_phone_rows = db.scalar(
        f"SELECT count(*) FROM {TABLE} WHERE phone_number_id IS NULL"
    )
    report.rows_already_archived = archive.archived_row_count(db)
    report.resumes_interrupted_run = bool(ledger.recorded_steps(db))

    found = catalog.pair_uniques(db)
    report.uniques = [unique.describe() for unique in found]
    created = "meta_assets_cache" in ledger.created_tables(db)
    try:
        plan = convergence.plan_convergence(found)
    except MigrationAbort as problem:
        report.state, report.state_description = "blocked", str(problem)
        report.problems.append(str(problem))
        return report
    report.state_description = convergence.describe_state(found, created)
    report.state = state_name(report.state_description)
    report.steps = planned_steps(db, plan, report, settings)
    return report


def planned_steps(
    db: Database, plan: convergence.Plan, report: Report, settings: MigrationSettings
) -> list[Step]:
    steps = []
    missing = [
        name for name in (UNIQUE_PAIR_LEDGER, ARCHIVE) if not catalog.relation_exists(db, name)
    ]
    if missing:
        steps.append(Step(f"create {' and '.join(missing)}", NO_TABLE_LOCK))
    for unique in plan.invalid:
        if not unique.constraint_name:
            steps.append(Step(f"drop INVALID index {unique.index_name}", CONCURRENT_LOCK))
    target = plan.target
    if target is None:
        duplicates = db.execute(DUPLICATE_COUNTS).one()
        report.duplicate_groups, report.rows_to_archive = duplicates.groups, duplicates.rows
        steps += [
            Step(
                f"archive {duplicates.rows} duplicate rows from {duplicates.groups} groups"
                f" into {ARCHIVE} (the newest row of each pair stays)",
                ARCHIVE_LOCK,
            ),
            Step(f"build unique index {CANONICAL} concurrently", CONCURRENT_LOCK),
            Step(f"promote index {CANONICAL} to constraint {CANONICAL}", catalog_lock(settings)),
        ]
    elif target.constraint_name and not target.is_canonical_constraint:
        steps.append(
            Step(
                f"rename constraint {target.constraint_name} to {CANONICAL}",
                catalog_lock(settings),
            )
        )
    elif not target.constraint_name:
        steps.append(
            Step(
                f"promote index {target.index_name} to constraint {CANONICAL} (no build)",
                catalog_lock(settings),
            )
        )
    for unique in plan.redundant:
        if unique.constraint_name:
            steps.append(
                Step(f"drop redundant constraint {unique.constraint_name}", catalog_lock(settings))
            )
        else:
            steps.append(Step(f"drop redundant index {unique.index_name}", CONCURRENT_LOCK))
    for unique in plan.untouched:
        steps.append(Step(f"leave {unique.describe()} alone: partial or expression unique", "none"))
    return steps


def run(url) -> Report:
    engine = engine_for(url, "meta_assets_cache preflight")
    try:
        with engine.connect() as connection:
            # The first statement of the transaction: nothing below can write.
            connection.exec_driver_sql("SET TRANSACTION READ ONLY")
            try:
                return gather(Database(connection, MigrationSettings.from_sources({})))
            finally:
                connection.rollback()
    finally:
        engine.dispose()


def text_lines(report: Report) -> list[str]:
    if not report.table_exists:
        size = "no table yet"
    else:
        size = (
            f"~{report.estimated_rows} rows (planner estimate), table {report.table_bytes} bytes,"
            f" {report.total_bytes} bytes with indexes and TOAST"
        )
    lines = [
        f"preflight for {report.database} (as {report.role}, PostgreSQL"
        f" {report.server_version}); read only, nothing was changed",
        f"  alembic revision     {report.alembic_revision or 'none (not migrated yet)'}",
        f"  starting state       {report.state}: {report.state_description}",
        f"  size                 {size}",
    ]
    if report.table_exists:
        lines += [
            f"  uniques on the pair  {'; '.join(report.uniques) or 'none'}",
            f"  duplicate groups     {report.duplicate_groups}",
            f"  rows to archive      {report.rows_to_archive} (moved to {ARCHIVE},"
            " restored by the downgrade)",
            f"  NULL-phone rows      {report.null_phone_rows} (kept: NULLs never conflict)",
        ]
        if report.rows_already_archived:
            lines.append(f"  already archived     {report.rows_already_archived}")
        if report.resumes_interrupted_run:
            lines.append("  resumes              an interrupted run (its ledger is there)")
    if report.steps:
        lines.append("  steps `alembic upgrade head` would take:")
        for number, step in enumerate(report.steps, 1):
            lines.append(f"    {number}. {step.action}")
            lines.append(f"       lock: {step.lock}")
    else:
        lines.append("  steps                none: nothing to do")
    lines += [f"  PROBLEM: {problem}" for problem in report.problems]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="meta-assets-preflight",
        description="Read-only report: what `alembic upgrade head` would find and do.",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    url = None
    try:
        url = database_url()
        report = run(url)
    except (DatabaseUrlError, MigrationAbort) as error:
        print(f"FAILED: {error}", file=sys.stderr)
        return 1
    except DBAPIError as error:
        print(f"FAILED: database error: {one_line(error, url)}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report.as_json(), indent=2))
    else:
        print("\n".join(text_lines(report)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
