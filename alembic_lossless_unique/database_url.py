"""DATABASE_URL in, a psycopg2 URL out, or a one-line message saying what to fix.

Shared by alembic/env.py and the preflight report, so both read the same variable the same way.
"""

import os
from collections.abc import Mapping

from sqlalchemy import Engine, create_engine, pool
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError

EXAMPLE = "postgresql://USER:PASSWORD@HOST:5432/DB"


class DatabaseUrlError(Exception):
    """DATABASE_URL is missing or unusable; the message is one line and carries no password."""


def database_url(environ: Mapping[str, str] = os.environ) -> URL:
    raw = environ.get("DATABASE_URL", "").strip()
    if not raw:
        raise DatabaseUrlError(f"DATABASE_URL is not set: export DATABASE_URL={EXAMPLE}")
    if raw.startswith("postgres://"):  # Supabase and Heroku hand out this spelling
        raw = "postgresql://" + raw[len("postgres://") :]
    try:
        url = make_url(raw)
    except (ArgumentError, ValueError):
        raise DatabaseUrlError(f"DATABASE_URL is not a valid URL: expected {EXAMPLE}") from None
    if url.get_backend_name() != "postgresql":
        raise DatabaseUrlError(
            f"DATABASE_URL names a {url.get_backend_name()!r} database; this package migrates"
            f" PostgreSQL: {EXAMPLE}"
        )
    if url.get_driver_name() != "psycopg2":
        # The app may name an async or other driver; migrations always run on psycopg2.
        url = url.set(drivername="postgresql+psycopg2")
    return url


def engine_for(url: URL, application_name: str) -> Engine:
    """One connection per command, named so DBAs can find it in pg_stat_activity."""
    return create_engine(
        url,
        poolclass=pool.NullPool,
        connect_args={"application_name": application_name, "connect_timeout": 10},
    )


def one_line(error: DBAPIError, url: URL | None) -> str:
    """The server's message, first line only, with any password masked."""
    message = str(error.orig).strip().splitlines()[0] if error.orig else str(error)
    if url is not None and url.password:
        message = message.replace(str(url.password), "***")
    return message
