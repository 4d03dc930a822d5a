"""Helpers the tests share: run alembic in-process or as a user would, and read the database."""

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, text

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


def run_alembic_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> AlembicResult:
    """`alembic ARGS` in a child process, exactly as a user types it."""
    result = subprocess.run(
        [sys.executable, "-m", "alembic", *args],
        cwd=PROJECT_ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    return AlembicResult(result.returncode, result.stdout, result.stderr)


class MigrationHarness:
    def __init__(self, server: ThrowawayServer, dbname: str) -> None:
        self.server = server
        self.dbname = dbname
        self.url = server.url_string(dbname)
        self.engine = create_engine(server.url(dbname), isolation_level="AUTOCOMMIT")

    def close(self) -> None:
        self.engine.dispose()

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

    def schema_dump(self) -> str:
        result = subprocess.run(
            [
                str(self.server.bin_dir / "pg_dump"),
                "--schema-only",
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
