"""The test infrastructure is what it claims: the PostgreSQL major asked for, client tools that
take it, and a real PgBouncer whose transaction mode hands one client's session state to the
next client (the leak the migration must guard against) while its session mode does not."""

import contextlib
import re
import secrets
import subprocess

import psycopg2
import pytest

from devtools.pgbouncer import DEFAULT_POOL_SIZE
from devtools.postgres_binaries import pg_basebackup, requested_major

LOCK_TIMEOUT = "4321ms"  # not a default anywhere: seeing it means someone's SET leaked
ADVISORY_KEY = 424242

HELD_ADVISORY_LOCKS = (
    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
)


def connect(url) -> psycopg2.extensions.connection:
    """A client connection in autocommit: every statement is its own transaction, so in
    transaction mode PgBouncer takes the server connection back after each one."""
    connection = psycopg2.connect(
        host=url.host,
        port=url.port,
        user=url.username,
        password=url.password,
        dbname=url.database,
        connect_timeout=10,
    )
    connection.autocommit = True
    return connection


def client(url) -> contextlib.closing:
    return contextlib.closing(connect(url))


def scalar(connection, sql: str):
    with connection.cursor() as cursor:
        cursor.execute(sql)
        return cursor.fetchone()[0]


def leave_session_state(connection) -> int:
    """SET, an application_name and a session advisory lock, left behind; the backend's pid."""
    scalar(connection, f"SELECT set_config('lock_timeout', '{LOCK_TIMEOUT}', false)")
    scalar(connection, "SELECT set_config('application_name', 'leaky-client', false)")
    scalar(connection, f"SELECT pg_advisory_lock({ADVISORY_KEY})")
    return scalar(connection, "SELECT pg_backend_pid()")


def session_state(connection) -> tuple[str, str, int]:
    return (
        scalar(connection, "SHOW lock_timeout"),
        scalar(connection, "SHOW application_name"),
        scalar(connection, HELD_ADVISORY_LOCKS),
    )


LEAKED = (LOCK_TIMEOUT, "leaky-client", 1)
CLEAN = ("0", "", 0)  # PostgreSQL's defaults, and no advisory lock


def test_server_is_the_major_asked_for(pg_server, pg_major):
    with client(pg_server.url()) as connection:
        version_num = int(scalar(connection, "SHOW server_version_num"))
    assert version_num // 10000 == pg_major
    asked = requested_major()
    if asked is not None:  # scripts/test.sh always asks
        assert pg_major == asked


@pytest.mark.pg18
def test_the_client_tools_take_this_server(pg_server, pg_major):
    """pg_dump and pg_basebackup refuse a server newer than themselves (pg_dump 17 against 18:
    "server version mismatch"), and the tests compare schemas with pg_dump and make standbys
    with pg_basebackup: each server gets client tools of its major or newer."""
    tools = [pg_server.bin_dir / "pg_dump", pg_server.bin_dir / "psql"]
    for tool in [*tools, pg_basebackup(pg_server.bin_dir)]:
        version = subprocess.run(
            [str(tool), "--version"], capture_output=True, text=True, check=True
        ).stdout
        assert int(re.search(r"\(PostgreSQL\) (\d+)", version).group(1)) >= pg_major, version
    dump = subprocess.run(
        [str(tools[0]), "--schema-only", pg_server.url_string().replace("+psycopg2", "")],
        capture_output=True,
        text=True,
    )
    assert dump.returncode == 0, dump.stderr


def test_transaction_mode_hands_session_state_to_the_next_client(pgbouncer_transaction, postgresql):
    url = pgbouncer_transaction.url(postgresql.info.dbname)
    with client(url) as first, client(url) as second:
        first_backend = leave_session_state(first)
        # first is idle, so its server connection is back in the pool: second gets it
        assert scalar(second, "SELECT pg_backend_pid()") == first_backend
        assert session_state(second) == LEAKED


def test_session_mode_keeps_session_state_to_its_client(pgbouncer_session, postgresql):
    url = pgbouncer_session.url(postgresql.info.dbname)
    with client(url) as first:
        first_backend = leave_session_state(first)
        with client(url) as second:
            assert scalar(second, "SELECT pg_backend_pid()") != first_backend
            assert session_state(second) == CLEAN
        assert session_state(first) == LEAKED
    # Both gone. The pool never holds more than DEFAULT_POOL_SIZE server connections, so as many
    # clients at once get all of them, first's among them: PgBouncer ran DISCARD ALL on it.
    with contextlib.ExitStack() as stack:
        clients = [stack.enter_context(client(url)) for _ in range(DEFAULT_POOL_SIZE)]
        backends = [scalar(each, "SELECT pg_backend_pid()") for each in clients]
        assert first_backend in backends
        assert [session_state(each) for each in clients] == [CLEAN] * DEFAULT_POOL_SIZE


@pytest.mark.parametrize("pool_mode", ["session", "transaction"])
def test_a_role_created_after_pgbouncer_started_logs_in(pool_mode, request, postgresql):
    bouncer = request.getfixturevalue(f"pgbouncer_{pool_mode}")  # running before the role exists
    role, password = f"late_{pool_mode}_{secrets.token_hex(4)}", secrets.token_urlsafe(12)
    with postgresql.cursor() as cursor:
        cursor.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
    postgresql.commit()
    try:
        with client(bouncer.url(postgresql.info.dbname, role, password)) as connection:
            assert scalar(connection, "SELECT current_user") == role
        wrong_password = bouncer.url(postgresql.info.dbname, role, password + "x")
        with pytest.raises(psycopg2.OperationalError, match="authentication failed"):
            connect(wrong_password)
    finally:
        with postgresql.cursor() as cursor:
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                (role,),
            )
            cursor.execute(f"DROP ROLE {role}")
        postgresql.commit()
