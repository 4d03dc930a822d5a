"""The migrator's session: safe before its first query, alone, and clean when it leaves.

- No transaction-mode pooler. Behind one (PgBouncer pool_mode=transaction, Supabase's port
  6543) every transaction may run on another server connection: session settings and the
  migrator's advisory lock would stay with whichever connection they landed on, for the app to
  inherit, and two migrators would not be serialized. A probe with two connections, using
  transaction-scoped state only, finds one before anything is set; the run then refuses.
- A fixed search_path: pg_catalog first (implicitly, pg_dump's rule), then the app's schema (so
  that autogenerate sees the app's tables, the app's own triggers find theirs and a revision's
  unqualified CREATE lands there), nothing from the role's own setting. With the role's
  search_path, a schema an unprivileged role can write (`evil, public`) would have its tables,
  functions and operators (an `alembic_version` with a trigger, a `now()`) run with the
  migrator's privileges. It is set as the connection's first
  statement, before the driver's and SQLAlchemy's own queries; everything this package runs is
  schema-qualified, so no name it uses resolves outside pg_catalog.
- Reset on the way out (DISCARD ALL, whenever a connection goes back to its pool: the
  migrator's, its progress watcher's), so a session-mode pooler hands the next client a clean
  connection even when it does not reset connections itself.
"""

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg2
from sqlalchemy import Connection, Engine, create_engine, event, pool, text
from sqlalchemy.engine import URL

from alembic_lossless_unique.errors import MigrationAbort
from alembic_lossless_unique.sqltext import ident

DEFAULT_APP_SCHEMA = "public"


def safe_search_path(app_schema: str) -> str:
    """The app's schema, then pg_temp last. pg_catalog, not named, is searched first of all:
    nothing can shadow a built-in; and what a revision creates unqualified (as autogenerate
    writes it) goes to the app's schema."""
    return f"{ident(app_schema)}, pg_temp"


def engine_for(url: URL, application_name: str, app_schema: str = DEFAULT_APP_SCHEMA) -> Engine:
    """One connection per use, named so DBAs can find it in pg_stat_activity, with a safe
    search_path from its first statement on."""
    engine = create_engine(
        url,
        poolclass=pool.NullPool,
        connect_args={"application_name": application_name, "connect_timeout": 10},
    )
    secure(engine, app_schema)
    return engine


def secure(engine: Engine, app_schema: str = DEFAULT_APP_SCHEMA) -> None:
    """Set the safe search_path on every new connection of `engine`, before SQLAlchemy's own
    first queries (insert=True puts this listener ahead of the dialect's), and tell SQLAlchemy
    which schema the app's unqualified tables live in."""
    # No statement_timeout either: the migration bounds its waits with lock_timeout, and a
    # role's statement_timeout must not cancel a step half way (or its bookkeeping, on a busy
    # server); DISCARD ALL takes both settings away again.
    settings = f"SET search_path = {safe_search_path(app_schema)}; SET statement_timeout = 0"

    def set_safe_search_path(dbapi_connection, *_) -> None:
        _run(dbapi_connection, settings)

    def discard_session_state(dbapi_connection, *_) -> None:
        if not dbapi_connection.closed:
            _run(dbapi_connection, "DISCARD ALL")

    event.listen(engine, "connect", set_safe_search_path, insert=True)
    # A pooled connection is set again on every checkout: DISCARD ALL undid it on the return.
    event.listen(engine, "checkout", set_safe_search_path)
    event.listen(engine, "reset", discard_session_state)
    engine.dialect.default_schema_name = app_schema


def _run(dbapi_connection, statement: str) -> None:
    """One statement on the driver's connection, outside any transaction."""
    autocommit = dbapi_connection.autocommit
    dbapi_connection.autocommit = True
    try:
        with dbapi_connection.cursor() as cursor:
            cursor.execute(statement)
    finally:
        dbapi_connection.autocommit = autocommit


def refuse_transaction_pooler(url: URL) -> None:
    """Two connections, transaction-scoped state only, so that the probe itself leaves nothing
    behind on a pooled server connection: in session mode (or directly) each client keeps its
    own server backend; behind a transaction pooler the second client's transaction is handed
    the backend the first one just used, or the first one's next statement another backend."""
    if transaction_pooled(url):
        port = f" (port {url.port})" if url.port else ""
        raise MigrationAbort(
            f"DATABASE_URL{port} goes through a transaction-mode connection pooler: session"
            " settings and the migrator's lock would leak into the app's pooled connections, and"
            " two migrators would not be serialized; nothing was changed. Use the direct"
            " connection or the session pooler (Supabase: port 5432, not 6543)"
        )


def transaction_pooled(url: URL, rounds: int = 3) -> bool:
    params = {
        **url.translate_connect_args(username="user", database="dbname"),
        **{key: str(value) for key, value in url.query.items()},
        "application_name": "alembic (pooler check)",
        "connect_timeout": 10,
    }
    first = psycopg2.connect(**params)
    try:
        second = psycopg2.connect(**params)
        try:
            first.autocommit = True
            for _ in range(rounds):
                before = _backend(first)
                seen_by_second = _backend(second)  # opens a transaction: pins a backend
                after = _backend(first)
                second.rollback()
                if seen_by_second == before or after != before:
                    return True
            return False
        finally:
            second.close()
    finally:
        first.close()


def _backend(connection) -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_catalog.pg_backend_pid()")
        return cursor.fetchone()[0]


@contextmanager
def kept_search_path(connection: Connection, app_schema: str) -> Iterator[None]:
    """On a connection someone else made (pytest-alembic, an embedding program): the safe
    search_path for the migration, then theirs again."""
    previous = connection.execute(text("SHOW search_path")).scalar()
    connection.execute(text(f"SET search_path = {safe_search_path(app_schema)}"))
    try:
        yield
    finally:
        if not connection.closed and not connection.invalidated:
            connection.execute(
                text("SELECT pg_catalog.set_config('search_path', :path, false)"),
                {"path": previous},
            )
