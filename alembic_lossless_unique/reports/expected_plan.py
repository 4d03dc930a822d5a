"""A plan that stays true: its fingerprint, and the run's refusal when it no longer matches.

`python -m alembic_lossless_unique plan` prints a fingerprint of what its plan depended on; a
deploy that reviewed that plan runs

    alembic -x expect_plan=FINGERPRINT upgrade head

and the run refuses, before changing anything, when the fingerprint it computes now (the same
way, for the revisions it is about to run) differs. The fingerprint covers, per pending
operation: the revision, the operation and its arguments (the index form's elements, predicate
and options as the revision gives them: what they mean on the table follows from its columns,
so no probe is needed here); the table's columns (name, type, NOT
NULL, in order), its unique indexes and constraints (name, definition, validity), the foreign
keys into it, the publications that carry it, and those that carry the private schema. It
never covers row counts, which change with traffic: a duplicate written since is archived like
the others, and the plan's counts are estimates of the same kind.
"""

import hashlib
import json
from typing import Any

from sqlalchemy import Connection

from alembic_lossless_unique.ddl.sqltext import qualified_relation_sql
from alembic_lossless_unique.operations.target import UniqueTarget
from alembic_lossless_unique.runtime import pending, surroundings
from alembic_lossless_unique.runtime.database import Database
from alembic_lossless_unique.runtime.errors import MigrationAbort
from alembic_lossless_unique.runtime.settings import FINGERPRINT_DIGITS

PLAN_COMMAND = "python -m alembic_lossless_unique plan"

# What a plan for one table depends on, read from the catalog in a deterministic order. The
# table may not exist yet (a pending revision creates it): everything is then null.
DEPENDED_ON_SQL = f"""
WITH t AS (SELECT pg_catalog.to_regclass(:table) AS oid)
SELECT pg_catalog.json_build_object(
  'exists', (SELECT t.oid IS NOT NULL FROM t),
  'columns', (
    SELECT pg_catalog.json_agg(pg_catalog.json_build_array(
               a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod), a.attnotnull)
           ORDER BY a.attnum)
      FROM t JOIN pg_catalog.pg_attribute a ON a.attrelid = t.oid
     WHERE a.attnum > 0 AND NOT a.attisdropped),
  'uniques', (
    SELECT pg_catalog.json_agg(pg_catalog.json_build_array(
               ic.relname, pg_catalog.pg_get_indexdef(i.indexrelid), i.indisvalid,
               i.indisready, con.conname)
           ORDER BY ic.relname)
      FROM t JOIN pg_catalog.pg_index i ON i.indrelid = t.oid
      JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid
      LEFT JOIN pg_catalog.pg_constraint con
        ON con.conindid = i.indexrelid AND con.conrelid = i.indrelid
       AND con.contype IN ('p', 'u')
     WHERE i.indisunique),
  'foreign_keys_in', (
    SELECT pg_catalog.json_agg(pg_catalog.json_build_array(
               con.conname, {qualified_relation_sql("con.conrelid")},
               pg_catalog.pg_get_constraintdef(con.oid))
           ORDER BY con.conname, con.conrelid::pg_catalog.regclass::text)
      FROM t JOIN pg_catalog.pg_constraint con ON con.confrelid = t.oid
     WHERE con.contype = 'f'),
  'publications', (
    SELECT pg_catalog.json_agg(p.pubname ORDER BY p.pubname)
      FROM pg_catalog.pg_publication p
     WHERE p.puballtables
        OR EXISTS (SELECT 1 FROM pg_catalog.pg_publication_tables pt
                    WHERE pt.pubname = p.pubname AND pt.schemaname = :schema
                      AND pt.tablename = :table_name))
)::text"""


def depended_on(db: Database, operation: pending.PendingOperation) -> dict[str, Any]:
    """What the plan of one operation depends on: its arguments and the catalog facts."""
    target = operation.target
    catalog = json.loads(
        db.scalar(
            DEPENDED_ON_SQL,
            {
                "table": target.qualified_table,
                "schema": target.schema,
                "table_name": target.table,
            },
        )
    )
    # Every publication that would carry the private schema's tables, declared ready or not.
    catalog["private_schema_publications"] = surroundings.unready_publications(
        db, [target.private_schema], ()
    )[0]
    return {
        "revision": operation.revision,
        "operation": operation.operation,
        "target": {
            "constraint_name": target.constraint_name,
            "schema": target.schema,
            "table": target.table,
            "columns": list(target.columns),
            "keep_newest_by": list(target.keep_newest_by),
            "row_identity": list(target.row_identity),
            "private_schema": target.private_schema,
            "archive_table": target.archive_table,
            "ledger_table": target.ledger_table,
            "adopt_first": list(target.adopt_first),
            # Only where set: fingerprints made before the options existed stay valid.
            **constraint_options(target),
        },
        "catalog": catalog,
    }


def constraint_options(target: UniqueTarget) -> dict[str, object]:
    """The options and the index form's key, where set: a fingerprint of an operation that has
    none of them stays what it was before they existed."""
    options = {
        "nulls_not_distinct": target.nulls_not_distinct,
        "include": list(target.include),
        "deferral": target.deferral,
        "index_elements": list(target.index_elements),
        "where": target.where,
    }
    return {name: value for name, value in options.items() if value}


def fingerprint(db: Database, operations: list[pending.PendingOperation]) -> str:
    """The plan's fingerprint: a short sha256 of what it depended on, in the order it runs."""
    document = json.dumps(
        [depended_on(db, operation) for operation in operations],
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(document.encode()).hexdigest()[:FINGERPRINT_DIGITS]


def refuse_unless_expected(
    context: Any, connection: Connection, db: Database, configure: dict[str, Any]
) -> None:
    """With `-x expect_plan=FP`: refuse when the plan of the revisions this run is about to run
    (`context`: the env.py's EnvironmentContext) no longer has that fingerprint. Read-only;
    called before anything is created."""
    expected = db.settings.expect_plan
    if not expected:
        return
    heads = pending.current_heads(connection, configure)
    operations = pending.pending_operations(context, heads, configure).operations
    if not operations:
        # Nothing the plan vouched for runs: another migrator ran it (the second deploy waited
        # for the first), or what is left are other operations, which the plan never covered.
        return
    now = fingerprint(db, operations)
    if now != expected:
        raise MigrationAbort(
            f"the plan's fingerprint no longer matches: it was {expected}, it is now {now} (the"
            " pending revisions, or the tables, uniques, foreign keys or publications they act"
            f" on, changed since the plan was made): re-run `{PLAN_COMMAND}`, review it, and"
            " deploy with its fingerprint"
        )
