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

import asyncio
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar, cast

from sqlalchemy import Connection, Engine, create_engine, event, pool, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError

from alembic_lossless_unique.ddl.sqltext import ident
from alembic_lossless_unique.runtime import drivers
from alembic_lossless_unique.runtime.errors import MigrationAbort

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

DEFAULT_APP_SCHEMA = "public"
POOLER_CHECK = "alembic (pooler check)"
R = TypeVar("R")


def safe_search_path(app_schema: str) -> str:
    """The app's schema, then pg_temp last. pg_catalog, not named, is searched first of all:
    nothing can shadow a built-in; and what a revision creates unqualified (as autogenerate
    writes it) goes to the app's schema."""
    return f"{ident(app_schema)}, pg_temp"


def plain_engine(url: URL, application_name: str) -> Engine:
    """One connection per use, named so DBAs can find it in pg_stat_activity, and nothing else
    set on it. For an async driver, the sync face of an async engine: usable only where its
    calls are awaited for it, inside run_sync (`connected` serves both kinds anywhere)."""
    if drivers.is_async(url):
        return _async_engine(url, application_name).sync_engine
    url, connect_args = drivers.engine_arguments(url, application_name)
    return create_engine(url, poolclass=pool.NullPool, connect_args=connect_args)


def _async_engine(url: URL, application_name: str) -> "AsyncEngine":
    from sqlalchemy.ext.asyncio import create_async_engine  # needs greenlet: only when asked

    url, connect_args = drivers.engine_arguments(url, application_name)
    return create_async_engine(url, poolclass=pool.NullPool, connect_args=connect_args)


def engine_for(url: URL, application_name: str, app_schema: str = DEFAULT_APP_SCHEMA) -> Engine:
    """plain_engine with the migrator's session: a safe search_path from its first statement
    on, and every connection reset when it goes back."""
    engine = plain_engine(url, application_name)
    secure(engine, app_schema)
    return engine


def connected(
    url: URL, application_name: str, work: Callable[[Connection], R], *, app_schema: str | None
) -> R:
    """`work(connection)` on a new connection: with the migrator's session for `app_schema`, or
    a plain one for None. With an async driver the work runs through run_sync, as Alembic's
    async env.py template runs its migrations: the same code, every call awaited for it, and
    `connection.engine.connect()` inside it opens another connection the same way."""
    if drivers.is_async(url):
        return asyncio.run(_connected_async(url, application_name, work, app_schema))
    engine = plain_engine(url, application_name)
    if app_schema is not None:
        secure(engine, app_schema)
    try:
        with engine.connect() as connection:  # reset (DISCARD ALL) when it goes back
            return work(connection)
    finally:
        engine.dispose()


async def _connected_async(
    url: URL, application_name: str, work: Callable[[Connection], R], app_schema: str | None
) -> R:
    engine = _async_engine(url, application_name)
    if app_schema is not None:
        secure(engine.sync_engine, app_schema)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(work)
    finally:
        await engine.dispose()


def secure(
    engine: Engine, app_schema: str = DEFAULT_APP_SCHEMA, *, search_path: str | None = None
) -> None:
    """Set the safe search_path (or `search_path`, as SHOW prints it) on every new connection
    of `engine`, before SQLAlchemy's own first queries (insert=True puts this listener ahead of
    the dialect's), and tell SQLAlchemy which schema the app's unqualified tables live in."""
    # No statement_timeout either: the migration bounds its waits with lock_timeout, and a
    # role's statement_timeout must not cancel a step half way (or its bookkeeping, on a busy
    # server); DISCARD ALL takes both settings away again.
    settings = (
        f"SET search_path = {search_path or safe_search_path(app_schema)}",
        "SET statement_timeout = 0",
    )

    driver = engine.url.get_driver_name()

    def set_safe_search_path(dbapi_connection: Any, *_: Any) -> None:
        _run(driver, dbapi_connection, *settings)

    def discard_session_state(dbapi_connection: Any, *_: Any) -> None:
        if not _closed(dbapi_connection):
            _run(driver, dbapi_connection, "DISCARD ALL")

    event.listen(engine, "connect", set_safe_search_path, insert=True)
    # A pooled connection is set again on every checkout: DISCARD ALL undid it on the return.
    event.listen(engine, "checkout", set_safe_search_path)
    event.listen(engine, "reset", discard_session_state)
    engine.dialect.default_schema_name = app_schema


def side_connections(connection: Connection) -> Callable[[Callable[[Connection], None]], None]:
    """Called in the migration's thread: a function that, called in another thread (a progress
    watcher's), runs `work(side)` there on a second connection to the same database with the
    same session as `connection`. An async engine awaits on the event loop of the migration's
    thread, which the other thread cannot use: it gets a loop of its own, and an engine of its
    own on it."""
    engine = connection.engine
    if not connection.dialect.is_async:

        def run_sync(work: Callable[[Connection], None]) -> None:
            with engine.connect() as side:
                work(side)

        return run_sync
    name, search_path = connection.execute(
        text(
            "SELECT pg_catalog.current_setting('application_name'),"
            " pg_catalog.current_setting('search_path')"
        )
    ).one()

    async def on_own_loop(work: Callable[[Connection], None]) -> None:
        side_engine = _async_engine(engine.url, name)
        secure(side_engine.sync_engine, search_path=search_path)
        try:
            async with side_engine.connect() as side:
                await side.run_sync(work)
        finally:
            await side_engine.dispose()

    return lambda work: asyncio.run(on_own_loop(work))


def _closed(dbapi_connection: Any) -> bool:
    closed = getattr(dbapi_connection, "closed", False)
    return bool(closed() if callable(closed) else closed)


def _run(driver: str, dbapi_connection: Any, *statements: str) -> None:
    """Statements on the driver's connection, one at a time, outside any transaction."""
    for statement in statements:
        drivers.run_bare(driver, dbapi_connection, statement)


def refuse_transaction_pooler(url: URL, *, in_run_sync: bool = False) -> None:
    """Two connections, transaction-scoped state only, so that the probe itself leaves nothing
    behind on a pooled server connection: in session mode (or directly) each client keeps its
    own server backend; behind a transaction pooler the second client's transaction is handed
    the backend the first one just used, or the first one's next statement another backend."""
    if transaction_pooled(url, in_run_sync=in_run_sync):
        port = f" (port {url.port})" if url.port else ""
        raise MigrationAbort(
            f"DATABASE_URL{port} goes through a transaction-mode connection pooler: session"
            " settings and the migrator's lock would leak into the app's pooled connections, and"
            " two migrators would not be serialized; nothing was changed. Use the direct"
            " connection or the session pooler (Supabase: port 5432, not 6543)"
        )


def transaction_pooled(url: URL, *, in_run_sync: bool = False, rounds: int = 3) -> bool:
    """See refuse_transaction_pooler. Through the driver's bare connections, which SQLAlchemy
    neither initialises nor resets: no statement but the probe's own, schema-qualified, runs
    under the role's search_path, and nothing of the migrator's session (no SET, no DISCARD
    ALL) reaches a pooled server connection. `in_run_sync`: the caller is already inside an
    async connection's run_sync, where an async driver's calls are awaited for it."""
    if drivers.is_async(url) and not in_run_sync:
        from sqlalchemy.util import greenlet_spawn  # needs greenlet: only when asked

        return asyncio.run(greenlet_spawn(transaction_pooled, url, in_run_sync=True))
    engine = plain_engine(url, POOLER_CHECK)
    connect_args = {
        **drivers.engine_arguments(url, POOLER_CHECK)[1],
        **drivers.bare_connect_arguments(url),
    }
    try:
        return _probe(engine, connect_args, rounds)
    except engine.dialect.loaded_dbapi.Error as error:
        if drivers.sqlstate(error) == drivers.PREPARED_STATEMENT_GONE:
            return True  # the pooler sent the statement's next round trip to another backend
        # as SQLAlchemy's own would be raised
        raise DBAPIError.instance(None, None, error, engine.dialect.loaded_dbapi.Error) from None
    finally:
        engine.dispose()


def _probe(engine: Engine, connect_args: dict[str, Any], rounds: int) -> bool:
    driver = engine.url.get_driver_name()
    cargs, cparams = engine.dialect.create_connect_args(engine.url)
    cparams.update(connect_args)

    def backend(dbapi_connection: Any) -> int:
        return cast(
            int, drivers.fetch_bare(driver, dbapi_connection, "SELECT pg_catalog.pg_backend_pid()")
        )

    first = engine.dialect.connect(*cargs, **cparams)
    try:
        second = engine.dialect.connect(*cargs, **cparams)
        try:
            for connection in (first, second):
                connection.autocommit = True
            for _ in range(rounds):
                before = backend(first)
                drivers.run_bare(driver, second, "BEGIN")  # pins a backend until the ROLLBACK
                try:
                    seen_by_second = backend(second)
                    after = backend(first)
                finally:
                    drivers.run_bare(driver, second, "ROLLBACK")
                if seen_by_second == before or after != before:
                    return True
            return False
        finally:
            second.close()
    finally:
        first.close()


@contextmanager
def kept_session(connection: Connection, app_schema: str, application_name: str) -> Iterator[None]:
    """On a connection someone else made (Alembic's async template, pytest-alembic, an
    embedding program): the safe search_path and the migrator's application_name for the
    migration, then theirs again."""
    wanted = {"search_path": safe_search_path(app_schema), "application_name": application_name}
    previous = {  # current_setting of a setting that exists is never NULL
        name: cast(
            str,
            connection.execute(
                text("SELECT pg_catalog.current_setting(:name)"), {"name": name}
            ).scalar(),
        )
        for name in wanted
    }
    _set(connection, wanted)
    try:
        yield
    finally:
        if not connection.closed and not connection.invalidated:
            _set(connection, previous)


def _set(connection: Connection, settings: dict[str, str]) -> None:
    for name, value in settings.items():
        connection.execute(
            text("SELECT pg_catalog.set_config(:name, :value, false)"),
            {"name": name, "value": value},
        )
