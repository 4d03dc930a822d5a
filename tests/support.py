"""Helpers the tests share: run alembic in-process or as a user would, and read the database.

Every test database is owned by MIGRATOR, a role that is NOT a superuser, as Supabase's
`postgres` is not: it owns the app's tables (it runs the stand-in schema), and alembic runs as
it. Supabase's API roles exist, and the stand-in schema gives MIGRATOR's future tables in public
to them by default privileges, as every Supabase project does. The server's superuser stays for
what only an administrator does (roles, grants on parameters, pg_dump).
"""

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from app.names import BASELINE_REVISION, UNIQUE_PAIR_REVISION
from devtools.starting_states import build_state
from devtools.throwaway_postgres import ThrowawayServer

PROJECT_ROOT = Path(__file__).resolve().parent.parent
ALEMBIC_INI = PROJECT_ROOT / "alembic.ini"
PAIR_UNIQUES = """
SELECT c.relname AS index_name, con.conname AS constraint_name, i.indisvalid AS valid
  FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
  LEFT JOIN pg_constraint con ON con.conindid = i.indexrelid AND con.conrelid = i.indrelid
 WHERE i.indrelid = 'public.meta_assets_cache'::regclass AND i.indisunique
   AND i.indnkeyatts = 2
   AND (SELECT array_agg(a.attname::text ORDER BY a.attname) FROM pg_attribute a
         WHERE a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey))
       = ARRAY['phone_number_id', 'workspace_id']
 ORDER BY 1
"""


@dataclass
class AlembicResult:
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def alembic_config(x_arguments: list[str] | None = None) -> Config:
    config = Config(str(ALEMBIC_INI))
    config.attributes["skip_logging_config"] = True
    if x_arguments:
        config.cmd_opts = type("CmdOpts", (), {"x": x_arguments})()
    return config


def failed_lines(result: AlembicResult) -> list[str]:
    return [line for line in result.output.splitlines() if line.startswith("FAILED:")]


def succeed(result: AlembicResult) -> None:
    """The command exited 0 and printed no FAILED: line."""
    assert result.returncode == 0, result.output
    assert failed_lines(result) == []


def run_child(
    command: list[str], *, cwd: Path, env: dict[str, str], timeout: float
) -> AlembicResult:
    """A command in a child process with no stdin, as CI runs it, its output captured."""
    result = subprocess.run(
        command,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    return AlembicResult(result.returncode, result.stdout, result.stderr)


def run_alembic_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> AlembicResult:
    """`alembic ARGS` in a child process, exactly as a user types it."""
    return run_child(
        [sys.executable, "-m", "alembic", *args],
        cwd=PROJECT_ROOT,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )


MIGRATOR = "app_migrator"
# The drivers besides psycopg2 (the suite's own) that the driver tests run each step through.
OTHER_DRIVERS = ("psycopg", "asyncpg", "psycopg_async")


def through(url: str, driver: str, **changes) -> str:
    """`url` with `driver` named in its scheme, as a user writes DATABASE_URL for it."""
    return (
        make_url(url)
        .set(drivername=f"postgresql+{driver}", **changes)
        .render_as_string(hide_password=False)
    )


API_ROLES = ("anon", "authenticated", "service_role")
VERSION_TABLE = "meta_assets_migration.alembic_version"
BASELINE, HEAD = BASELINE_REVISION, UNIQUE_PAIR_REVISION


def prepare_cluster(server: ThrowawayServer) -> None:
    """Once per server: Supabase's API roles and the migrating role, which is no superuser."""
    admin = create_engine(server.url(), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            for role in API_ROLES:
                connection.exec_driver_sql(
                    f"DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{role}')"
                    f" THEN CREATE ROLE {role} NOLOGIN; END IF; END $$"
                )
            connection.exec_driver_sql(
                f"DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{MIGRATOR}')"
                f" THEN CREATE ROLE {MIGRATOR} LOGIN NOSUPERUSER NOCREATEROLE NOBYPASSRLS;"
                " END IF; END $$"
            )
            connection.exec_driver_sql(f"ALTER ROLE {MIGRATOR} PASSWORD '{server.password}'")
    finally:
        admin.dispose()


class MigrationHarness:
    def __init__(self, server: ThrowawayServer, dbname: str) -> None:
        self.server = server
        self.dbname = dbname
        self.admin_engine = create_engine(server.url(dbname), isolation_level="AUTOCOMMIT")
        self.admin(f"ALTER DATABASE {dbname} OWNER TO {MIGRATOR}")
        self.url = self.url_as(MIGRATOR, server.password)
        self.engine = create_engine(self.url, isolation_level="AUTOCOMMIT")

    def url_as(self, user: str, password: str) -> str:
        return (
            self.server.url(self.dbname)
            .set(username=user, password=password)
            .render_as_string(hide_password=False)
        )

    def close(self) -> None:
        self.engine.dispose()
        self.admin_engine.dispose()

    def admin(self, sql: str) -> None:
        """As the server's superuser: roles, grants on parameters, what an administrator does."""
        with self.admin_engine.connect() as connection:
            connection.exec_driver_sql(sql)

    def admin_scalar(self, sql: str, **params):
        with self.admin_engine.connect() as connection:
            return connection.execute(text(sql), params).scalar()

    def as_role(self, role: str, sql: str) -> None:
        """Run `sql` as `role` (SET ROLE from the superuser's session, as PostgREST does)."""
        with self.admin_engine.connect() as connection:
            connection.exec_driver_sql(f"SET ROLE {role}")
            try:
                connection.exec_driver_sql(sql)
            finally:  # the pooled connection goes back as the superuser's
                connection.exec_driver_sql("RESET ROLE")

    def count(self, table: str, where: str = "true") -> int:
        """Rows of `table`; 0 when the table does not exist (nothing was ever created)."""
        if not self.scalar("SELECT to_regclass(:t) IS NOT NULL", t=table):
            return 0
        return self.scalar(f"SELECT count(*) FROM {table} WHERE {where}")

    def guard_exists(self) -> bool:
        """The duplicate guard's triggers on the table, or its function, are there."""
        return bool(
            self.scalar(
                "SELECT EXISTS (SELECT 1 FROM pg_trigger WHERE NOT tgisinternal"
                " AND tgrelid = 'public.meta_assets_cache'::regclass AND tgname LIKE '%guard%')"
                " OR EXISTS (SELECT 1 FROM pg_proc p JOIN pg_namespace n"
                " ON n.oid = p.pronamespace WHERE n.nspname = 'meta_assets_migration'"
                " AND p.proname LIKE '%guard%')"
            )
        )

    def version(self) -> str | None:
        """The alembic revision, from the version table in the private schema."""
        if not self.scalar("SELECT to_regclass(:t) IS NOT NULL", t=VERSION_TABLE):
            return None
        return self.scalar(f"SELECT string_agg(version_num, ',') FROM {VERSION_TABLE}")

    # alembic

    def upgrade(self, revision: str = "head", *x: str) -> None:
        command.upgrade(alembic_config(list(x)), revision)

    def downgrade(self, revision: str = "-1", *x: str) -> None:
        command.downgrade(alembic_config(list(x)), revision)

    def check(self) -> None:
        command.check(alembic_config())

    def cli(self, *args: str, env: dict[str, str] | None = None, **kwargs) -> AlembicResult:
        return run_alembic_cli(*args, env={"DATABASE_URL": self.url, **(env or {})}, **kwargs)

    # SQL

    def execute(self, sql: str, **params) -> None:
        with self.engine.connect() as connection:
            if params:
                connection.execute(text(sql), params)
            else:  # a whole script, run as psql would: no parameter markers to interpret
                with connection.connection.cursor() as cursor:
                    cursor.execute(sql)

    def rows(self, sql: str, **params) -> list:
        with self.engine.connect() as connection:
            return list(connection.execute(text(sql), params))

    def scalar(self, sql: str, **params):
        with self.engine.connect() as connection:
            return connection.execute(text(sql), params).scalar()

    def build_state(self, state: str, keys: int = 200) -> None:
        build_state(self.execute, state, keys)

    # facts the tests assert

    def pair_uniques(self) -> list:
        return self.rows(PAIR_UNIQUES)

    def invalid_indexes(self) -> list[str]:
        return [
            row[0]
            for row in self.rows(
                "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
                " WHERE NOT i.indisvalid"
            )
        ]

    def table_rows(self, table: str = "public.meta_assets_cache") -> dict[str, str]:
        """Every row, keyed by id, in PostgreSQL's own text form: equal means byte for byte."""
        return {
            str(row.id): row.body
            for row in self.rows(f"SELECT t.id, t::text AS body FROM {table} t")
        }

    def schema_dump(self, *options: str) -> str:
        """pg_dump --schema-only, with pg_dump's `options` (say --exclude-schema=...)."""
        result = subprocess.run(
            [
                str(self.server.bin_dir / "pg_dump"),
                "--schema-only",
                *options,
                self.server.url_string(self.dbname).replace("+psycopg2", ""),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        return "\n".join(
            line
            for line in result.stdout.splitlines()
            # version banners and pg_dump's per-run random \restrict key are not schema
            if not line.startswith(("-- Dumped", "\\restrict", "\\unrestrict"))
        )

    def policies_and_grants(self) -> tuple:
        policies = self.rows(
            "SELECT policyname, permissive, roles::text, cmd, qual, with_check FROM pg_policies"
            " WHERE schemaname = 'public' AND tablename = 'meta_assets_cache' ORDER BY 1"
        )
        grants = self.scalar(
            "SELECT relacl::text || '/' || relrowsecurity FROM pg_class"
            " WHERE oid = 'public.meta_assets_cache'::regclass"
        )
        return policies, grants
