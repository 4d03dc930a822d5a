"""An autocommit session on the migrator's connection.

CREATE/DROP INDEX CONCURRENTLY cannot run inside a transaction, and a migrator that idles inside
one would make its own concurrent build wait for it. So the revision runs in autocommit mode and
each step that must be atomic opens its own short transaction.
"""

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, text
from sqlalchemy.engine import Row

from app.migration_helpers.settings import MigrationSettings


class Database:
    def __init__(self, connection: Connection, settings: MigrationSettings) -> None:
        self.connection = connection
        self.settings = settings

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
        self.execute("BEGIN")
        try:
            yield
        except BaseException:
            if not self.connection.closed:
                self.execute("ROLLBACK")
            raise
        self.execute("COMMIT")

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
    """Commit what alembic has begun and hand the revision an autocommit session."""
    with context.autocommit_block():
        assert context.connection is not None
        yield Database(context.connection, MigrationSettings.from_context(context))
