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
from typing import Any

from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, text
from sqlalchemy.engine import Row

from alembic_lossless_unique.settings import MigrationSettings


class Database:
    def __init__(
        self, connection: Connection, settings: MigrationSettings, *, concurrent: bool = True
    ) -> None:
        self.connection = connection
        self.settings = settings
        # False inside a caller's transaction: no autocommit, so no CONCURRENTLY.
        self.concurrent = concurrent

    def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> Any:
        return self.connection.execute(text(sql), dict(params or {}))

    def scalar(self, sql: str, params: Mapping[str, Any] | None = None) -> Any:
        return self.execute(sql, params).scalar()

    def rows(self, sql: str, params: Mapping[str, Any] | None = None) -> list[Row]:
        return list(self.execute(sql, params))

    def quote(self, identifier: str) -> str:
        return self.connection.dialect.identifier_preparer.quote(identifier)

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
    def session_setting(self, name: str, value: str) -> Iterator[None]:
        previous = self.scalar("SELECT current_setting(:name)", {"name": name})
        self.scalar("SELECT set_config(:name, :value, false)", {"name": name, "value": value})
        try:
            yield
        finally:
            if not self.connection.closed:
                self.scalar(
                    "SELECT set_config(:name, :value, false)", {"name": name, "value": previous}
                )


@contextmanager
def autocommit_database(context: MigrationContext) -> Iterator[Database]:
    """Commit what alembic has begun and hand the revision an autocommit session, or, when the
    caller holds the transaction, a session that works inside it."""
    assert context.connection is not None
    settings = MigrationSettings.from_context(context)
    if in_callers_transaction(context):
        yield Database(context.connection, settings, concurrent=False)
        return
    with context.autocommit_block():
        assert context.connection is not None
        yield Database(context.connection, settings)


def in_callers_transaction(context: MigrationContext) -> bool:
    config = context.config
    return bool(config is not None and config.attributes.get(CALLERS_TRANSACTION))


# Set by env.py when the connection it was handed is already inside a transaction.
CALLERS_TRANSACTION = "callers_transaction"
