"""An `alembic --sql` script that can always be run again: the version table is created only
when missing, and each revision's part runs only where the version table says it is due.

Alembic writes an offline script for a database it assumes to be at the script's start: per
step a BEGIN, `CREATE TABLE <version table>` when starting from base, the revision's SQL, the
version row's change, and a COMMIT. Run a second time (a retried deploy, a second migration file
with the same content), the CREATE TABLE and the root revision's INSERT fail, and every
revision's SQL would run again. Here, without patching Alembic, for this package's revisions
and any other project's alike:

- after every BEGIN of a step, a block sets the transaction-local setting `DUE_SETTING` to
  'on' or 'off': 'on' when the version table shows the step's revision not applied yet and the
  revisions it follows applied (an upgrade), or the revision applied (a downgrade). It says so
  when a step is skipped;
- the version table's CREATE TABLE gets IF NOT EXISTS;
- every other statement of a step (the version row's INSERT, UPDATE or DELETE, and whatever a
  revision writes through Alembic: op.create_table, op.execute...) is run by a DO block only
  when the setting is 'on'; SQL of this package's own, which checks the setting in each of its
  blocks, is written as it is. A statement a revision writes inside autocommit_block() cannot
  run in a DO block: it is written as it is, and must be harmless when not due (this
  package's concurrent build is: see offline.py).

A revision that commits midway (MigrationContext.autocommit_block) gets the setting again at the
BEGIN that follows, from the version table, which changes only at the step's end.

What this relies on in Alembic (alembic/runtime/migration.py and alembic/ddl/impl.py, 1.x):

- `MigrationContext._migrations_fn(heads, context)` yields the steps, and `run_migrations` runs
  each one inside `begin_transaction(_per_migration=True)`, which in --sql mode calls
  `impl.emit_begin()`; `autocommit_block()` calls `impl.emit_commit()`, then `impl.emit_begin()`;
- every statement of a step, the version table's included (HeadMaintainer, and
  `_version.create()` on the mock connection), goes through `impl._exec(construct)`, which
  writes it with one `impl.static_output(text)`;
- a `RevisionStep` has `is_upgrade`, `revision`, `from_revisions` and `short_log`;
  a revision's `nextrev` holds the revisions that follow it.

`install` checks each of these and fails with one line naming the Alembic behaviour that
changed; `finish` fails the same way when a step ran without its block.
"""

import io
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy.sql.ddl import CreateTable

from alembic_lossless_unique.ddl.sqltext import (
    dollar_quoted,
    executed_when,
    literal,
    literal_array,
    qualified,
)
from alembic_lossless_unique.runtime.errors import MigrationAbort

DUE_SETTING = "alembic_lossless_unique.due"

# Where no hook set it (an env.py of its own), a revision runs as Alembic wrote it: always.
DUE = f"pg_catalog.current_setting({literal(DUE_SETTING)}, true) IS DISTINCT FROM 'off'"


class AlembicChanged(MigrationAbort):
    pass


def _require(condition: bool, what: str) -> None:
    if not condition:
        raise AlembicChanged(
            f"this Alembic no longer {what}, which the re-runnable --sql script relies on"
            " (alembic_lossless_unique.rerunnable): pin alembic to a release that does"
        )


class Rerunnable:
    """The hooks on one MigrationContext in --sql mode; see the module."""

    def __init__(self, migration_context: Any, script_directory: Any) -> None:
        self.context = migration_context
        self.revisions = script_directory.revision_map
        self.impl = migration_context.impl
        self.step: Any = None
        self.first_begin = False
        # Between a COMMIT and the BEGIN that follows (MigrationContext.autocommit_block): a
        # statement there may not run in a transaction, so not in a DO block either.
        self.outside_transaction = False
        self.steps_run = 0
        self.steps_marked = 0
        self.version_table = qualified(
            migration_context.version_table_schema or "public", migration_context.version_table
        )

    def install(self) -> None:
        from alembic.runtime.migration import RevisionStep

        self.revision_step = RevisionStep
        for name in ("emit_begin", "emit_commit", "_exec", "static_output"):
            _require(callable(getattr(self.impl, name, None)), f"has DefaultImpl.{name}")
        _require(callable(getattr(self.context, "_migrations_fn", None)), "has _migrations_fn")
        _require(getattr(self.context, "_version", None) is not None, "has _version")
        self._wrap_steps()
        self._wrap_begin()
        self._wrap_exec()

    def finish(self) -> None:
        _require(
            self.steps_marked >= self.steps_run,
            "opens each step's transaction through impl.emit_begin()",
        )

    # The three hooks.

    def _wrap_steps(self) -> None:
        steps_of: Callable[..., Iterator[Any]] = self.context._migrations_fn

        def steps(heads: Any, context: Any) -> Iterator[Any]:
            for step in steps_of(heads, context):
                is_revision = isinstance(step, self.revision_step)
                for name in ("is_upgrade", "revision", "from_revisions", "short_log"):
                    _require(not is_revision or hasattr(step, name), f"gives RevisionStep.{name}")
                self.step = step if is_revision else None
                self.steps_run += is_revision
                self.first_begin = True
                yield step
            self.step = None

        self.context._migrations_fn = steps

    def _wrap_begin(self) -> None:
        emit_begin, emit_commit = self.impl.emit_begin, self.impl.emit_commit

        def begin() -> None:
            emit_begin()
            self.outside_transaction = False
            if self.step is not None:
                self.impl.static_output(self.due_sql(self.step, announce=self.first_begin))
                self.steps_marked += self.first_begin
                self.first_begin = False

        def commit() -> None:
            emit_commit()
            self.outside_transaction = True

        self.impl.emit_begin, self.impl.emit_commit = begin, commit

    def _wrap_exec(self) -> None:
        execute = self.impl._exec
        version = self.context._version

        def run(construct: Any, *args: Any, **kwargs: Any) -> Any:
            if isinstance(construct, CreateTable) and construct.element is version:
                construct = CreateTable(construct.element, if_not_exists=True)
            elif self.step is not None and not self.outside_transaction:
                statement = self._written(execute, construct)
                # SQL of this package's own checks DUE itself, statement by statement.
                if DUE not in statement:
                    statement = executed_when(DUE, statement)
                self.impl.static_output(statement + self.impl.command_terminator)
                return None
            return execute(construct, *args, **kwargs)

        self.impl._exec = run

    def _written(self, execute: Callable[..., Any], construct: Any) -> str:
        """The statement exactly as Alembic would have written it."""
        written: list[str] = []
        static_output = self.impl.static_output
        self.impl.static_output = written.append
        try:
            execute(construct)
        finally:
            self.impl.static_output = static_output
        _require(len(written) == 1, "writes each statement with one static_output")
        return written[0].strip().removesuffix(self.impl.command_terminator)

    # Due or not, from the version table.

    def _and_after(self, revision: str) -> list[str]:
        """`revision` and every revision that follows it, in any branch."""
        found, pending = [], [revision]
        while pending:
            current = pending.pop()
            if current in found:
                continue
            found.append(current)
            pending.extend(sorted(self.revisions.get_revision(current).nextrev))
        return found

    def due_sql(self, step: Any, *, announce: bool) -> str:
        revision = step.revision.revision
        if step.is_upgrade:
            done = f"applied && {literal_array(self._and_after(revision))}"
            conditions = [f"NOT ({done})"] + [
                f"applied && {literal_array(self._and_after(before))}"
                for before in step.from_revisions
            ]
            skipped = f"CASE WHEN {done} THEN 'already applied' ELSE 'not due yet' END"
        else:
            conditions = [f"applied && {literal_array([revision])}"]
            skipped = "'not applied'"
        notice = (
            f"""
    IF NOT due THEN
        RAISE NOTICE 'skipped %: % (the database is at %)', {literal(step.short_log)},
            {skipped}, coalesce(NULLIF(pg_catalog.array_to_string(applied, ', '), ''), 'base');
    END IF;"""
            if announce
            else ""
        )
        read = f"SELECT pg_catalog.array_agg(version_num::text) FROM {self.version_table}"
        body = f"""
DECLARE
    applied text[];
    due boolean;
BEGIN
    IF pg_catalog.to_regclass({literal(self.version_table)}) IS NOT NULL THEN
        EXECUTE {literal(read)} INTO applied;
    END IF;
    applied := coalesce(applied, ARRAY[]::text[]);
    due := {" AND ".join(conditions)};
    PERFORM pg_catalog.set_config({literal(DUE_SETTING)}, CASE WHEN due THEN 'on' ELSE 'off' END,
                                  true);{notice}
END
"""
        return f"DO {dollar_quoted(body, 'due')};"


def make_rerunnable(migration_context: Any, script_directory: Any) -> Rerunnable:
    hooks = Rerunnable(migration_context, script_directory)
    hooks.install()
    return hooks


@contextmanager
def captured_output(impl: Any) -> Iterator[io.StringIO]:
    """What Alembic writes (impl.output_buffer, through static_output), kept back, so that the
    script's header can say what the script holds."""
    _require(hasattr(impl, "output_buffer"), "writes through DefaultImpl.output_buffer")
    written, output = io.StringIO(), impl.output_buffer
    impl.output_buffer = written
    try:
        yield written
    finally:
        impl.output_buffer = output
