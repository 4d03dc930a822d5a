"""The main job, end to end, on a throwaway PostgreSQL loaded with a dirty Supabase-like table.

preflight -> alembic upgrade head -> alembic check -> alembic downgrade -1, with the table's
state shown between steps. Everything runs as a user would run it, as Supabase's `postgres`
would: the table's owner, not a superuser, with Supabase's API roles and default privileges.
Everything is removed afterwards.
"""

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import psycopg2

from devtools.starting_states import STATES, build_state
from devtools.throwaway_postgres import ThrowawayPostgresError, throwaway_postgres

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# The role the migration runs as: the app's tables' owner, as Supabase's `postgres` is.
OWNER = "app_owner"

TABLE_FACTS = """
SELECT count(*) AS rows,
       count(*) FILTER (WHERE phone_number_id IS NULL) AS null_phone_rows,
       (SELECT count(*) FROM (SELECT 1 FROM public.meta_assets_cache
          WHERE phone_number_id IS NOT NULL
          GROUP BY workspace_id, phone_number_id HAVING count(*) > 1) d) AS duplicate_groups,
       md5(string_agg(t::text, '|' ORDER BY id)) AS checksum
  FROM public.meta_assets_cache t
"""

UNIQUES_ON_PAIR = """
SELECT coalesce(string_agg(
         CASE WHEN con.conname IS NOT NULL THEN 'constraint ' ELSE 'index ' END || c.relname
         || CASE WHEN i.indisvalid THEN '' ELSE ' (INVALID)' END, ', '), 'none')
  FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
  LEFT JOIN pg_constraint con ON con.conindid = i.indexrelid AND con.conrelid = i.indrelid
 WHERE i.indrelid = 'public.meta_assets_cache'::regclass AND i.indisunique AND i.indnkeyatts = 2
"""

UPSERT = """
INSERT INTO public.meta_assets_cache (workspace_id, phone_number_id, display_phone_number)
SELECT id, 'pn-demo', '+15550000000' FROM public.workspaces ORDER BY id LIMIT 1
ON CONFLICT (workspace_id, phone_number_id)
DO UPDATE SET display_phone_number = EXCLUDED.display_phone_number, updated_at = now()
"""


def heading(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def show_table(connection, label: str) -> dict:
    with connection.cursor() as cursor:
        cursor.execute(TABLE_FACTS)
        rows, null_phone, groups, checksum = cursor.fetchone()
        cursor.execute(UNIQUES_ON_PAIR)
        (uniques,) = cursor.fetchone()
    print(
        f"    {label}: {rows} rows, {null_phone} with NULL phone_number_id,"
        f" {groups} duplicate keyed groups; uniques on the pair: {uniques}"
    )
    return {"rows": rows, "checksum": checksum}


def run(command: list[str], database_url: str) -> None:
    print("    $ " + " ".join(command), flush=True)
    env = {**os.environ, "DATABASE_URL": database_url}
    result = subprocess.run(command, cwd=PROJECT_ROOT, env=env, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise SystemExit(f"demo: `{' '.join(command)}` failed with exit code {result.returncode}")


def demo(state: str, keys: int) -> None:
    started = time.monotonic()
    heading("starting a throwaway PostgreSQL")
    with throwaway_postgres() as server:
        print(f"    listening on {server.host}:{server.port} (removed when the demo ends)")
        admin = psycopg2.connect(server.url_string().replace("+psycopg2", ""))
        admin.autocommit = True
        with admin.cursor() as cursor:
            for role in ("anon", "authenticated", "service_role"):
                cursor.execute(f"CREATE ROLE {role} NOLOGIN")
            cursor.execute(f"CREATE ROLE {OWNER} LOGIN NOSUPERUSER PASSWORD %s", (server.password,))
            cursor.execute(f"CREATE DATABASE demo OWNER {OWNER}")
        admin.close()
        database_url = server.url("demo").set(username=OWNER).render_as_string(hide_password=False)
        print(f"    running as {OWNER}: owns the tables, not a superuser (as Supabase's postgres)")
        connection = psycopg2.connect(database_url.replace("+psycopg2", ""))
        connection.autocommit = True

        heading(f"loading a dirty Supabase-like table (state: {state}, {keys} phone numbers)")
        build_state(lambda sql: connection.cursor().execute(sql), state, keys)
        before = show_table(connection, "before")

        alembic = [sys.executable, "-m", "alembic"]
        heading("preflight: what the upgrade would do (read-only)")
        run([sys.executable, "-m", "app.preflight"], database_url)

        heading("alembic upgrade head")
        run([*alembic, "upgrade", "head"], database_url)
        show_table(connection, "after upgrade")
        with connection.cursor() as cursor:
            cursor.execute(UPSERT)
            cursor.execute(UPSERT)
            cursor.execute("DELETE FROM public.meta_assets_cache WHERE phone_number_id = 'pn-demo'")
        print("    ON CONFLICT (workspace_id, phone_number_id) upsert: works")

        heading("alembic check (the models match the database)")
        run([*alembic, "check"], database_url)

        heading("alembic downgrade -1")
        run([*alembic, "downgrade", "-1"], database_url)
        after = show_table(connection, "after downgrade")
        same = after == before
        print(f"    every row restored byte for byte: {'yes' if same else 'NO'}")
        connection.close()
        if not same:
            raise SystemExit("demo: the downgrade did not restore the original rows")
    heading(f"done in {time.monotonic() - started:.1f} s; the throwaway PostgreSQL is gone")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--state", choices=[s for s in STATES if s != "empty"], default="drifted")
    parser.add_argument("--keys", type=int, default=20_000, help="distinct phone numbers")
    arguments = parser.parse_args()
    try:
        demo(arguments.state, arguments.keys)
    except ThrowawayPostgresError as error:
        raise SystemExit(f"demo: {error}") from None


if __name__ == "__main__":
    main()
