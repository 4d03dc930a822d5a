"""The unique constraint on a partitioned table, online, partition by partition; and back.

PostgreSQL builds no index concurrently on a partitioned table, and a plain ALTER TABLE ... ADD
CONSTRAINT builds every partition's index under locks that block writes. So, in order:

1. every refusal, before anything changes: PostgreSQL's own rules for a partitioned table's
   unique (ddl/partitions.py) and each partition's plan;
2. the constraint on the partitioned table ONLY, and on each partitioned level ONLY: catalog
   changes, whose indexes stay invalid for now. A partition created from here on gets its own
   copy of the index, attached;
3. the duplicate guard on the partitioned table (its triggers fire for every partition);
4. partition by partition, the path of a plain table: its INVALID leftovers dropped, its
   duplicates archived, its unique built concurrently and promoted to its constraint, or the
   valid unique it already has adopted; then attached to its level's index;
5. each level's index attached to its parent's once all of its own partitions are, deepest
   first, so the root is not locked while a lower level validates; the root's index turns
   valid with its last partition, and ON CONFLICT on the key works from then on;
6. partitions attached or created meanwhile are covered the same way; then the guard goes.

Every partition's step is in the operation's one ledger, naming its partition. The downgrade
drops the partitioned table's constraint (which takes every attached partition's with it),
puts back each partition's unique that the upgrade adopted or dropped (built concurrently
before, renamed into place in the final transaction), and restores the archived rows through
the partitioned table, which routes each to its partition.
"""

import logging
from dataclasses import dataclass
from typing import cast

from alembic_lossless_unique.ddl import guard, indexes, ledger, partitions
from alembic_lossless_unique.ddl.indexes import under_lock_retries
from alembic_lossless_unique.ddl.partitions import Member
from alembic_lossless_unique.ddl.plan import Plan
from alembic_lossless_unique.operations import convergence
from alembic_lossless_unique.operations.target import UniqueTarget
from alembic_lossless_unique.reports.report import RunReport
from alembic_lossless_unique.runtime import surroundings
from alembic_lossless_unique.runtime.database import Database
from alembic_lossless_unique.runtime.errors import MigrationAbort

log = logging.getLogger("alembic_lossless_unique")

# A partition's steps after which its constraint is this operation's doing (or on record).
MADE_HERE = ("built", "promoted", "adopted")

# A partition attached or created while the upgrade runs is covered by another pass; a tree
# that keeps changing under the run this many times is left to a re-run.
PASSES = 3


@dataclass(frozen=True)
class Part:
    """One table of the tree below the partitioned table given, with its own unique's target
    (the same key, under the name PostgreSQL would give it, or the one it already has) and,
    for a leaf, its plan."""

    member: Member
    target: UniqueTarget
    plan: Plan | None


def ensure(db: Database, target: UniqueTarget, ddl_command: str | None) -> None:
    """The upgrade, once the checks have passed (convergence.ensure_unique_constraint)."""
    report = RunReport(f"{target.kind} {target.constraint_name} on {target.key_description}")
    root_index = root_unique(db, target)
    parts = read_parts(db, target)
    leftover_guard = guard.exists(db, target)
    if (
        root_index is not None
        and root_index[1]
        and not leftover_guard
        and all(part.plan is None or part.plan.converged for part in parts)
    ):
        log.info(
            "already converged: %s %s on %s and all %d of its partitions' are in place",
            target.kind,
            target.constraint_name,
            target.key_description,
            sum(1 for part in parts if part.member.is_leaf),
        )
        return
    if not ledger.exists(db, target):
        surroundings.refuse_unready_subscribers(
            db, [target.private_schema], ddl_command or surroundings.subscriber_ddl_command(target)
        )
    try:
        converge(db, target, parts, report)
    except BaseException:
        convergence.forget_if_nothing_done(db, target)
        raise


def root_unique(db: Database, target: UniqueTarget) -> tuple[str, bool] | None:
    """The partitioned table's unique (its index, valid or not), or None; a refusal when
    another unique already covers the key."""
    index = partitions.unique_index(db, root_of(target), target.constraint_name, target)
    others = partitions.other_uniques(db, target)
    if others:
        raise MigrationAbort(
            f"{target.display_table} already has {', '.join(others)} on the key"
            f" ({', '.join(target.columns)}): on a partitioned table the operation starts from no"
            f" unique on the key; drop that one, or give the operation its name, then re-run"
        )
    return index


def read_parts(db: Database, target: UniqueTarget) -> list[Part]:
    """Every table below the root, each with its unique's target and (a leaf) its plan; a
    refusal from any plan stops the run here, before anything changes."""
    parts = []
    for member in partitions.tree(db, target)[1:]:
        # A leaf's plan finds the unique it may already have; a level's is this operation's.
        existing = None if member.is_leaf else partitions.existing_name(db, member, target)
        name = existing or partitions.chosen_name(db, member, target)
        part_target = target.for_partition(member.schema, member.table, name)
        plan = None
        if member.is_leaf:
            plan = convergence.read_plan(db, part_target, ledger.steps(db, part_target))
            if plan.main is not None and plan.main.action in ("rename", "promote"):
                # (The index form renames an index that judges keys alike: adopted too.)
                # Adopted under its own name, as PostgreSQL's ADD CONSTRAINT would.
                adopted = plan.main.constraint_name or plan.main.index_name
                part_target = target.for_partition(member.schema, member.table, cast(str, adopted))
                plan = convergence.read_plan(db, part_target, ledger.steps(db, part_target))
            if plan.refusal:
                raise MigrationAbort(f"partition {member.display}: {plan.refusal}")
        parts.append(Part(member, part_target, plan))
    return parts


def converge(db: Database, target: UniqueTarget, parts: list[Part], report: RunReport) -> None:
    with report.step("inspect"):
        convergence.prepare(db, target)
        if not ledger.every_step(db, target):
            ledger.record(db, target, "found", partitions=len(parts))
    convergence.announce(db, target)
    with report.step("constraint on the partitioned tables, ONLY"):
        add_level_constraint(db, target, root_of(target), target)
        for part in parts:
            if not part.member.is_leaf:
                add_level_constraint(db, target, part.member, part.target)
    guarded = any(
        p.plan is not None and p.plan.main is not None and p.plan.main.action == "build"
        for p in parts
    )
    if guarded or guard.exists(db, target):
        with (
            report.step("install duplicate guard"),
            convergence.removing_guard_on_failure(db, target),
        ):
            guard.install(db, target)
    with convergence.removing_guard_on_failure(db, target):
        for attempt in range(1, PASSES + 1):
            leaves = [part for part in parts if part.member.is_leaf]
            for part in leaves:
                with report.step(f"partition {part.member.display}"):
                    converge_partition(db, target, part, report)
                    attach(db, target, part)
            for part in sorted(parts, key=lambda p: -p.member.level):
                if not part.member.is_leaf:
                    attach(db, target, part)
            if root_is_valid(db, target):
                break
            # A partition attached or created meanwhile: its plan, and another pass.
            parts = read_parts(db, target)
            for part in parts:
                if not part.member.is_leaf:
                    add_level_constraint(db, target, part.member, part.target)
            if attempt == PASSES:
                raise MigrationAbort(
                    f"the partitions of {target.display_table} kept changing while the upgrade"
                    f" gave them their unique ({PASSES} passes); re-run it"
                )
        if guard.exists(db, target):
            with report.step("remove duplicate guard"):
                guard.remove(db, target)
    report.fact("partitions", sum(1 for part in parts if part.member.is_leaf))
    report.fact("valid", f"{target.kind} {target.constraint_name}: ON CONFLICT on the key works")
    report.log_summary()


def add_level_constraint(
    db: Database, target: UniqueTarget, member: Member, level: UniqueTarget
) -> None:
    """A partitioned table's constraint, ONLY, unless it has it."""
    if partitions.unique_index(db, member, level.constraint_name, target) is not None:
        return
    ledger.record(db, level, "built", index_name=level.constraint_name)
    under_lock_retries(
        db,
        level,
        f"add constraint {level.constraint_name} to {member.display} only",
        partitions.add_constraint_only_sql(target, member, level.constraint_name),
    )


def converge_partition(db: Database, part_of: UniqueTarget, part: Part, report: RunReport) -> None:
    """One leaf of `part_of`: the plain table's path, guarded by the partitioned table's guard."""
    plan, target = part.plan, part.target
    assert plan is not None and plan.main is not None  # a leaf's, refusals raised before
    leaf_report = RunReport(part.member.display)
    convergence.drop_invalid_indexes(db, target, plan, leaf_report)
    main = plan.main
    if main.action == "build":
        convergence.archive_and_build(db, target, leaf_report)
        if not target.is_index:
            under_lock_retries(
                db,
                target,
                f"promote index {target.constraint_name} to constraint {target.constraint_name}",
                indexes.promote_sql(target, target.constraint_name),
            )
    elif main.action == "promote":
        convergence.adopt_existing_unique(db, target, main, leaf_report)
    elif not any(step.action in MADE_HERE for step in ledger.steps(db, target)) and (
        indexes_to_attach(db, part_of, part) is not None
    ):
        # Its own unique, found, not made by this operation nor copied by PostgreSQL from the
        # partitioned table's (a partition created since, whose copy is attached already): the
        # downgrade's drop of the partitioned table's takes it along once attached, so it is
        # recorded, to be built again.
        ledger.record(db, target, "adopted", **main.recreation_record())
    convergence.drop_redundant_uniques(db, target, plan, leaf_report)
    facts = [f"{label} {value}" for label, value in leaf_report.facts]
    report.fact(f"partition {part.member.display}", "; ".join(facts) or main.description)


def indexes_to_attach(db: Database, target: UniqueTarget, part: Part) -> tuple[str, str] | None:
    """(its parent level's index, its own), qualified, while its unique is not attached to its
    parent's; None once it is (or has none yet)."""
    parent_schema, parent_table = cast(tuple[str, str], part.member.parent)
    parent = Member(parent_schema, parent_table, part.member.level - 1, False, None)
    parent_name = (
        target.constraint_name
        if (parent_schema, parent_table) == (target.schema, target.table)
        else partitions.existing_name(db, parent, target)
    )
    parent_index = parent_name and partitions.unique_index(db, parent, parent_name, target)
    child_index = partitions.unique_index(db, part.member, part.target.constraint_name, target)
    if not parent_index or child_index is None:
        return None
    if partitions.attached(db, parent_index[0], child_index[0]):
        return None
    return parent_index[0], child_index[0]


def attach(db: Database, target: UniqueTarget, part: Part) -> None:
    """A table's unique attached to its parent level's index, unless it is."""
    to_attach = indexes_to_attach(db, target, part)
    if to_attach is None:
        return
    parent_index, child_index = to_attach
    under_lock_retries(
        db,
        part.target,
        f"attach {child_index} to {parent_index}",
        partitions.attach_sql(parent_index, child_index),
    )


def root_is_valid(db: Database, target: UniqueTarget) -> bool:
    index = partitions.unique_index(db, root_of(target), target.constraint_name, target)
    return index is not None and index[1]


def root_of(target: UniqueTarget) -> Member:
    """The partitioned table the operation was given, as a member of its own tree."""
    return Member(target.schema, target.table, 0, False, None)
