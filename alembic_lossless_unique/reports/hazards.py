"""Stable hazard codes: what an operation of the plan does that a reviewer or a CI gate may want
to allow explicitly (`python -m alembic_lossless_unique plan --allow CODE,...`).

The list is versioned: a code keeps its meaning for as long as HAZARD_CODES_VERSION stays the
same; a new code, or a code whose meaning changes, raises it. docs/reference.md lists them.
Every code is derived from preflight's report of the operation, here and nowhere else.
"""

from dataclasses import dataclass

from alembic_lossless_unique.reports.preflight import Report, Step

HAZARD_CODES_VERSION = 1


@dataclass(frozen=True)
class Hazard:
    code: str
    meaning: str


HAZARDS = (
    Hazard("REFUSED", "the operation would refuse, before changing anything (the detail says why)"),
    Hazard(
        "TABLE_MISSING",
        "the table does not exist yet: a revision before this operation must create it, or the"
        " run refuses there",
    ),
    Hazard(
        "ARCHIVES_ROWS",
        "moves duplicate rows to the archive in the private schema (the downgrade restores"
        " them); writes to those keys wait for the move",
    ),
    Hazard(
        "REPOINTS_CHILD_ROWS",
        "updates rows of other tables whose foreign keys point at an archived row, to the row"
        " kept (the downgrade points them back)",
    ),
    Hazard(
        "BUILDS_INDEX_CONCURRENTLY",
        "builds a unique index CONCURRENTLY: reads and writes go on, the build waits for every"
        " transaction older than itself",
    ),
    Hazard(
        "FAILS_UPSERTS_DURING_BUILD",
        "while a unique is rebuilt concurrently beside the constraint, PostgreSQL 18 and older"
        " fail some racing ON CONFLICT upserts (23505, 40P01)",
    ),
    Hazard(
        "TAKES_STRONG_LOCKS",
        "takes strong table locks for catalog changes (milliseconds), under lock_timeout with"
        " retries: the table's queries queue behind each attempt for up to lock_timeout",
    ),
    Hazard(
        "BLOCKS_WRITES",
        "holds ACCESS EXCLUSIVE on the table for longer than a catalog change: its reads and"
        " writes wait for the estimated seconds in the detail",
    ),
    Hazard("DROPS_INDEX", "drops a unique index or constraint on the key (redundant, or INVALID)"),
    Hazard(
        "RESTORES_ROWS",
        "moves archived rows back into the table, where they may meet rows written since",
    ),
    Hazard(
        "PUBLISHES_PRIVATE_TABLES",
        "a publication carries the private schema's tables: each logical subscriber needs them"
        " before the run writes them",
    ),
    Hazard(
        "DOWNGRADE_NEEDS_GRANT",
        "after this upgrade, its downgrade would refuse until the role gets what the detail names",
    ),
)

CODES = tuple(hazard.code for hazard in HAZARDS)

# The prefix preflight gives a problem that only the downgrade after this upgrade would meet.
_AFTER_UPGRADE = "after this upgrade, the downgrade would refuse: "
_TABLE_MISSING_PROBLEM = "does not exist"
# Steps whose strong lock is held for a catalog change only.
_CATALOG_STEPS = (
    "drop_invalid",
    "install_guard",
    "promote",
    "remove_guard",
    "rename",
    "drop_redundant",
    "drop_constraint",
)


@dataclass(frozen=True)
class Found:
    code: str
    detail: str


def hazards_of(report: Report, *, upgrade: bool) -> list[Found]:
    """The hazards of one operation (an ensure_unique_* when `upgrade`, else its undo_*) from
    preflight's report of its table, in CODES order."""
    steps = report.steps if upgrade else report.downgrade_steps
    found: list[Found] = []
    if not report.table_exists:
        found.append(Found("TABLE_MISSING", f"{report.table} does not exist now"))
    if refusals(report):
        found.append(Found("REFUSED", "; ".join(refusals(report))))
    if kinds(steps, "archive"):
        found.append(
            Found(
                "ARCHIVES_ROWS",
                f"{report.rows_to_archive} rows from {report.duplicate_groups} duplicate groups;"
                f" writes to those keys wait {waited(steps, 'archive')}",
            )
        )
        repointed = [fk for fk in report.foreign_keys if fk.rows_to_repoint != 0]
        if repointed:
            found.append(
                Found(
                    "REPOINTS_CHILD_ROWS",
                    ", ".join(
                        f"{'?' if fk.rows_to_repoint is None else fk.rows_to_repoint} rows of"
                        f" {fk.child} ({fk.name})"
                        for fk in repointed
                    ),
                )
            )
    for kind in ("build_concurrently", "rebuild_concurrently"):
        if kinds(steps, kind):
            found.append(Found("BUILDS_INDEX_CONCURRENTLY", f"{waited(steps, kind)} of build"))
    if kinds(steps, "rebuild_concurrently"):
        found.append(Found("FAILS_UPSERTS_DURING_BUILD", kinds(steps, "rebuild_concurrently")[0]))
    catalog = [step.action for kind in _CATALOG_STEPS for step in steps if step.kind == kind]
    if catalog:
        found.append(Found("TAKES_STRONG_LOCKS", "; ".join(catalog)))
    if kinds(steps, "downgrade_transaction"):
        found.append(
            Found(
                "BLOCKS_WRITES",
                f"{waited(steps, 'downgrade_transaction')}: reads and writes wait while"
                " archived rows move back and dropped uniques are built inside it",
            )
        )
    dropped = kinds(steps, "drop_invalid") + kinds(steps, "drop_redundant")
    if dropped:
        found.append(Found("DROPS_INDEX", "; ".join(dropped)))
    if not upgrade and report.rows_already_archived:
        found.append(Found("RESTORES_ROWS", f"{report.rows_already_archived} archived rows"))
    if report.replication and steps:
        found.append(Found("PUBLISHES_PRIVATE_TABLES", "; ".join(report.replication)))
    grants = [
        p.removeprefix(_AFTER_UPGRADE) for p in report.problems if p.startswith(_AFTER_UPGRADE)
    ]
    if upgrade and grants:
        found.append(Found("DOWNGRADE_NEEDS_GRANT", "; ".join(grants)))
    return sorted(found, key=lambda hazard: CODES.index(hazard.code))


def refusals(report: Report) -> list[str]:
    """The problems that would make the operation refuse now: not those of the downgrade after
    it, nor the missing table (TABLE_MISSING says it: a pending revision may create it)."""
    return [
        problem
        for problem in report.problems
        if not problem.startswith(_AFTER_UPGRADE)
        and (report.table_exists or _TABLE_MISSING_PROBLEM not in problem)
    ]


def kinds(steps: list[Step], kind: str) -> list[str]:
    """The actions of the steps of `kind`."""
    return [step.action for step in steps if step.kind == kind]


def waited(steps: list[Step], kind: str) -> str:
    """The estimated seconds of the steps of `kind`, as the detail says them."""
    seconds = sum(step.seconds or 0.0 for step in steps if step.kind == kind)
    return f"an estimated {seconds:.1f} s"
