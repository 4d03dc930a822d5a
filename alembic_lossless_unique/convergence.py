"""From whatever uniques the pair has to exactly one: the canonical constraint, and back.

Every step is recorded in the ledger before or atomically with its effect, so a re-run after a
crash recognises its own half-built objects and a downgrade undoes exactly what was done.
"""

import logging
from dataclasses import dataclass, field

from sqlalchemy.exc import IntegrityError

from alembic_lossless_unique import catalog, indexes, ledger
from alembic_lossless_unique.archive import archive_duplicates
from alembic_lossless_unique.catalog import PairUnique
from alembic_lossless_unique.database import Database
from alembic_lossless_unique.errors import MigrationAbort
from alembic_lossless_unique.names import ARCHIVE, CANONICAL_UNIQUE_NAME, PAIR
from alembic_lossless_unique.report import RunReport

log = logging.getLogger("meta_assets")

CANONICAL = CANONICAL_UNIQUE_NAME


@dataclass(frozen=True)
class Plan:
    """What to do with each unique found on the pair."""

    found: list[PairUnique]
    # The unique that becomes (or already is) the canonical constraint; None means build one.
    target: PairUnique | None
    invalid: list[PairUnique] = field(default_factory=list)
    redundant: list[PairUnique] = field(default_factory=list)
    # Partial or expression uniques: they do not serve the upsert and are not ours to drop.
    untouched: list[PairUnique] = field(default_factory=list)


def plan_convergence(found: list[PairUnique]) -> Plan:
    invalid = [unique for unique in found if not unique.valid]
    serving = [unique for unique in found if unique.serves_upsert]
    untouched = [unique for unique in found if unique.valid and not unique.plain]
    target = next((unique for unique in serving if unique.is_canonical_constraint), None)
    if target is None:
        renamable = [u for u in serving if u.constraint_name and u.columns == PAIR]
        promotable = catalog.seed_index_first([u for u in serving if u.promotable])
        target = next(iter(renamable + promotable), None)
    redundant = [unique for unique in serving if unique is not target]
    if target is None:
        _require_canonical_name_free(found)
    return Plan(found, target, invalid, redundant, untouched)


def _require_canonical_name_free(found: list[PairUnique]) -> None:
    clash = next((u for u in found if u.valid and u.index_name == CANONICAL), None)
    if clash is not None:
        raise MigrationAbort(
            f"index {CANONICAL} exists but cannot become the canonical constraint"
            f" ({clash.definition}): rename or drop it, then re-run"
        )


def describe_state(found: list[PairUnique], created_by_baseline: bool) -> str:
    plan = plan_convergence(found)
    if created_by_baseline and plan.target and plan.target.is_canonical_constraint:
        return "created (the baseline revision created the table with its constraint)"
    if plan.target is None:
        return "drifted (no unique on the pair)"
    if plan.target.is_canonical_constraint:
        if plan.redundant:
            extra = ", ".join(unique.index_name for unique in plan.redundant)
            return f"both (canonical constraint plus redundant {extra})"
        return "constrained (canonical constraint, nothing to do)"
    if plan.target.constraint_name:
        return f"renamed constraint ({plan.target.constraint_name})"
    return f"seedindex (unique index {plan.target.index_name}, no constraint)"


# Upgrade steps, in the order the revision runs them.


def drop_invalid_indexes(db: Database, plan: Plan, report: RunReport) -> None:
    for unique in plan.invalid:
        if unique.constraint_name:
            continue  # a constraint's index cannot be invalid in practice; never drop blindly
        ledger.record_step(db, "dropped_invalid", index_name=unique.index_name)
        indexes.drop_index_concurrently(db, unique.index_name)
        report.fact("dropped", f"INVALID index {unique.index_name} (left by an interrupted build)")


def build_canonical_unique(db: Database, report: RunReport) -> None:
    """Archive duplicates, build the unique index concurrently, promote it.

    A duplicate written between the archive step and the end of the build makes the build fail;
    the index it leaves is INVALID, so the loop archives again and rebuilds, a bounded number
    of times.
    """
    groups = rows = 0
    definition = indexes.unique_pair_index_definition(db, CANONICAL)
    for attempt in range(1, db.settings.build_attempts + 1):
        # The dedupe scans the table and may wait for rows the app holds; it takes no strong
        # lock, so a statement_timeout on the migrator's role must not cancel it.
        with report.step("archive duplicates"), db.session_setting("statement_timeout", "0"):
            archived = archive_duplicates(db)
        groups += archived.duplicate_groups
        rows += archived.rows_archived
        log.info(
            "archived %d rows from %d duplicate groups",
            archived.rows_archived,
            archived.duplicate_groups,
        )
        ledger.record_step(db, "built", index_name=CANONICAL)
        try:
            with report.step("build index concurrently"):
                indexes.create_index_concurrently(db, CANONICAL, definition)
            break
        except IntegrityError:
            if attempt == db.settings.build_attempts:
                raise MigrationAbort(
                    f"new duplicates kept arriving during {attempt} concurrent builds;"
                    " the invalid index was left for the next run to clean up: re-run"
                    " `alembic upgrade head`, or raise -x build_attempts"
                ) from None
            log.warning("a duplicate arrived during the build; archiving it and building again")
    report.fact("duplicate groups", groups)
    report.fact("rows archived", f"{rows} (moved to {ARCHIVE})")
    report.fact("built", f"unique index {CANONICAL}, concurrently")
    with report.step("promote to constraint"):
        indexes.promote_index_to_constraint(db, CANONICAL, CANONICAL)
    report.fact("promoted", f"index -> constraint {CANONICAL}")


def adopt_existing_unique(
    db: Database, target: PairUnique, steps: list[ledger.Step], report: RunReport
) -> None:
    """Turn the unique already on the pair into the canonical constraint, building nothing."""
    report.fact("duplicate groups", "0 (a valid unique already covers the pair: no scan)")
    if target.is_canonical_constraint:
        report.fact("built", "nothing: the canonical constraint is already there")
        return
    with report.step("adopt existing unique"):
        if target.constraint_name:
            ledger.record_step(db, "renamed", constraint_name=target.constraint_name)
            indexes.rename_constraint(db, target.constraint_name, CANONICAL)
            report.fact("renamed", f"constraint {target.constraint_name} -> {CANONICAL}")
            return
        ours = target.index_name == CANONICAL and any(s.action == "built" for s in steps)
        if not ours:
            ledger.record_step(db, "promoted", **target.recreation_record())
        indexes.promote_index_to_constraint(db, target.index_name, CANONICAL)
        if target.comment is not None:
            indexes.set_index_comment(db, CANONICAL, None)
        report.fact("built", "nothing: promoted the existing valid unique index")
        report.fact("promoted", f"index {target.index_name} -> constraint {CANONICAL}")


def drop_redundant_uniques(db: Database, plan: Plan, report: RunReport) -> None:
    for unique in plan.redundant:
        ledger.record_step(db, "dropped_redundant", **unique.recreation_record())
        if unique.constraint_name:
            indexes.drop_constraint(db, unique.constraint_name)
        else:
            indexes.drop_index_concurrently(db, unique.index_name)
        report.fact("dropped", f"redundant {unique.describe()}")


# Downgrade steps: the upgrade's, undone in reverse.


def recreate_dropped_uniques(db: Database, steps: list[ledger.Step]) -> None:
    for step in reversed(steps):
        if step.action == "dropped_redundant":
            _recreate(db, **step.detail)
        elif step.action == "dropped_invalid":
            log.info("not recreating %s: it was INVALID", step.detail["index_name"])


def undo_canonical_constraint(db: Database, steps: list[ledger.Step]) -> None:
    for step in reversed(steps):
        detail = step.detail
        if step.action == "built":
            indexes.drop_constraint(db, CANONICAL)
            indexes.drop_index_concurrently(db, CANONICAL)
            return
        if step.action == "renamed":
            if not catalog.constraint_exists(db, detail["constraint_name"]):
                indexes.rename_constraint(db, CANONICAL, detail["constraint_name"])
            return
        if step.action == "promoted":
            original = (detail["index_name"], None, detail["definition"], detail["comment"])
            if detail["index_name"] == CANONICAL:
                # Same name: the constraint (and its index) must go before the original returns.
                indexes.drop_constraint(db, CANONICAL)
                _recreate(db, *original)
            else:
                # Build the original first so the pair is never without a unique.
                _recreate(db, *original)
                indexes.drop_constraint(db, CANONICAL)
            return


def _recreate(
    db: Database,
    index_name: str,
    constraint_name: str | None,
    definition: str,
    comment: str | None,
) -> None:
    if constraint_name and catalog.constraint_exists(db, constraint_name):
        return
    indexes.create_index_concurrently(db, index_name, definition)
    if comment is not None:
        indexes.set_index_comment(db, index_name, comment)
    if constraint_name:
        indexes.promote_index_to_constraint(db, index_name, constraint_name)
