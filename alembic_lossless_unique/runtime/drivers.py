"""What differs between the drivers SQLAlchemy speaks to PostgreSQL with, written in one place.

The library imports no driver: SQLAlchemy loads the one the URL names (psycopg2, psycopg 3,
asyncpg, or psycopg's async mode). Only these few things differ between them, and only here:

- which driver a URL without one gets (the first installed, in SQLAlchemy's order of preference);
- how a connection is named and given a connect timeout (libpq keywords, or asyncpg's own);
- where an error keeps its SQLSTATE and the server's primary message;
- how a statement runs on a bare driver connection, outside SQLAlchemy, leaving nothing
  prepared on the server (the session settings, the pooler probe).
"""

import importlib.util
import sys
from typing import Any

from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError

# A URL that names no driver gets the first of these that is installed.
DEFAULT_DRIVERS = ("psycopg2", "psycopg", "asyncpg")
# The module each driver name is imported as.
_MODULES = {
    "psycopg2": "psycopg2",
    "psycopg": "psycopg",
    "psycopg_async": "psycopg",
    "asyncpg": "asyncpg",
}
ASYNC_DRIVERS = ("asyncpg", "psycopg_async")
# What to pip install for each.
_PACKAGES = {"psycopg2": "psycopg2-binary", "psycopg": "'psycopg[binary]'", "asyncpg": "asyncpg"}
CONNECT_TIMEOUT_SECONDS = 10
# Through a transaction-mode pooler a statement prepared in one round trip can be sent to
# another server connection in the next, which has no such statement.
PREPARED_STATEMENT_GONE = "26000"


class DriverMissing(Exception):
    """No PostgreSQL driver is installed, or not the one the URL names."""


def installed(driver: str) -> bool:
    return importlib.util.find_spec(_MODULES.get(driver, driver)) is not None


def default_driver() -> str:
    for driver in DEFAULT_DRIVERS:
        if installed(driver):
            return driver
    raise DriverMissing(
        "no PostgreSQL driver is installed: pip install 'alembic-lossless-unique[psycopg2]'"
        " (or [psycopg] or [asyncpg])"
    )


def require(driver: str) -> None:
    if driver not in _MODULES:
        raise DriverMissing(
            f"DATABASE_URL names the {driver} driver; this package runs on"
            f" {', '.join(_MODULES)}: postgresql+psycopg2://..., for example"
        )
    if not installed(driver):
        raise DriverMissing(
            f"DATABASE_URL names the {driver} driver, which is not installed:"
            f" pip install {_PACKAGES[_MODULES[driver]]}"
        )
    if driver in ASYNC_DRIVERS and not installed("greenlet"):
        raise DriverMissing(
            f"DATABASE_URL names the async {driver} driver, and SQLAlchemy runs async drivers"
            " through greenlet, which is not installed: pip install 'sqlalchemy[asyncio]'"
        )


def is_async(url: URL) -> bool:
    return url.get_driver_name() in ASYNC_DRIVERS


# libpq keywords that asyncpg takes under another name or inside server_settings.
_ASYNCPG_SERVER_SETTINGS = ("application_name", "options")


def engine_arguments(
    url: URL, application_name: str, connect_timeout: int = CONNECT_TIMEOUT_SECONDS
) -> tuple[URL, dict[str, Any]]:
    """The URL and connect_args for create_engine: the connection named `application_name`
    (as DBAs find it in pg_stat_activity) and given up on after `connect_timeout` seconds."""
    if url.get_driver_name() != "asyncpg":  # libpq underneath: its own keywords
        return url, {"application_name": application_name, "connect_timeout": connect_timeout}
    query = dict(url.query)
    server_settings = {"application_name": application_name}
    for keyword in _ASYNCPG_SERVER_SETTINGS:
        if keyword in query and keyword != "application_name":
            server_settings[keyword] = str(query.pop(keyword))
    query.pop("application_name", None)
    connect_args: dict[str, Any] = {
        "server_settings": server_settings,
        "timeout": float(str(query.pop("connect_timeout", connect_timeout))),
    }
    if "sslmode" in query:  # asyncpg takes libpq's mode names as `ssl`
        connect_args["ssl"] = str(query.pop("sslmode"))
    return url.set(query=query), connect_args


def bare_connect_arguments(url: URL) -> dict[str, Any]:
    """What a bare connection (the pooler probe's) is made with besides engine_arguments: for
    asyncpg no statement cache, so that its queries are unnamed statements, which leave nothing
    behind on a server connection a pooler hands to the next client."""
    return {"statement_cache_size": 0} if url.get_driver_name() == "asyncpg" else {}


def run_bare(driver: str, dbapi_connection: Any, statement: str) -> None:
    """`statement` as it is, outside any transaction of the driver's own (a BEGIN or SET is the
    server's to see): asyncpg's simple query protocol, which prepares nothing (SQLAlchemy's
    adapter would prepare a named statement, and a prepared statement holds one command); the
    libpq drivers' cursor under autocommit."""
    if driver == "asyncpg":
        _awaited(dbapi_connection.driver_connection.execute(statement))
        return
    autocommit = dbapi_connection.autocommit
    if not autocommit:
        dbapi_connection.autocommit = True
    try:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(statement)
        finally:
            cursor.close()
    finally:
        if not autocommit:
            dbapi_connection.autocommit = False


def fetch_bare(driver: str, dbapi_connection: Any, query: str) -> Any:
    """The first column of the first row of `query`, on a bare connection in autocommit.
    asyncpg: its own fetchval on a connection made with bare_connect_arguments, an unnamed
    statement (SQLAlchemy's adapter prepares a named one, and asyncpg before 0.30 names it even
    with the statement cache off)."""
    if driver == "asyncpg":
        return _awaited(dbapi_connection.driver_connection.fetchval(query))
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(query)
        return cursor.fetchone()[0]
    finally:
        cursor.close()


def _awaited(awaitable: Any) -> Any:
    from sqlalchemy.util import await_only  # the greenlet bridge: only for async drivers

    return await_only(awaitable)


def database_errors() -> tuple[type[BaseException], ...]:
    """What a failed connection or statement raises: SQLAlchemy's wrapper, an OSError (a
    refused connection), and, when asyncpg is in use, its own errors, which SQLAlchemy before
    2.0.x (seen with 2.0.0) raises from connect unwrapped. Looked up, never imported."""
    found: list[type[BaseException]] = [DBAPIError, OSError]
    asyncpg = sys.modules.get("asyncpg")
    if asyncpg is not None:
        found += [asyncpg.PostgresError, asyncpg.InterfaceError]
    return tuple(found)


def original(error: BaseException) -> BaseException:
    """The driver's own exception inside SQLAlchemy's wrapper, and inside SQLAlchemy's asyncpg
    adapter the asyncpg exception itself."""
    inner = getattr(error, "orig", None) or error
    if type(inner).__module__.startswith("sqlalchemy.") and inner.__cause__ is not None:
        return inner.__cause__
    return inner


def sqlstate(error: BaseException) -> str | None:
    """The SQLSTATE of a database error (psycopg2: pgcode; psycopg 3 and asyncpg: sqlstate)."""
    for candidate in (getattr(error, "orig", None), original(error)):
        code: str | None = getattr(candidate, "sqlstate", None) or getattr(
            candidate, "pgcode", None
        )
        if code:
            return code
    return None


def primary_message(error: BaseException) -> str:
    """The server's primary message, without the driver's decoration."""
    inner = original(error)
    diag = getattr(inner, "diag", None)  # psycopg2 and psycopg 3
    message = getattr(diag, "message_primary", None) or getattr(inner, "message", None)
    if isinstance(message, str) and message:
        return message
    return first_line(str(inner))


def first_line(text: str) -> str:
    """The first line of a driver's message; asyncpg's adapter prefixes the exception's class."""
    line = next(iter(text.strip().splitlines()), "")
    if line.startswith("<class '") and ">: " in line:
        line = line.split(">: ", 1)[1]
    return line.strip()
