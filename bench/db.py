"""Connections to the benchmark's throwaway server."""

import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg2

from devtools.throwaway_postgres import ThrowawayServer


def conninfo(server: ThrowawayServer, database: str) -> str:
    return f"postgresql://{server.user}@{server.host}:{server.port}/{database}"


def connect(server: ThrowawayServer, database: str, application_name: str = "bench"):
    connection = psycopg2.connect(
        host=server.host,
        port=server.port,
        user=server.user,
        password=server.password,
        dbname=database,
        application_name=application_name,
    )
    # Autocommit: an idle open transaction would stall CREATE INDEX CONCURRENTLY.
    connection.autocommit = True
    return connection


@contextmanager
def session(server: ThrowawayServer, database: str) -> Iterator:
    connection = connect(server, database)
    try:
        with connection.cursor() as cursor:
            yield cursor
    finally:
        connection.close()


def scalar(cursor, sql: str):
    cursor.execute(sql)
    return cursor.fetchone()[0]


def command_env(server: ThrowawayServer, database: str) -> dict[str, str]:
    url = f"postgresql://{server.user}:{server.password}@{server.host}:{server.port}/{database}"
    # Unbuffered: the benchmark timestamps each log line as it arrives.
    return {
        **os.environ,
        "PGPASSWORD": server.password,
        "DATABASE_URL": url,
        "PYTHONUNBUFFERED": "1",
    }


def alembic(*arguments: str) -> list[str]:
    """The command exactly as a user types it; python -m alembic only if it is not on PATH."""
    alembic_bin = shutil.which("alembic")
    program = [alembic_bin] if alembic_bin else [sys.executable, "-m", "alembic"]
    return [*program, *arguments]
