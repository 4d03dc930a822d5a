"""Which of this package's operations (`ensure_unique_constraint` / `undo_unique_constraint`, the
index form's `ensure_unique_index` / `undo_unique_index`) the pending revisions would call,
found without running them against the database.

Why this way: the revisions are the project's own code, so the only faithful way to know what
they call is to run them, as `alembic upgrade --sql` does: on the command's own
EnvironmentContext (whose `fn` picks the revisions exactly as `alembic upgrade REV` or
`downgrade REV` would), configured for a moment in offline mode (`as_sql=True`) with the heads
the database's version table holds as the starting revision, writing into a throwaway buffer.
Every other operation (`op.create_table`, `op.execute`, a revision's own offline branch) writes
SQL nobody reads; this package's operations see `RECORDER` in the context's options and
record themselves instead of writing their script. Nothing reaches the database: an offline
MigrationContext has no connection. Revisions that work with `alembic upgrade --sql` work here.

The environment context is given back as it was, so `alembic upgrade` can go on with the real
run after `expect_plan` was checked (see expected_plan.py).
"""

import io
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from alembic.runtime.environment import EnvironmentContext
from alembic.runtime.migration import MigrationContext
from alembic.util import CommandError
from sqlalchemy import Connection

from alembic_lossless_unique.operations.target import UniqueTarget
from alembic_lossless_unique.runtime.database_url import one_line
from alembic_lossless_unique.runtime.errors import MigrationAbort

# The option (in MigrationContext.opts) whose list the operations append themselves to.
RECORDER = "alembic_lossless_unique_recorder"
# The config attribute that makes run_migrations answer a plan request (revision_plan.py)
# instead of migrating.
PLAN_REQUEST = "alembic_lossless_unique_plan_request"
DEFAULT_VERSION_TABLE = "alembic_version"
# The operations that upgrade, of each form; the undo_unique_* ones downgrade.
UPGRADE_OPERATIONS = ("ensure_unique_constraint", "ensure_unique_index")


@dataclass(frozen=True)
class PendingOperation:
    revision: str
    # "ensure_unique_constraint", "undo_unique_index", ..., as the revision calls it.
    operation: str
    target: UniqueTarget

    @property
    def is_upgrade(self) -> bool:
        return self.operation in UPGRADE_OPERATIONS


def recorded(context: MigrationContext, name: str, target: UniqueTarget) -> bool:
    """Record the operation `name` on `target` when the revisions are only being read; True
    then, and the operation must do nothing else."""
    recorder: list[tuple[str, UniqueTarget]] | None = context.opts.get(RECORDER)
    if recorder is None:
        return False
    recorder.append((name, target))
    return True


def current_heads(connection: Connection, configure: Mapping[str, Any]) -> tuple[str, ...]:
    """The revisions the database is at, from the version table the project's env.py names
    (`version_table`, `version_table_schema`); none when it does not exist yet. Read-only."""
    migration_context = MigrationContext.configure(
        connection,
        opts={
            "version_table": configure.get("version_table", DEFAULT_VERSION_TABLE),
            "version_table_schema": configure["version_table_schema"],
        },
    )
    return migration_context.get_current_heads()


@dataclass
class Pending:
    # The revisions the command would run, in order.
    revisions: list[str] = field(default_factory=list)
    # This package's operations among what they would run, in order.
    operations: list[PendingOperation] = field(default_factory=list)


def pending_operations(
    context: Any, heads: tuple[str, ...], configure: Mapping[str, Any]
) -> Pending:
    """What the command's revisions (`context`: the env.py's EnvironmentContext) would run from
    `heads`, in the order they would run; nothing is run against the database."""
    calls: list[tuple[str, UniqueTarget]] = []
    found = Pending()

    def after_each_revision(*, step: Any, **_: Any) -> None:
        found.revisions.append(step.up_revision_id)
        found.operations.extend(PendingOperation(step.up_revision_id, name, t) for name, t in calls)
        calls.clear()

    options = {key: value for key, value in configure.items() if key != "on_version_apply"}
    options.update(
        dialect_name="postgresql",
        dialect_opts={"paramstyle": "named"},
        as_sql=True,
        literal_binds=True,
        output_buffer=io.StringIO(),
        starting_rev=heads or None,
        transaction_per_migration=True,
        on_version_apply=[after_each_revision],
    )
    options[RECORDER] = calls
    with given_back(context), quiet_alembic():
        context.configure(**options)
        try:
            context.run_migrations()
        except (MigrationAbort, CommandError):  # said in one line already (an unknown revision)
            raise
        except Exception as error:  # the project's own code, read as `alembic --sql` reads it
            raise MigrationAbort(
                "the pending revisions could not be read without a database (as `alembic"
                f" upgrade --sql` reads them): {type(error).__name__}: {one_line(error, None)}"
            ) from None
    return found


def environment_context(context: Any) -> EnvironmentContext:
    """The EnvironmentContext itself: env.py's `context` is the module alembic.context, which
    forwards every call to the one it holds as `_proxy` (Alembic's ModuleClsProxy)."""
    found = context if isinstance(context, EnvironmentContext) else getattr(context, "_proxy", None)
    if not isinstance(found, EnvironmentContext):
        raise MigrationAbort(
            "alembic.context no longer holds its EnvironmentContext as `_proxy`: this Alembic"
            " release is not supported by the plan"
        )
    return found


@contextmanager
def quiet_alembic() -> Iterator[None]:
    """Alembic's "Running upgrade ..." lines are not said while the revisions are only read."""
    logger = logging.getLogger("alembic.runtime.migration")
    was = logger.disabled
    logger.disabled = True
    try:
        yield
    finally:
        logger.disabled = was


@contextmanager
def given_back(context: Any) -> Iterator[None]:
    """The environment context's options as they were before: configure() updates them in
    place, and is_offline_mode() reads them."""
    options: dict[str, Any] = environment_context(context).context_opts
    saved = dict(options)
    try:
        yield
    finally:
        options.clear()
        options.update(saved)
