"""The tables a logical subscriber needs before the migration runs on its publisher.

A publication FOR ALL TABLES (or FOR TABLES IN SCHEMA the private schema) carries the
operation's private tables to every subscriber: the archive, the ledger, the record of
re-pointed child rows, and the version table where env.py keeps it there. A subscriber that
lacks one of them (or one of its columns) stops applying every change, of every table, at the
first row the migration writes there. So the run refuses, before it writes anything, until
this has run on each logical subscriber and the publication is declared ready
(`-x subscribers_ready=NAME`, or MIGRATION_SUBSCRIBERS_READY; settings.py):

    python -m alembic_lossless_unique.subscriber_ddl --table orders \\
        --columns customer_id,number --private-schema orders_migration \\
        [--version-table orders_migration.alembic_version] > subscriber.sql
    psql "$SUBSCRIBER_URL" -v ON_ERROR_STOP=1 -f subscriber.sql

(the index form: `--index NAME --columns 'lower(email)'`; the run's refusal prints the command
with the operation's arguments, surroundings.subscriber_ddl_command). The tables do not depend
on the key, so the index form's needs no probe and no connection either.

The script is the migration's own DDL for those tables (the archive is made LIKE the
subscriber's copy of the table, which a working subscriber has with every published column), so
it needs no connection to print, and running it again is harmless; run it again after adding a
column to the table. Unlogged tables (the guard's claims, the dedupe's work tables) are never
replicated. The changes to tables a subscription did not know when it was created or last
refreshed are skipped by its apply worker without error; `ALTER SUBSCRIPTION ... REFRESH
PUBLICATION` after the upgrade starts copying them too. The downgrade drops the archive, ledger
and record on the publisher (a DROP is not replicated): drop them on the subscriber afterwards.
"""

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from alembic_lossless_unique.ddl import dedupe, ledger, private_schema
from alembic_lossless_unique.ddl.sqltext import derived_name, ident, idents
from alembic_lossless_unique.operations.target import UniqueTarget

HEADER = """-- Run on each logical subscriber, before the migration runs on the publisher:
-- the tables the migration writes in {schema}, which the publication carries.
-- Idempotent; run it again after adding a column to {table}.
"""


def version_table_sql(qualified_name: str) -> str:
    """Alembic's version table, as its migration environment creates it."""
    schema, _, table = qualified_name.rpartition(".")
    name = f"{ident(schema)}.{ident(table)}" if schema else ident(table)
    return (
        f"CREATE TABLE IF NOT EXISTS {name} (version_num varchar(32) NOT NULL,"
        f" CONSTRAINT {ident(table + '_pkc')} PRIMARY KEY (version_num))"
    )


def statements(
    target: UniqueTarget, *, version_table: str | None = None, extra: Sequence[str] = ()
) -> list[str]:
    """The subscriber's DDL: the private schema, the version table (when it lives there), any
    `extra` tables of the project's own, the ledger, the archive and the re-pointing record,
    closed to every other role as on the publisher."""
    archive_index = derived_name(target.archive_table, "identity")
    return [
        private_schema.create_sql(target.private_schema),
        *([version_table_sql(version_table)] if version_table else []),
        *extra,
        ledger.create_ledger_sql(target),
        dedupe.archive_sql(target),
        # REPLICA IDENTITY FULL finds a deleted archive row by all its columns: with this
        # index, a PostgreSQL 16+ subscriber looks it up instead of scanning the archive.
        f"CREATE INDEX IF NOT EXISTS {ident(archive_index)} ON {target.archive}"
        f" ({idents(target.row_identity)})",
        private_schema.lock_down_sql(target.private_schema),
    ]


def script(target: UniqueTarget, **kwargs: Any) -> str:
    header = HEADER.format(schema=target.private_schema, table=target.display_table)
    return header + "".join(f"{statement};\n" for statement in statements(target, **kwargs))


def main(argv: Sequence[str] | None = None) -> int:
    from alembic_lossless_unique.reports.preflight import add_target_arguments, target_of

    parser = argparse.ArgumentParser(
        prog="python -m alembic_lossless_unique.subscriber_ddl",
        description="Print the DDL a logical subscriber needs before the migration runs.",
    )
    add_target_arguments(parser)
    parser.add_argument("--version-table", help="schema.table, when it is in the private schema")
    arguments = parser.parse_args(argv)
    try:
        target = target_of(arguments)
    except Exception as error:  # a bad name: one line, as every command of the package
        print(f"FAILED: {error}", file=sys.stderr)
        return 1
    sys.stdout.write(script(target, version_table=arguments.version_table))
    return 0
