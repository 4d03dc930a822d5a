"""The migrator's session, in one of two modes.

Online (the normal `alembic upgrade`): autocommit. CREATE/DROP INDEX CONCURRENTLY cannot run
inside a transaction, and a migrator idling inside one would make its own concurrent build wait
for it; so each step that must be atomic opens its own short transaction.

Inside a caller's transaction (a program or test that hands alembic a connection already in a
transaction): every step is a savepoint, and indexes are built and dropped without
CONCURRENTLY, since nothing can be committed early.
"""

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeAlias

from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, text
from sqlalchemy.engine import Row

from alembic_lossless_unique.runtime.settings import MigrationSettings

# A row of whatever columns a query selects (SQLAlchemy types a Row by its columns' types).
AnyRow: TypeAlias = Row[*tuple[Any, ...]]


class Database:
    def __init__(
        self, connection: Connection, settings: MigrationSettings, *, concurrent: bool = True
    ) -> None:
        self.connection = connection
        self.settings = settings
        # False inside a caller's transaction: no autocommit, so no CONCURRENTLY.
        self.concurrent = concurrent

    def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> Any:
        if not params:
            # A statement without parameters may carry a user's SQL (an index expression, a
            # predicate) with a colon that text() would take for a parameter: kept verbatim.
            sql = sql.replace(":", "\\:")
        return self.connection.execute(text(sql), dict(params or {}))

    def scalar(self, sql: str, params: Mapping[str, Any] | None = None) -> Any:
        return self.execute(sql, params).scalar()

    def rows(self, sql: str, params: Mapping[str, Any] | None = None) -> list[AnyRow]:
        return list(self.execute(sql, params))

    def relation_exists(self, qualified_name: str) -> bool:
        return bool(
            self.scalar(
                "SELECT pg_catalog.to_regclass(:name) IS NOT NULL", {"name": qualified_name}
            )
        )

    @contextmanager
    def transaction(self) -> Iterator[None]:
        begin, commit, rollback = (
            ("BEGIN", "COMMIT", "ROLLBACK")
            if self.concurrent
            else ("SAVEPOINT step", "RELEASE SAVEPOINT step", "ROLLBACK TO SAVEPOINT step")
        )
        self.execute(begin)
        try:
            yield
        except BaseException:
            if not self.connection.closed:
                self.execute(rollback)
            raise
        self.execute(commit)

    @contextmanager
    def trial(self) -> Iterator[None]:
        """A transaction (or savepoint) that is always rolled back: try something, keep nothing."""
        begin, rollback = (
            ("BEGIN", "ROLLBACK")
            if self.concurrent
            else ("SAVEPOINT trial", "ROLLBACK TO SAVEPOINT trial")
        )
        self.execute(begin)
        try:
            yield
        finally:
            if not self.connection.closed:
                self.execute(rollback)

    @contextmanager
    def session_setting(self, name: str, value: str) -> Iterator[None]:
        previous = self.scalar("SELECT pg_catalog.current_setting(:name)", {"name": name})
        self.scalar(
            "SELECT pg_catalog.set_config(:name, :value, false)", {"name": name, "value": value}
        )
        try:
            yield
        finally:
            if not self.connection.closed:
                self.scalar(
                    "SELECT pg_catalog.set_config(:name, :value, false)",
                    {"name": name, "value": previous},
                )


@contextmanager
def autocommit_database(context: MigrationContext) -> Iterator[Database]:
    """Commit what alembic has begun and hand the revision an autocommit session, or, when the
    caller holds the transaction (pytest-alembic, a program that passes its own connection), a
    session that works inside it."""
    assert context.connection is not None
    settings = MigrationSettings.from_context(context)
    if in_callers_transaction(context):
        yield Database(context.connection, settings, concurrent=False)
        return
    with context.autocommit_block():
        assert context.connection is not None
        yield Database(context.connection, settings)


def in_callers_transaction(context: MigrationContext) -> bool:
    """Alembic notes, when env.py configures it, whether the connection it was given was already
    in a transaction; nothing can be committed early then."""
    return bool(getattr(context, "_in_external_transaction", False))


def transactional_database(context: MigrationContext) -> Database:
    """The revision's own transaction, which alembic commits with the version change; every
    step of ours in it is a savepoint."""
    assert context.connection is not None
    return Database(context.connection, MigrationSettings.from_context(context), concurrent=False)
