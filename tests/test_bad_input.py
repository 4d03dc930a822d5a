"""Bad input fails fast: one line naming the problem, a non-zero exit, no traceback, no password
in the output, and nothing changed in the database."""

import os
import subprocess
import sys
from urllib.parse import quote

import pytest
from psycopg2.extensions import encrypt_password
from sqlalchemy.engine import make_url

from alembic_lossless_unique.runtime.database_url import database_url
from alembic_lossless_unique.runtime.session import engine_for
from devtools.throwaway_postgres import free_port
from tests.support import BASELINE, HEAD, MIGRATOR, PROJECT_ROOT, AlembicResult, failed_lines

SECRET = "Hunter2-not-to-be-printed"


def alembic(*args: str, database_url: str | None, env: dict[str, str] | None = None):
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "MIGR"))}
    if database_url is not None:
        environ["DATABASE_URL"] = database_url
    result = subprocess.run(
        [sys.executable, "-m", "alembic", *args],
        cwd=PROJECT_ROOT,
        env={**environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    return AlembicResult(result.returncode, result.stdout, result.stderr)


def database_state(harness) -> tuple:
    return harness.schema_dump(), harness.table_rows()


def assert_failed_cleanly(result: AlembicResult, *expected: str, secrets: tuple[str, ...] = ()):
    assert result.returncode != 0
    assert "Traceback" not in result.output
    [failed] = failed_lines(result)
    for fragment in expected:
        assert fragment in failed, result.output
    for secret in secrets:
        assert secret not in result.output


@pytest.fixture
def drifted_at_baseline(harness):
    harness.build_state("drifted")
    harness.upgrade(BASELINE)
    return database_state(harness)


def url_with(harness, **changes) -> str:
    return make_url(harness.url).set(**changes).render_as_string(hide_password=False)


@pytest.mark.parametrize(
    ("make_database_url", "expected"),
    [
        (lambda h: None, "DATABASE_URL is not set"),
        (lambda h: "", "DATABASE_URL is not set"),
        (lambda h: f"not a url {SECRET}", "DATABASE_URL is not a valid URL"),
        (
            lambda h: f"postgresql://postgres:{SECRET}@127.0.0.1:notaport/db",
            "DATABASE_URL is not a valid URL",
        ),
        (lambda h: f"mysql://postgres:{SECRET}@127.0.0.1/db", "names a 'mysql' database"),
        (
            lambda h: url_with(h, port=free_port(), password=SECRET),
            "database error: connection to server at",
        ),
        (lambda h: url_with(h, password=SECRET), "password authentication failed"),
        (lambda h: url_with(h, database="no_such_database"), 'database "no_such_database"'),
    ],
    ids=[
        "unset",
        "empty",
        "not-a-url",
        "bad-port",
        "mysql",
        "closed-port",
        "wrong-password",
        "unknown-database",
    ],
)
def test_bad_database_url(harness, drifted_at_baseline, make_database_url, expected):
    result = alembic("upgrade", "head", database_url=make_database_url(harness))
    assert_failed_cleanly(result, expected, secrets=(SECRET, harness.server.password))
    assert database_state(harness) == drifted_at_baseline


def test_another_postgres_driver_in_the_url_is_accepted(harness, drifted_at_baseline):
    url = url_with(harness, drivername="postgresql+asyncpg")
    result = alembic("upgrade", "head", database_url=url)
    assert result.returncode == 0, result.output
    assert harness.version() == HEAD


@pytest.mark.parametrize(
    ("grants", "expected"),
    [
        (
            "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}",
            "cannot alter public.meta_assets_cache (owned by app_migrator)",
        ),
        ("", "cannot alter public.meta_assets_cache (owned by app_migrator)"),
    ],
    ids=["app-role-with-dml", "role-with-no-grants"],
)
def test_role_that_does_not_own_the_table(harness, drifted_at_baseline, grants, expected):
    role = f"not_owner_{harness.dbname[-12:]}".replace("-", "_")
    harness.admin(f"CREATE ROLE {role} LOGIN PASSWORD '{SECRET}'")
    try:
        if grants:
            harness.execute(grants.format(role=role))
        state = database_state(harness)
        url = url_with(harness, username=role, password=SECRET)
        result = alembic("upgrade", "head", database_url=url)
        assert_failed_cleanly(result, expected, secrets=(SECRET, harness.server.password))
        assert database_state(harness) == state
        assert harness.version() == BASELINE
    finally:
        harness.admin(f"DROP OWNED BY {role}")
        harness.admin(f"DROP ROLE {role}")


# Every character that ends or splits a part of a URL, and spaces; no 3-character piece of it
# is likely to turn up in alembic's or PostgreSQL's own messages.
AWKWARD_PASSWORD = "Zq7@Kv9/Jm4?Tp2#Rb8:Wx5 Hd6 Ny3"


def leaked(secret: str, text: str) -> set[str]:
    """The 3-character pieces of `secret` in `text`: any longer leak contains one."""
    return {secret[i : i + 3] for i in range(len(secret) - 2) if secret[i : i + 3] in text}


@pytest.fixture
def awkward_role(harness, drifted_at_baseline):
    """A role that may run the migration, with a password that needs percent-encoding."""
    role = f"awkward_{harness.dbname[-12:]}".replace("-", "_")
    with harness.engine.connect() as connection:
        # Sent already hashed, as psql's \password does: the plain password in the statement
        # would stay in pg_stat_activity.query of the harness's idle connection.
        verifier = encrypt_password(AWKWARD_PASSWORD, role, connection.connection.dbapi_connection)
    harness.admin(f"CREATE ROLE {role} LOGIN PASSWORD '{verifier}'")
    harness.admin(f"GRANT {MIGRATOR} TO {role}")  # may run the migration, as its owner's member
    try:
        yield role
    finally:
        harness.admin(f"DROP OWNED BY {role}")
        harness.admin(f"DROP ROLE {role}")


def test_password_with_special_characters(harness, awkward_role):
    server = harness.server
    address = f"{server.host}:{server.port}/{harness.dbname}"
    encoded = f"postgresql://{awkward_role}:{quote(AWKWARD_PASSWORD, safe='')}@{address}"

    result = alembic("current", database_url=encoded)
    assert result.returncode == 0, result.output
    assert "0001" in result.stdout
    assert not leaked(AWKWARD_PASSWORD, result.output)

    # The issue: libpq read part of this password as the host name, and printed it.
    result = alembic(
        "current", database_url=f"postgresql://{awkward_role}:{AWKWARD_PASSWORD}@{address}"
    )
    assert_failed_cleanly(result, "percent-encode any @ / ? # :")
    assert not leaked(AWKWARD_PASSWORD, result.output), result.output

    # What the server shows of a session: the password is in none of its columns.
    engine = engine_for(database_url({"DATABASE_URL": encoded}), "test awkward password")
    try:
        with engine.connect() as session:
            assert session.exec_driver_sql("SELECT current_user").scalar() == awkward_role
            activity = harness.rows("SELECT usename, to_jsonb(a)::text FROM pg_stat_activity a")
    finally:
        engine.dispose()
    assert awkward_role in [usename for usename, _ in activity]
    assert not leaked(AWKWARD_PASSWORD, "\n".join(row for _, row in activity))


def test_several_hosts_are_tried_in_turn(harness, drifted_at_baseline):
    """libpq's multi-host URL: the first host is down, the second answers."""
    server = harness.server
    password = quote(server.password, safe="")
    hosts = f"{server.host}:{free_port()},{server.host}:{server.port}"
    url = f"postgresql://{MIGRATOR}:{password}@{hosts}/{harness.dbname}"
    result = alembic("current", database_url=url)
    assert result.returncode == 0, result.output
    assert "0001" in result.stdout


def test_missing_table(harness):
    harness.upgrade(BASELINE)  # an empty database: the baseline creates the tables
    harness.execute("DROP TABLE public.meta_assets_cache")
    schema_before = harness.schema_dump()
    result = alembic("upgrade", "head", database_url=harness.url)
    assert_failed_cleanly(
        result,
        "table public.meta_assets_cache does not exist in database",
        harness.dbname,
        secrets=(harness.server.password,),
    )
    assert harness.schema_dump() == schema_before
    assert harness.version() == BASELINE


@pytest.mark.parametrize(
    ("arguments", "env", "expected"),
    [
        (["-x", "lock_timeout=abc"], {}, "lock_timeout='abc' is not a duration"),
        (["-x", "lock_retries=0"], {}, "lock_retries='0' must be a whole number"),
        (["-x", "build_attempts=2.5"], {}, "build_attempts='2.5' must be a whole number"),
        (["-x", "lock_timout=2s"], {}, "unknown -x setting 'lock_timout'"),
        (["-x", "lock_timeout"], {}, "-x 'lock_timeout' must look like name=value"),
        ([], {"MIGRATION_LOCK_TIMEOUT": "soon"}, "lock_timeout='soon' is not a duration"),
        (["-x", "dedupe_work_mem=lots"], {}, "dedupe_work_mem='lots' is not an amount of memory"),
    ],
    ids=[
        "duration",
        "zero-count",
        "fractional-count",
        "unknown",
        "no-value",
        "environment",
        "memory",
    ],
)
def test_invalid_setting(harness, drifted_at_baseline, arguments, env, expected):
    result = alembic(*arguments, "upgrade", "head", database_url=harness.url, env=env)
    assert_failed_cleanly(result, expected, secrets=(harness.server.password,))
    assert database_state(harness) == drifted_at_baseline
    assert harness.version() == BASELINE
