"""The drifted meta_assets_cache, in either duplicate mix, and the templates cloned from it.

Each starting state is built once as a template database; every contender runs on a clone made
with CREATE DATABASE ... TEMPLATE, so all of them start from the same bytes.
"""

import hashlib
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.db import alembic, command_env, scalar, session
from devtools.starting_states import ADD_ORIGINAL_CONSTRAINT, SUPABASE_SCHEMA, dirty_rows_sql
from devtools.throwaway_postgres import ThrowawayServer

# Where the migration moves duplicate rows; the name stays fixed across releases so databases it
# migrated still downgrade. Were it to move, its rows would show up here as rows lost.
ARCHIVE = "meta_assets_migration.meta_assets_cache_archive"
TEMPLATE_DRIFTED = "bench_drifted"
TEMPLATE_DEDUPED = "bench_deduped"
TEMPLATE_CONSTRAINED = "bench_constrained"
# The drifted table after ours' upgrade: where the rollback starts.
TEMPLATE_UPGRADED = "bench_upgraded"
CHUNK_KEYS = 400_000
# dirty_rows_sql gives every workspace (one per 20 keys) 3 NULL-phone rows: 0.15 rows per key.
NULL_PHONE_ROWS_PER_KEY = 0.15


# Building the starting states is not measured: its sessions may use more memory than the
# server's defaults, and need not wait for each commit to reach the disk.
BUILD_SETTINGS = {"work_mem": "256MB", "maintenance_work_mem": "1GB", "synchronous_commit": "off"}


@contextmanager
def build_session(server: ThrowawayServer, database: str) -> Iterator:
    with session(server, database) as cursor:
        for name, value in BUILD_SETTINGS.items():
            cursor.execute("SELECT set_config(%s, %s, false)", (name, value))
        yield cursor


@dataclass(frozen=True)
class Mix:
    name: str
    description: str
    # Passed to dirty_rows_sql: keys with k % 100 below it get 2-4 copies (2 surplus on average).
    duplicate_percent: int
    # Of those keys, only the ones with (k / 100) % thin_to_one_in == 0 keep their copies.
    thin_to_one_in: int

    @property
    def rows_per_key(self) -> float:
        surplus = 2 * self.duplicate_percent / 100 / self.thin_to_one_in
        return 1 + surplus + NULL_PHONE_ROWS_PER_KEY


MIXES = {
    "heavy": Mix("heavy", "5% of keys have 2-4 copies (~8% surplus rows)", 5, 1),
    # dirty_rows_sql takes whole percents; 2% keeps a spread of ties (k % 4 and k % 5 vary),
    # and keeping one duplicated key range in 40 leaves 0.1% of keys with copies.
    "realistic": Mix("realistic", "0.05% of keys have 2-4 copies (~0.1% surplus rows)", 2, 40),
}


@dataclass(frozen=True)
class TableShape:
    """The keys of the drifted table: key k is ('workspace/' || 1 + k % workspaces, 'pn-' || k)."""

    keys: int
    workspaces: int

    def pair(self, key: int) -> tuple[str, str]:
        return workspace_uuid(1 + key % self.workspaces), f"pn-{key}"


def workspace_uuid(number: int) -> str:
    """The id dirty_rows_sql gives workspace `number`: md5('workspace/N')::uuid."""
    return str(uuid.UUID(hashlib.md5(f"workspace/{number}".encode()).hexdigest()))


def shape_for_rows(rows: int, mix: Mix) -> TableShape:
    keys = max(100, round(rows / mix.rows_per_key))
    return TableShape(keys, max(1, keys // 20))


def thin_duplicates_sql(mix: Mix) -> str:
    """Deletes the copies (verified_name 'Business k (copy n)') of all but one duplicated key
    range in `thin_to_one_in`, leaving them spread through the heap as drift leaves them."""
    return f"""
DELETE FROM public.meta_assets_cache
 WHERE verified_name LIKE '% (copy %)'
   AND (split_part(phone_number_id, '-', 2)::bigint / 100) % {mix.thin_to_one_in} <> 0
"""


def build_drifted(
    server: ThrowawayServer,
    rows: int,
    mix: Mix,
    template: str = TEMPLATE_DRIFTED,
    schema_sql: str | None = None,
) -> TableShape:
    """The drifted table, in chunks so a 10M-row build reports its progress. `schema_sql`: the
    schema it is built in (the reference's unless given); the rows are the same either way."""
    shape = shape_for_rows(rows, mix)
    with session(server, "postgres") as cursor:
        cursor.execute(f"DROP DATABASE IF EXISTS {template}")
        cursor.execute(f"CREATE DATABASE {template}")
    started = time.monotonic()
    with build_session(server, template) as cursor:
        cursor.execute(schema_sql or SUPABASE_SCHEMA.read_text())
        for first in range(1, shape.keys + 1, CHUNK_KEYS):
            last = min(shape.keys, first + CHUNK_KEYS - 1)
            cursor.execute(
                dirty_rows_sql(
                    last,
                    workspaces=shape.workspaces,
                    duplicate_percent=mix.duplicate_percent,
                    keys_from=first,
                    null_phone_rows_per_workspace=3 if first == 1 else 0,
                )
            )
            message = f"building {template}: {last:,} of {shape.keys:,} keys"
            progress(message, started, last / shape.keys)
        if mix.thin_to_one_in > 1:
            cursor.execute(thin_duplicates_sql(mix))
        # A production table has been vacuumed: hint bits set, visibility map current.
        cursor.execute("VACUUM ANALYZE public.meta_assets_cache")
    progress(f"building {template}: vacuumed", started, 1.0, final=True)
    return shape


# The partitioned section: the reference's table with the primary key a table partitioned on
# workspace_id must have, plain or hash-partitioned this many ways.
TEMPLATE_KEYED_PLAIN = "bench_keyed_plain"
TEMPLATE_KEYED_PARTITIONED = "bench_keyed_partitioned"
TEMPLATE_KEYED_PLAIN_UPGRADED = "bench_keyed_plain_upgraded"
TEMPLATE_KEYED_PARTITIONED_UPGRADED = "bench_keyed_partitioned_upgraded"
HASH_PARTITIONS = 16
REFERENCE_PRIMARY_KEY = "  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),\n"
REFERENCE_TABLE_END = "  last_synced_at timestamptz NULL, last_error text NULL);\n"


def keyed_schema_sql(partitions: int) -> str:
    """The reference schema with meta_assets_cache's primary key (id, workspace_id), and, if
    `partitions`, the table hash-partitioned on workspace_id into that many partitions (created
    before the schema's grants, which then reach them as they reach the table)."""
    schema = SUPABASE_SCHEMA.read_text()
    if REFERENCE_PRIMARY_KEY not in schema or REFERENCE_TABLE_END not in schema:
        raise RuntimeError(f"{SUPABASE_SCHEMA.name}: meta_assets_cache is no longer as expected")
    table_end = "  last_synced_at timestamptz NULL, last_error text NULL,\n"
    table_end += "  PRIMARY KEY (id, workspace_id))"
    if partitions:
        table_end += " PARTITION BY HASH (workspace_id);\n" + "".join(
            f"CREATE TABLE public.meta_assets_cache_p{remainder} PARTITION OF"
            f" public.meta_assets_cache FOR VALUES WITH (MODULUS {partitions},"
            f" REMAINDER {remainder});\n"
            for remainder in range(partitions)
        )
    else:
        table_end += ";\n"
    return schema.replace(
        REFERENCE_PRIMARY_KEY, "  id uuid NOT NULL DEFAULT gen_random_uuid(),\n"
    ).replace(REFERENCE_TABLE_END, table_end)


def progress(message: str, started: float, fraction: float, final: bool = False) -> None:
    line = f"{message} ({100 * fraction:.0f}%, {time.monotonic() - started:.0f} s)"
    if sys.stdout.isatty():  # one line rewritten in place; a log gets one line per chunk
        print("\r" + line.ljust(78), end="\n" if final else "", flush=True)
    else:
        print(line, flush=True)


def clone(server: ThrowawayServer, template: str, name: str) -> None:
    # FILE_COPY copies the files (fast for GBs); the default WAL_LOG would write them all to WAL.
    with session(server, "postgres") as cursor:
        cursor.execute(f"DROP DATABASE IF EXISTS {name}")
        cursor.execute(f"CREATE DATABASE {name} TEMPLATE {template} STRATEGY FILE_COPY")


# Keeps the newest row per key with the package's ordering, NULL phones untouched: the
# deduplicated starting point of the physical limit and of the constrained re-runs.
DEDUPE_SQL = """
DELETE FROM public.meta_assets_cache c
 USING (SELECT id, row_number() OVER (
            PARTITION BY workspace_id, phone_number_id
            ORDER BY updated_at DESC, last_synced_at DESC NULLS LAST, id DESC) AS position
          FROM public.meta_assets_cache
         WHERE phone_number_id IS NOT NULL) r
 WHERE r.position > 1 AND c.id = r.id
"""


def build_deduped_and_constrained(server: ThrowawayServer) -> None:
    clone(server, TEMPLATE_DRIFTED, TEMPLATE_DEDUPED)
    with build_session(server, TEMPLATE_DEDUPED) as cursor:
        cursor.execute(DEDUPE_SQL)
        cursor.execute("VACUUM ANALYZE public.meta_assets_cache")
    clone(server, TEMPLATE_DEDUPED, TEMPLATE_CONSTRAINED)
    with build_session(server, TEMPLATE_CONSTRAINED) as cursor:
        cursor.execute(ADD_ORIGINAL_CONSTRAINT)


def build_upgraded(
    server: ThrowawayServer,
    project_root: Path,
    source: str = TEMPLATE_DRIFTED,
    template: str = TEMPLATE_UPGRADED,
    alembic_options: tuple[str, ...] = (),
) -> None:
    """The drifted table upgraded by ours, with nothing writing: the rollback's starting point."""
    clone(server, source, template)
    upgrade = subprocess.run(
        alembic(*alembic_options, "upgrade", "head"),
        cwd=project_root,
        env=command_env(server, template),
        capture_output=True,
        text=True,
    )
    if upgrade.returncode != 0:
        raise RuntimeError(f"upgrading {template} failed: {upgrade.stderr[-2000:]}")


# A valid, plain (no predicate, no expression) unique index on (workspace_id, phone_number_id).
UNIQUE_ON_PAIR_SQL = """
SELECT EXISTS (
  SELECT 1 FROM pg_index i
   WHERE i.indrelid = 'public.meta_assets_cache'::regclass
     AND i.indisunique AND i.indisvalid AND i.indpred IS NULL AND i.indexprs IS NULL
     AND ARRAY['workspace_id', 'phone_number_id']::name[] = (
         SELECT array_agg(a.attname ORDER BY k.position)
           FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, position)
           JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum))
"""


@dataclass(frozen=True)
class Census:
    rows: int
    null_phone_rows: int
    archived_rows: int
    unique_on_pair: bool


def census(server: ThrowawayServer, database: str) -> Census:
    with session(server, database) as cursor:
        cursor.execute(
            "SELECT count(*), count(*) FILTER (WHERE phone_number_id IS NULL)"
            " FROM public.meta_assets_cache"
        )
        rows, null_phone = cursor.fetchone()
        archived = 0
        if scalar(cursor, f"SELECT to_regclass('{ARCHIVE}') IS NOT NULL"):
            archived = scalar(cursor, f"SELECT count(*) FROM {ARCHIVE}")
        unique = scalar(cursor, UNIQUE_ON_PAIR_SQL)
    return Census(rows, null_phone, archived, bool(unique))


@dataclass(frozen=True)
class TableFacts:
    """What the report says about the drifted table a run started from."""

    mix: str
    rows: int
    keys: int
    surplus_rows: int
    null_phone_rows: int

    def line(self) -> str:
        share = 100 * self.surplus_rows / max(1, self.rows)
        return (
            f"table: {self.rows:,} rows, {self.keys:,} keys, {self.surplus_rows:,} surplus keyed"
            f" rows ({share:.2f}%), {self.null_phone_rows:,} NULL-phone rows;"
            f" mix {self.mix}: {MIXES[self.mix].description}"
        )


def table_facts(
    server: ThrowawayServer, mix: Mix, shape: TableShape, template: str = TEMPLATE_DRIFTED
) -> TableFacts:
    """Counted, not computed from the mix: the surplus is every keyed row beyond one per pair."""
    with build_session(server, template) as cursor:
        cursor.execute(
            "SELECT count(*), count(*) FILTER (WHERE phone_number_id IS NULL),"
            " count(phone_number_id) - count(DISTINCT (workspace_id, phone_number_id))"
            "   FILTER (WHERE phone_number_id IS NOT NULL)"
            " FROM public.meta_assets_cache"
        )
        rows, null_phone, surplus = cursor.fetchone()
    return TableFacts(mix.name, rows, shape.keys, surplus, null_phone)
