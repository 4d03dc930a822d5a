"""What preflight says of a partitioned table: each partition with its size, its duplicates, its
own plan and its build's estimate; when ON CONFLICT on the key starts to work; and the upgrade's
steps, partition by partition (operations/partitioned.py)."""

from dataclasses import dataclass

from alembic_lossless_unique.ddl import dedupe, ledger, partitions
from alembic_lossless_unique.ddl.sqltext import ident
from alembic_lossless_unique.operations import partitioned
from alembic_lossless_unique.operations.target import UniqueTarget
from alembic_lossless_unique.reports import preflight
from alembic_lossless_unique.reports.preflight import Report, Step
from alembic_lossless_unique.runtime import surroundings
from alembic_lossless_unique.runtime.database import Database
from alembic_lossless_unique.runtime.errors import MigrationAbort


def gather(db: Database, target: UniqueTarget, report: Report, ddl_command: str | None) -> Report:
    """`report` (the checks' problems in it already) completed for a partitioned table."""
    report.table_exists = True
    report.problems = partitions.problems(db, target) + report.problems
    if report.problems:
        report.state, report.state_description = "blocked", report.problems[0]
        return report
    try:
        root_index = partitioned.root_unique(db, target)
        parts = partitioned.read_parts(db, target)
    except MigrationAbort as refused:
        report.problems.append(str(refused))
        report.state, report.state_description = "blocked", str(refused)
        return report
    leaves = [part for part in parts if part.member.is_leaf]
    sizes = {part.member.qualified: size_of(db, part) for part in leaves}
    for part in leaves:
        size = sizes[part.member.qualified]
        report.table_bytes += size.table_bytes
        report.total_bytes += size.total_bytes
        report.estimated_rows += size.estimated_rows
        report.partitions.append(partition_line(db, part, size.table_bytes, report))
    valid = root_index is not None and root_index[1]
    converged = valid and all(part.plan is None or part.plan.converged for part in parts)
    if converged:
        report.state, report.state_description = (
            "constrained",
            f"the constraint on {target.display_table} and on all {len(leaves)} partitions",
        )
    else:
        done = "some of its partitions' uniques attached" if root_index else "no constraint yet"
        report.state, report.state_description = "partitioned", done
    report.resumes_interrupted_run = bool(ledger.every_step(db, target)) and not converged
    key = ", ".join(target.columns)
    report.on_conflict = (
        f"ON CONFLICT ({key}) on {target.display_table} works already"
        if valid
        else f"ON CONFLICT ({key}) on {target.display_table} fails (42P10: no unique matches)"
        " until the last partition's unique is attached, at the end of the upgrade; it works"
        " from then on"
    )
    if not converged and not ledger.exists(db, target):
        report.replication = preflight.replication_lines(
            db,
            [target.private_schema],
            ddl_command or surroundings.subscriber_ddl_command(target),
        )
    report.offline = [
        "refuses a partitioned table, before anything changes: run `alembic upgrade` online"
    ]
    if not converged:
        report.steps = steps(db, target, leaves, sizes)
    if db.relation_exists(target.archive):
        report.rows_already_archived = db.scalar(
            f"SELECT pg_catalog.count(*) FROM {target.archive}"
        )
    # Every partition's steps too: the uniques the downgrade builds again are theirs.
    report.downgrade_steps = preflight.planned_downgrade(
        db, target, ledger.every_step(db, target), report
    )
    return report


@dataclass(frozen=True)
class Size:
    table_bytes: int
    total_bytes: int  # with its indexes and TOAST
    estimated_rows: int


def size_of(db: Database, part: partitioned.Part) -> Size:
    facts = db.execute(
        "SELECT pg_catalog.pg_relation_size(c.oid) AS table_bytes,"
        " pg_catalog.pg_total_relation_size(c.oid) AS total_bytes,"
        " greatest(c.reltuples, 0)::bigint AS estimated_rows"
        " FROM pg_catalog.pg_class c WHERE c.oid = pg_catalog.to_regclass(:table)",
        {"table": part.member.qualified},
    ).one()
    return Size(facts.table_bytes, facts.total_bytes, facts.estimated_rows)


def partition_line(db: Database, part: partitioned.Part, size: int, report: Report) -> str:
    """One partition of `size` bytes of heap: duplicates, what its plan does, and its build's
    estimate. Adds its duplicate counts to the report's."""
    target, plan = part.target, part.plan
    assert plan is not None and plan.main is not None
    main = plan.main
    what = main.description
    if main.action == "build":
        losers = preflight.losers_sql(db, target)
        counts = db.execute(
            f"SELECT pg_catalog.count(*) AS rows, pg_catalog.count(DISTINCT"
            f" ({', '.join(ident(dedupe.work_kept(c)) for c in target.row_identity)}))"
            f" AS groups FROM ({losers}) AS losers"
        ).one()
        report.rows_to_archive += counts.rows
        report.duplicate_groups += counts.groups
        seconds = preflight.build_seconds(size, concurrently=True)
        what = (
            f"{counts.groups} duplicate groups, {counts.rows} rows to archive; unique index"
            f" {target.constraint_name} built concurrently ({preflight.about_seconds(seconds)})"
            " and promoted"
        )
    elif main.action == "promote":
        what = f"adopts {main.description}: promoted to constraint, nothing built"
    elif main.action == "keep":
        what = f"adopts constraint {target.constraint_name} as it is"
    dropped = [step.description for step in plan.of("drop_invalid", "drop_redundant")]
    if dropped:
        what += f"; drops {', '.join(dropped)}"
    return f"{part.member.display}: {size} bytes; {what}"


def steps(
    db: Database, target: UniqueTarget, leaves: list[partitioned.Part], sizes: dict[str, Size]
) -> list[Step]:
    settings = db.settings
    catalog = preflight.catalog_lock(settings)
    builds = [p for p in leaves if p.plan is not None and p.plan.main is not None]
    built = [p for p in builds if p.plan is not None and p.plan.of("build")]
    planned = [
        Step(
            f"add constraint {target.constraint_name} to {target.display_table} ONLY, and to"
            " each partitioned partition: catalog changes, each index invalid until its"
            " partitions' are attached",
            catalog,
            "no wait beyond the lock; ON CONFLICT on the key does not work yet",
            kind="promote",
        )
    ]
    if built:
        planned.append(
            Step(
                f"install the duplicate guard on {target.display_table} (its triggers fire for"
                " every partition)",
                "SHARE ROW EXCLUSIVE on the partitioned table and each partition, under"
                f" lock_timeout {settings.lock_timeout:g} s",
                "a new duplicate is rejected with unique_violation from here on",
                kind="install_guard",
            )
        )
    for part in builds:
        assert part.plan is not None and part.plan.main is not None
        if part.plan.main.action == "build":
            planned.append(
                Step(
                    f"{part.member.display}: archive its duplicates, build"
                    f" {part.target.constraint_name} concurrently, promote it",
                    "row locks on its duplicates; SHARE UPDATE EXCLUSIVE for the build;"
                    f" then {catalog}",
                    "writes to other rows go on",
                    kind="build_concurrently",
                    seconds=preflight.build_seconds(
                        sizes[part.member.qualified].table_bytes, concurrently=True
                    ),
                )
            )
        planned.append(
            Step(
                f"{part.member.display}: attach its constraint's index to its parent's",
                "SHARE UPDATE EXCLUSIVE on the parent's index, ACCESS EXCLUSIVE on its own"
                f" index for a catalog change, under lock_timeout {settings.lock_timeout:g} s",
                "no wait beyond the lock",
                kind="promote",
            )
        )
    if built:
        planned.append(
            Step(
                "remove the duplicate guard",
                f"ACCESS EXCLUSIVE on {target.display_table} and its partitions, {catalog}",
                "ON CONFLICT on the key works",
                kind="remove_guard",
            )
        )
    return planned
