"""From whatever uniques the key has to exactly one, the target constraint, online; and back.

Every step is recorded in the ledger before or atomically with its effect, so a re-run after a
crash recognises its own half-built objects and a downgrade undoes exactly what was done.
"""

import logging
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from typing import Any, cast

from sqlalchemy.exc import DBAPIError, IntegrityError

from alembic_lossless_unique.ddl import (
    checks,
    dedupe,
    guard,
    indexes,
    ledger,
    partitions,
    private_schema,
    probe,
    restore,
)
from alembic_lossless_unique.ddl.indexes import under_lock_retries
from alembic_lossless_unique.ddl.plan import Plan, Step, plan_sql
from alembic_lossless_unique.operations.target import UniqueTarget
from alembic_lossless_unique.reports.report import RunReport
from alembic_lossless_unique.runtime import drivers, replicas, surroundings
from alembic_lossless_unique.runtime.database import Database
from alembic_lossless_unique.runtime.errors import MigrationAbort
from alembic_lossless_unique.runtime.locks import with_table_lock_retries
from alembic_lossless_unique.runtime.settings import MigrationSettings

log = logging.getLogger("alembic_lossless_unique")


def read_plan(db: Database, target: UniqueTarget, steps_done: list[ledger.Step]) -> Plan:
    # Written in, not a parameter: the index form's plan carries the user's SQL, whose colons
    # a statement with parameters would take for more of them.
    built_before = "true" if ledger.built_before(steps_done) else "false"
    rows = db.rows(plan_sql(target, built_before))
    return Plan(tuple(Step(*row[1:]) for row in rows), is_index=target.is_index)


def refuse_on_problems(db: Database, checks_sql: str) -> None:
    """Run a checks block in refuse mode: its first problem becomes the one-line failure."""
    try:
        db.execute(checks_sql)
    except DBAPIError as error:
        raise as_abort(error) from None


def as_abort(error: DBAPIError) -> Exception:
    """This package's own refusals and failed checks (SQLSTATE LU...) as one-line aborts."""
    if drivers.sqlstate(error) in (dedupe.REFUSED, dedupe.CHECK_FAILED):
        return MigrationAbort(drivers.primary_message(error))
    return error


# Upgrade: the story, in the order it happens.


def ensure_unique_constraint(
    db: Database, target: UniqueTarget, ddl_command: str | None = None
) -> None:
    """Converge on the target's unique: the constraint, or (`target.is_index`) the unique index.
    `ddl_command`: what prints a logical subscriber's DDL, for the replication refusal
    (default: the library's command with the operation's arguments)."""
    target = probe.resolve(db, target)  # the index form's key, or a refusal: nothing changed
    report = RunReport(f"{target.kind} {target.constraint_name} on {target.key_description}")
    partitioned = partitions.is_partitioned(db, target)
    if partitioned:  # PostgreSQL's own rules first: nothing else matters when they refuse
        found = partitions.problems(db, target)
        if found:
            raise MigrationAbort(found[0])
    refuse_on_problems(db, checks.upgrade_checks_sql(target, refuse=True))
    if partitioned:
        # Imported here: the partitioned story is told with this module's steps.
        from alembic_lossless_unique.operations import partitioned as partition_by_partition

        partition_by_partition.ensure(db, target, ddl_command)
        return
    steps_done = ledger.steps(db, target)
    plan = read_plan(db, target, steps_done)
    if plan.refusal:
        raise MigrationAbort(plan.refusal)
    leftover_guard = guard.exists(db, target)
    if plan.converged and not leftover_guard:
        log.info(
            "already converged: %s %s on %s is in place; nothing to do",
            target.kind,
            target.constraint_name,
            target.key_description,
        )
        return

    if not ledger.exists(db, target):  # this run creates its private tables: carried to whom?
        surroundings.refuse_unready_subscribers(
            db, [target.private_schema], ddl_command or surroundings.subscriber_ddl_command(target)
        )
    try:
        converge(db, target, plan, steps_done, leftover_guard, report)
    except BaseException:
        forget_if_nothing_done(db, target)
        raise


def converge(
    db: Database,
    target: UniqueTarget,
    plan: Plan,
    steps_done: list[ledger.Step],
    leftover_guard: bool,
    report: RunReport,
) -> None:
    with report.step("inspect"):
        prepare(db, target)
        if not steps_done:
            ledger.record(
                db,
                target,
                "found",
                uniques=[
                    step.description
                    for step in plan.of(
                        "drop_invalid", "keep", "rename", "promote", "drop_redundant", "leave_alone"
                    )
                ],
            )
    state, described = plan.state()
    report.fact("state found", f"{state} ({described})")
    if steps_done:
        first_found = ", ".join(steps_done[0].detail.get("uniques", [])) or "no unique on the key"
        report.fact("resumed", f"an interrupted earlier run, which first found: {first_found}")
    announce(db, target)

    drop_invalid_indexes(db, target, plan, report)
    main = plan.main
    assert main is not None
    if main.action == "build":
        build_and_promote(db, target, report)
    else:
        if leftover_guard:
            guard.remove(db, target)
        adopt_existing_unique(db, target, main, report)
    with report.step("drop redundant uniques"):
        drop_redundant_uniques(db, target, plan, report)
    for step in plan.of("leave_alone"):
        report.fact("left alone", f"{step.description}: partial or expression unique")
    report.log_summary()


# Ledger steps that change nothing a downgrade or a re-run would need to know about.
WITHOUT_EFFECT = frozenset({"found", "guard_installed", "guard_removed"})


def forget_if_nothing_done(db: Database, target: UniqueTarget) -> None:
    """A run that failed before it changed the table leaves no trace: its empty archive and its
    ledger go again (a guard it could not remove stays recorded, for the next run)."""
    try:
        if db.connection.closed or not ledger.exists(db, target) or guard.exists(db, target):
            return
        for step in ledger.every_step(db, target):
            archived_nothing = step.action == "archived" and not step.detail.get("rows")
            if step.action not in WITHOUT_EFFECT and not archived_nothing:
                return
        for relation in (target.archive, target.repointed):
            if db.relation_exists(relation) and db.scalar(f"SELECT count(*) FROM {relation}"):
                return
        with db.transaction():
            for relation in (target.archive, target.repointed, target.ledger):
                db.execute(f"DROP TABLE IF EXISTS {relation}")
    except DBAPIError as error:  # the run's own failure is the one to report
        log.debug("could not remove the failed run's empty ledger: %s", error)


def prepare(db: Database, target: UniqueTarget) -> None:
    """The private schema (ours, or created now), the ledger and the archive, closed to others."""
    private_schema.ensure(db, target.private_schema)
    with db.transaction():
        db.execute(ledger.create_ledger_sql(target))
        db.execute(dedupe.archive_sql(target))
        db.execute(private_schema.lock_down_sql(target.private_schema))


def announce(db: Database, target: UniqueTarget) -> None:
    skipped = surroundings.may_skip_user_triggers(db)
    for line in surroundings.announcements(surroundings.read(db, target), skipped):
        log.info("%s", line)


def drop_invalid_indexes(db: Database, target: UniqueTarget, plan: Plan, report: RunReport) -> None:
    for step in plan.of("drop_invalid"):
        ledger.record(db, target, "dropped_invalid", index_name=step.index_name)
        indexes.drop_index(db, target, cast(str, step.index_name))  # only a refuse has none
        report.fact("dropped", f"INVALID index {step.index_name} (left by an interrupted build)")


def build_and_promote(db: Database, target: UniqueTarget, report: RunReport) -> None:
    """Guard the table, archive duplicates, build the unique index concurrently, promote it.

    The guard rejects new duplicates from here on, and the move ranks every listed key again
    under row locks, whatever the app writes meanwhile; so the first build succeeds unless a
    writer the guard cannot see adds a duplicate (a REPEATABLE READ transaction whose snapshot
    predates the other row, a session with session_replication_role = replica such as a
    logical replication apply worker). Then the build fails, and the INVALID index it leaves
    is dropped and built again after another dedupe, a bounded number of times.
    """
    with report.step("install duplicate guard"), removing_guard_on_failure(db, target):
        guard.install(db, target)
    with removing_guard_on_failure(db, target):
        archive_and_build(db, target, report)
        if target.is_index:  # the index is the end state: only the guard goes
            with report.step("remove duplicate guard"):
                under_lock_retries(
                    db,
                    target,
                    "remove the duplicate guard",
                    *guard.drop_statements(target),
                    guard.record_removed_sql(target),
                )
            return
        with report.step("promote to constraint"):
            under_lock_retries(
                db,
                target,
                f"promote index {target.constraint_name} to constraint {target.constraint_name}",
                indexes.promote_sql(target, target.constraint_name),
                *guard.drop_statements(target),
                guard.record_removed_sql(target),
            )
        report.fact("promoted", f"index -> constraint {target.constraint_name}")


def archive_and_build(db: Database, target: UniqueTarget, report: RunReport) -> None:
    """With the guard on: archive duplicates, build the unique index concurrently; again after
    another dedupe when a duplicate slipped past the guard, `build_attempts` times at most."""
    groups = rows = repointed = 0
    definition = indexes.unique_index_definition(target, target.constraint_name)
    slipped_in: list[str] = []
    for attempt in range(1, db.settings.build_attempts + 1):
        archived = archive_duplicates(db, target, report)
        groups += archived["groups"]
        rows += archived["rows"]
        repointed += sum(archived["repointed"].values())
        ledger.record(db, target, "built", index_name=target.constraint_name)
        try:
            with report.step("build index concurrently"):
                indexes.create_index_concurrently(db, target, target.constraint_name, definition)
            break
        except IntegrityError as error:
            slipped_in.append(duplicate_detail(error))
            if attempt == db.settings.build_attempts:
                raise MigrationAbort(past_the_guard_message(db, target, slipped_in)) from None
            log.warning(
                "a duplicate arrived during the build, past the duplicate guard (%s);"
                " archiving it and building again",
                slipped_in[-1],
            )
    report.fact("duplicate groups", groups)
    report.fact("rows archived", f"{rows} (moved to {target.archive})")
    if repointed:
        report.fact(
            "re-pointed",
            f"{repointed} child rows to the kept row (recorded in {target.repointed})",
        )
    report.fact("built", f"unique index {target.constraint_name}, concurrently")


def duplicate_detail(error: DBAPIError) -> str:
    """The failed build's own words for the duplicate it met: 'Key (a, b)=(1, 2) is
    duplicated.' (the DETAIL of its unique_violation)."""
    inner = drivers.original(error)
    diag = getattr(inner, "diag", None)  # psycopg2 and psycopg 3; asyncpg: .detail
    detail = getattr(diag, "message_detail", None) or getattr(inner, "detail", None)
    return str(detail).rstrip(".") if detail else drivers.primary_message(error)


def past_the_guard_message(db: Database, target: UniqueTarget, slipped_in: list[str]) -> str:
    """What happened when every build met a duplicate: which keys, and who can write one past
    the guard (the subscriptions of this database, when there are any)."""
    subscriptions = db.scalar(
        "SELECT pg_catalog.string_agg(pg_catalog.quote_ident(subname), ', ' ORDER BY subname)"
        " FROM pg_catalog.pg_subscription"
        " WHERE subdbid = (SELECT oid FROM pg_catalog.pg_database"
        " WHERE datname = pg_catalog.current_database()) AND subenabled"
    )
    writers = (
        f"the apply worker of subscription {subscriptions} (it writes with"
        " session_replication_role = replica, which fires no trigger), or a REPEATABLE READ"
        " or SERIALIZABLE transaction whose snapshot predates the other row of its key"
        if subscriptions
        else "a REPEATABLE READ or SERIALIZABLE transaction whose snapshot predates the other"
        " row of its key, or a session with session_replication_role = replica (which fires"
        " no trigger)"
    )
    return (
        f"each of {len(slipped_in)} concurrent builds of unique index {target.constraint_name}"
        f" met a duplicate of {target.key_description} written after the dedupe had archived"
        f" the earlier ones ({'; '.join(slipped_in)}); the duplicate guard rejects such"
        f" writes from every other session, so they came from {writers}. Nothing was lost,"
        " the duplicates are still in the table and the guard was removed; stop that writer"
        " for the upgrade, then re-run (the INVALID index is dropped and built again), or"
        " raise -x build_attempts"
    )


def archive_duplicates(db: Database, target: UniqueTarget, report: RunReport) -> dict[str, Any]:
    """The dedupe: one transaction lists every row of a duplicate key, then the move runs in
    batches of `move_batch_keys` keys, each its own transaction, so a writer of a duplicate key
    waits for one batch at most; each batch waits for the physical standbys to replay to within
    `max_replica_lag` (replicas.ReplicaPacer).
    A run stopped between batches or inside one leaves whole batches archived, the guard still
    on, and a re-run lists what is left. Returns the batches' ledger records summed up. It takes
    no lock that blocks the app, and may wait for rows the app holds, so a statement_timeout on
    the migrator's role must not cancel it."""
    recorded_before = len(ledger.steps(db, target))
    with db.session_setting("statement_timeout", "0"):
        try:
            with db.transaction():
                with report.step("list duplicates"), indexes.watching(db, "listing duplicates"):
                    db.execute(dedupe.list_sql(target, db.settings.dedupe_work_mem))
                    for statement in dedupe.batches_sql(target, db.settings.move_batch_keys):
                        db.execute(statement)
                batches = int(db.scalar(dedupe.batch_count_sql(target)))
            with report.step("move duplicates"), indexes.watching(db, "moving duplicates"):
                in_paced_batches(
                    db,
                    batches,
                    lambda batch: [dedupe.batch_work_sql(target, batch), dedupe.move_sql(target)],
                    "moved",
                )
        except DBAPIError as error:
            raise as_abort(error) from None
        finally:
            # Only this run's list: a re-run lists again.
            with suppress(DBAPIError):
                if not db.connection.closed:
                    db.execute(f"DROP TABLE IF EXISTS {target.batches}")
    steps = ledger.steps(db, target)[recorded_before:]
    moved = [step.detail for step in steps if step.action == "archived"]
    archived = summed_moves(moved)
    changed, gone = archived["changed_since_listed"], archived["gone_since_listed"]
    log.info(
        "archived %d rows from %d duplicate groups%s",
        archived["rows"],
        archived["groups"],
        ""
        if not (changed or gone)
        else f" (ranked again under row locks: {changed} listed rows the app had changed"
        f" meanwhile, {gone} it had deleted)",
    )
    return archived


def in_paced_batches(
    db: Database, batches: int, statements: Callable[[int], list[str]], done: str
) -> None:
    """`batches` transactions, the statements of each from `statements(batch)`, each begun once
    the physical standbys have replayed the one before (replicas.ReplicaPacer); the log says
    `<done> batch i of n` after each."""
    pacer = replicas.ReplicaPacer(db, db.settings, log)
    for batch in range(batches):
        pacer.wait()
        with db.transaction():
            for statement in statements(batch):
                db.execute(statement)
        if batches > 1:
            log.info("%s batch %d of %d", done, batch + 1, batches)


def summed_moves(moved: list[dict[str, Any]]) -> dict[str, Any]:
    """The ledger records of a move's batches, as one: counts added up, re-pointed child rows
    added up per foreign key."""
    repointed: Counter[str] = Counter()
    for detail in moved:
        repointed.update(detail["repointed"])
    return {
        **{
            name: sum(detail.get(name, 0) for detail in moved)
            for name in ("rows", "groups", "listed", "changed_since_listed", "gone_since_listed")
        },
        "repointed": dict(repointed),
        "batches": len(moved),
    }


@contextmanager
def removing_guard_on_failure(db: Database, target: UniqueTarget) -> Iterator[None]:
    """A failed run takes its guard away; if even that fails, the next run does."""
    try:
        yield
    except BaseException:
        try:
            if not db.connection.closed and guard.exists(db, target):
                guard.remove(db, target)
        except Exception as cleanup_error:
            log.warning(
                "the duplicate guard stays until the next run removes it: %s", cleanup_error
            )
        raise


def adopt_existing_unique(
    db: Database, target: UniqueTarget, main: Step, report: RunReport
) -> None:
    """Turn the unique already on the key into the target constraint, building nothing."""
    name = target.constraint_name
    report.fact("duplicate groups", "0 (a valid unique already covers the key: no scan)")
    if main.action == "keep":
        report.fact("built", f"nothing: {target.the_unique} is already there")
        return
    with report.step("adopt existing unique"):
        if main.action == "rename":
            # The index form's fitting unique is an index; the constraint form's, a constraint.
            what, old_name = (
                ("index", cast(str, main.index_name))
                if target.is_index
                else ("constraint", cast(str, main.constraint_name))
            )
            ledger.record(db, target, "renamed", **{f"{what}_name": old_name})
            rename = indexes.rename_index_sql if target.is_index else indexes.rename_constraint_sql
            under_lock_retries(
                db, target, f"rename {what} {old_name} to {name}", rename(target, old_name, name)
            )
            report.fact("renamed", f"{what} {old_name} -> {name}")
            return
        if not main.ours:
            ledger.record(db, target, "promoted", **main.recreation_record())
        # every step but refuse names an index
        statements = [indexes.promote_sql(target, cast(str, main.index_name))]
        if main.comment is not None:
            statements.append(indexes.set_index_comment_sql(target, name, None))
        under_lock_retries(
            db, target, f"promote index {main.index_name} to constraint {name}", *statements
        )
        report.fact("built", "nothing: promoted the existing valid unique index")
        report.fact("promoted", f"index {main.index_name} -> constraint {name}")


def drop_redundant_uniques(
    db: Database, target: UniqueTarget, plan: Plan, report: RunReport
) -> None:
    for step in plan.of("drop_redundant"):
        ledger.record(db, target, "dropped_redundant", **step.recreation_record())
        if step.constraint_name:
            under_lock_retries(
                db,
                target,
                f"drop redundant constraint {step.constraint_name}",
                indexes.drop_constraint_sql(target, step.constraint_name),
            )
        else:
            indexes.drop_index(db, target, cast(str, step.index_name))  # only a refuse has none
        report.fact("dropped", f"redundant {step.description}")


# Downgrade: prepared online, then one transaction that either does it all or nothing.


class Undo:
    """A downgrade in two parts. `prepare` runs online, in autocommit: it checks everything the
    downgrade needs (refusing before any change) and builds, concurrently, the uniques the
    upgrade dropped. `finish` runs in the one transaction that also moves the revision back: it
    drops the target constraint, restores every archived row, points re-pointed child rows back
    and removes the archive and ledger. If `finish` fails, `compensate` drops what `prepare`
    built, so the database is exactly as it was."""

    def __init__(self, target: UniqueTarget) -> None:
        self.target = target
        self.report = RunReport(
            f"undo {target.kind} {target.constraint_name} on {target.key_description}"
        )
        self.steps: list[ledger.Step] = []
        self.prebuilt: list[tuple[UniqueTarget, str]] = []  # (on whose table, index)
        self.in_transaction: list[str] = []
        self.build_in_transaction = False

    def prepare(self, db: Database) -> bool:
        """False when there is nothing to undo."""
        target = self.target
        refuse_on_problems(db, checks.downgrade_checks_sql(target, refuse=True))
        self.steps = ledger.steps(db, target)
        if not self.steps and not db.relation_exists(target.archive):
            log.info(
                "nothing to undo: %s has no ledger, so its upgrade changed nothing",
                target.key_description,
            )
            return False
        to_rebuild = [
            (target, step) for step in self.steps if step.action in REBUILT_STEPS
        ] + partition_rebuilds(target, ledger.every_step(db, target))
        if not to_rebuild:
            self._restore_in_batches(db)
            return True
        self.build_in_transaction = db.concurrent and indexes.rebuild_in_transaction(db, target)
        how = "inside the final transaction" if self.build_in_transaction else "concurrently"
        with self.report.step(f"rebuild dropped uniques {how}"):
            for on, step in reversed(to_rebuild):
                if step.action == "dropped_redundant":
                    self._rebuild(db, on, step.detail, step.detail["index_name"])
                else:  # promoted, or a partition's own constraint adopted
                    self._rebuild_in_place(db, on, step.detail)
        if self.build_in_transaction:
            self.report.fact(
                "rebuilt",
                "inside the downgrade's transaction (downgrade_rebuild"
                f" {db.settings.downgrade_rebuild}): the table's queries wait for the build,"
                " no upsert fails",
            )
        return True

    def _restore_in_batches(self, db: Database) -> None:
        """A large archive comes back in batches of `restore_batch_rows` rows, each its own
        transaction paced on the standbys, so the table is not locked while all of it moves and
        no standby receives all of it at once. The constraint the upgrade built goes first (the
        archived rows duplicate its key), in a short transaction under the lock timeout; the
        final transaction then points child rows back and removes the archive. Stopped between
        batches, the rollback is finished by running it again."""
        target, settings = self.target, db.settings
        if not db.relation_exists(target.archive):
            return
        archived = int(db.scalar(f"SELECT count(*) FROM {target.archive}"))
        if not restores_in_batches(self.steps, archived, settings):
            return
        batches = -(-archived // settings.restore_batch_rows)
        with self.report.step(f"drop the {target.kind}"):
            under_lock_retries(
                db,
                target,
                f"drop {target.kind} {target.constraint_name}",
                indexes.drop_target_sql(target),
                # Until the last batch: an upgrade meanwhile would find its revision applied.
                ledger.mark_rollback_under_way_sql(target),
            )
        with self.report.step("restore in batches"), db.session_setting("statement_timeout", "0"):
            try:
                in_paced_batches(
                    db,
                    batches,
                    lambda _: restore.restore_batch_sql(target, settings.restore_batch_rows),
                    "restored",
                )
            except DBAPIError as error:
                raise as_abort(error) from None

    def _rebuild(
        self,
        db: Database,
        target: UniqueTarget,
        detail: dict[str, Any],
        build_as: str,
        in_place: bool = False,
    ) -> None:
        """Build `detail`'s unique on `target`'s table concurrently as `build_as`, or
        (downgrade_rebuild) inside the final transaction under its own name; its comment and
        constraint follow in the final transaction. `in_place`: the unique is still there
        until the final transaction drops it (a partition's, attached to the constraint)."""
        name, constraint = detail["index_name"], detail.get("constraint_name")
        if constraint and not in_place and indexes.constraint_exists(db, target, constraint):
            return
        if self.build_in_transaction:
            # The constraint is dropped first in that transaction, which frees its name.
            if name != target.constraint_name and indexes.index_is_valid(db, target, name) is False:
                indexes.drop_index(db, target, name)
            self.in_transaction.append(indexes.if_not_exists(detail["definition"]))
        else:
            definition = detail["definition"]
            if build_as != name:
                definition = indexes.renamed(definition, name, build_as)
            if not indexes.index_is_valid(db, target, build_as):
                self.prebuilt.append((target, build_as))
            indexes.create_index_concurrently(db, target, build_as, definition)
            if build_as != name:
                self.in_transaction.append(indexes.rename_index_sql(target, build_as, name))
        if detail.get("comment") is not None:
            self.in_transaction.append(
                indexes.set_index_comment_sql(target, name, detail["comment"])
            )
        if constraint:
            self.in_transaction.append(
                indexes.add_constraint_using_index_sql(
                    # Ledgers written before deferrals were recorded have none.
                    target,
                    constraint,
                    name,
                    detail.get("deferral") or "",
                )
            )

    def _rebuild_in_place(self, db: Database, target: UniqueTarget, detail: dict[str, Any]) -> None:
        """A unique whose name the constraint holds until the final transaction (the index the
        upgrade promoted, a partition's constraint it adopted): built under a temporary name,
        renamed once the constraint is gone; under its own name when it is free."""
        same_name = detail["index_name"] == target.constraint_name
        build_as = (
            target.temporary_index_name(detail["index_name"]) if same_name else detail["index_name"]
        )
        self._rebuild(db, target, detail, build_as, in_place=bool(target.partition_of))

    def finish(self, db: Database) -> None:
        """The single transaction: everything, or (on any failure) nothing."""
        target = self.target

        def undo() -> None:
            db.execute(f"LOCK TABLE {target.qualified_table} IN ACCESS EXCLUSIVE MODE")
            for statement in self._undo_constraint_statements():
                db.execute(statement)
            for statement in self.in_transaction:
                db.execute(statement)
            db.execute(restore.restore_sql(target))
            restored = [s.detail for s in ledger.steps(db, target) if s.action == "restored"]
            self.report.fact("rows restored", sum(detail["rows"] for detail in restored))
            pointed_back = sum(detail["pointed_back"] for detail in restored)
            if pointed_back:
                self.report.fact("pointed back", f"{pointed_back} child rows")
            db.execute(restore.cleanup_sql(target))

        with self.report.step("restore in one transaction"):
            try:
                with_table_lock_retries(db, target, f"undo {target.constraint_name}", undo)
            except DBAPIError as error:
                raise as_abort(error) from None
        self.report.log_summary()

    def _undo_constraint_statements(self) -> list[str]:
        """What the upgrade did to get the constraint, undone: the latest of built, renamed,
        promoted."""
        target = self.target
        for step in reversed(self.steps):
            detail = step.detail
            if step.action == "built":
                return [indexes.drop_target_sql(target)]
            if step.action == "renamed" and target.is_index:
                return [
                    indexes.rename_index_sql(target, target.constraint_name, detail["index_name"])
                ]
            if step.action == "renamed":
                return [
                    indexes.rename_constraint_sql(
                        target, target.constraint_name, detail["constraint_name"]
                    )
                ]
            if step.action == "promoted":
                return [indexes.drop_constraint_sql(target, target.constraint_name)]
        return []

    def compensate(self, db: Database) -> None:
        for on, name in reversed(self.prebuilt):
            try:
                indexes.drop_index(db, on, name)
            except (DBAPIError, MigrationAbort) as error:
                log.warning("could not drop %s, built for the failed downgrade: %s", name, error)


# What the upgrade did to get the constraint, and what it did beside it that the downgrade
# rebuilds: the latest of these decides how the constraint is undone.
_CONSTRAINT_STEPS = ("built", "renamed", "promoted")
REBUILT_STEPS = ("dropped_redundant", "promoted", "adopted")


def restores_in_batches(
    steps: list[ledger.Step], archived_rows: int, settings: MigrationSettings
) -> bool:
    """The one decision, for the downgrade and preflight alike: the archived rows come back in
    batches, after the constraint is dropped on its own, when the upgrade built that constraint
    (no unique to rebuild beside it) and they are more than `restore_batch_rows`."""
    made = next((s.action for s in reversed(steps) if s.action in _CONSTRAINT_STEPS), None)
    return (
        made == "built"
        and not any(s.action in REBUILT_STEPS for s in steps)
        and archived_rows > settings.restore_batch_rows
    )


def partition_rebuilds(
    target: UniqueTarget, steps: list[ledger.Step]
) -> list[tuple[UniqueTarget, ledger.Step]]:
    """Every partition's unique that an upgrade on a partitioned table adopted (its own
    constraint, attached: the drop of the partitioned table's constraint takes it along),
    promoted or dropped, with the partition's target, in the order recorded."""
    rebuilt = []
    for step in steps:
        if step.partition is None or step.action not in REBUILT_STEPS:
            continue
        name = step.detail.get("constraint_name") or step.detail["index_name"]
        rebuilt.append((target.for_partition(*step.partition, name), step))
    return rebuilt


def run_undo(
    target: UniqueTarget,
    online: Callable[[], AbstractContextManager[Database]],
    in_transaction: Callable[[], Database],
) -> None:
    """The downgrade's order of events; `online` gives an autocommit session, `in_transaction`
    the session of the transaction that moves the revision back."""
    undo = Undo(target)
    with online() as db:
        if not undo.prepare(db):
            return
    try:
        undo.finish(in_transaction())
    except BaseException:
        with online() as db:
            undo.compensate(db)
        raise
