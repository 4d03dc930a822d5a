"""The index form's key, exactly as PostgreSQL will judge it, read from PostgreSQL itself.

A probe: in the migrator's session, inside a transaction that is always rolled back, a
temporary copy of the table's columns (LIKE) gets the unique index with the user's SQL verbatim.
PostgreSQL parses and validates it there (a syntax error, an unknown column or function, an
expression that is not IMMUTABLE fails here, before anything changes: one FAILED line), and its
catalog then says, per key element, the expression (unqualified, as pg_get_indexdef prints it),
the operator class's equality operator, the collation; the predicate; which columns the key
reads (pg_depend); and the index's shape, to compare with the uniques the table already has.

The probe writes (a temporary table, always rolled back), so it runs before a read-only report
turns its transaction READ ONLY (reports/preflight.py), and not at all on a standby.
"""

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from sqlalchemy.exc import DBAPIError

from alembic_lossless_unique.ddl import checks
from alembic_lossless_unique.ddl.sqltext import ident, literal
from alembic_lossless_unique.operations.target import KeyElement, UniqueKey, UniqueTarget
from alembic_lossless_unique.runtime import drivers
from alembic_lossless_unique.runtime.database import Database
from alembic_lossless_unique.runtime.errors import MigrationAbort

PROBE_TABLE = "lossless_unique_probe"
PROBE_INDEX = "lossless_unique_probe_key"
# Where key values travel as columns (work tables, claims): the i-th element's name.
KEY_COLUMN = "lossless_key_{}"
# SQLSTATE read_only_sql_transaction: even a temporary table is refused (a standby; a READ ONLY
# transaction, which is why preflight and the plan probe before theirs begins).
READ_ONLY_TRANSACTION = "25006"


def shape_sql(index: str) -> str:
    """An SQL text expression: the unique index `index` (an oid expression) from USING on, as
    pg_get_indexdef() prints it: the same for two indexes that judge keys alike, whatever their
    names and tables."""
    return f"""pg_catalog.substr(pg_catalog.pg_get_indexdef({index}),
        (SELECT pg_catalog.length(pg_catalog.format(
                    'CREATE UNIQUE INDEX %I ON %I.%I', ic.relname,
                    -- a temporary table's schema, whichever it is, prints as pg_temp
                    CASE WHEN n.oid = pg_catalog.pg_my_temp_schema() THEN 'pg_temp'
                         ELSE n.nspname END,
                    tc.relname)) + 1
           FROM pg_catalog.pg_index pi
           JOIN pg_catalog.pg_class ic ON ic.oid = pi.indexrelid
           JOIN pg_catalog.pg_class tc ON tc.oid = pi.indrelid
           JOIN pg_catalog.pg_namespace n ON n.oid = tc.relnamespace
          WHERE pi.indexrelid = {index}))"""


# Per key element: how PostgreSQL prints it, its operator class's equality operator, and its
# value in a single-table scope (KeyElement.value: the expression with the index's collation).
_ELEMENTS = """
SELECT e.n, e.printed, e.operator,
       '(' || e.printed || ')' || coalesce(' COLLATE ' || e.collation, '') AS value
  FROM (SELECT k.n,
               pg_catalog.pg_get_indexdef(i.indexrelid, k.n::int, true) AS printed,
               (SELECT pg_catalog.format('OPERATOR(%I.%s)', opn.nspname, o.oprname)
                  FROM pg_catalog.pg_opclass oc
                  JOIN pg_catalog.pg_amop ao
                       ON ao.amopfamily = oc.opcfamily AND ao.amopstrategy = 3
                       AND ao.amoplefttype = oc.opcintype AND ao.amoprighttype = oc.opcintype
                  JOIN pg_catalog.pg_operator o ON o.oid = ao.amopopr
                  JOIN pg_catalog.pg_namespace opn ON opn.oid = o.oprnamespace
                 WHERE oc.oid = i.indclass[k.n - 1]) AS operator,
               (SELECT pg_catalog.format('%I.%I', cn.nspname, co.collname)
                  FROM pg_catalog.pg_collation co
                  JOIN pg_catalog.pg_namespace cn ON cn.oid = co.collnamespace
                 WHERE co.oid = i.indcollation[k.n - 1]) AS collation
          FROM pg_catalog.pg_index i, pg_catalog.generate_series(1, i.indnkeyatts) AS k(n)
         WHERE i.indexrelid = {index}) AS e
 ORDER BY e.n"""

_INDEX = """
SELECT '(' || pg_catalog.pg_get_expr(i.indpred, i.indrelid, true) || ')' AS predicate,
       ARRAY(SELECT a.attname::text
               FROM pg_catalog.pg_depend d
               JOIN pg_catalog.pg_attribute a
                 ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
              WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
                AND d.objid = i.indexrelid AND d.refobjid = i.indrelid AND d.refobjsubid > 0
              GROUP BY a.attnum, a.attname
              ORDER BY a.attnum) AS referenced,
       {shape} AS shape
  FROM pg_catalog.pg_index i
 WHERE i.indexrelid = {index}"""


# The probe index, once built (an oid expression).
PROBED = f"pg_catalog.to_regclass({literal('pg_temp.' + PROBE_INDEX)})"


def probe_statements(target: UniqueTarget) -> list[str]:
    """The probe: the table's columns (LIKE) as a temporary table, with the unique index on it,
    the user's SQL verbatim. What builds here builds on the table."""
    return [
        f"CREATE TEMPORARY TABLE {PROBE_TABLE} (LIKE {target.qualified_table})",
        target.index_statement(PROBE_INDEX, f"pg_temp.{ident(PROBE_TABLE)}"),
    ]


def elements_sql() -> str:
    """The probe index's key elements, one row each, in order: n, printed, operator, value."""
    return _ELEMENTS.format(index=PROBED)


def index_sql() -> str:
    """The probe index as one row: predicate, referenced, shape."""
    return _INDEX.format(index=PROBED, shape=shape_sql(PROBED))


def unbuildable(target: UniqueTarget, cause: str) -> str:
    """The refusal where PostgreSQL will not build the index (`cause`: its words)."""
    return (
        f"{target.kind} {target.constraint_name} on {target.key_description} cannot be"
        f" built: {cause}; nothing was changed"
    )


def key_from(target: UniqueTarget, elements: Sequence[Any], index: Any) -> UniqueKey:
    """The key, from the probe's rows: `elements` as elements_sql() reads them, `index` as
    index_sql() does."""
    return UniqueKey(
        tuple(
            KeyElement(
                value=row.value,
                column=KEY_COLUMN.format(row.n),
                operator=row.operator,
                printed=row.printed,
                is_column=False,
            )
            for row in elements
        ),
        nulls_not_distinct=target.nulls_not_distinct,
        predicate=index.predicate,
        referenced=tuple(index.referenced),
        shape=index.shape,
    )


def resolve(db: Database, target: UniqueTarget) -> UniqueTarget:
    """`target` with its key as PostgreSQL parsed it (the constraint form needs no probe)."""
    if not target.is_index or target.probed_key is not None:
        return target
    option_problem = checks.option_problem_sql(target)
    if option_problem is not None:  # said as the constraint form says it, not as a syntax error
        refusal = db.scalar(f"SELECT {option_problem}")
        if refusal:
            raise MigrationAbort(refusal)
    try:
        with db.trial():  # rolled back: the probe leaves nothing, not even a temporary table
            for statement in probe_statements(target):
                db.execute(statement)
            elements = db.rows(elements_sql())
            found = db.rows(index_sql())[0]
    except DBAPIError as error:
        if drivers.sqlstate(error) == READ_ONLY_TRANSACTION:
            raise MigrationAbort(
                f"the key of {target.kind} {target.constraint_name} on"
                f" {target.key_description} is read from a probe index on a temporary table,"
                " which a read-only server (a standby) cannot create: run this against the"
                " primary; nothing was changed"
            ) from None
        raise MigrationAbort(unbuildable(target, drivers.primary_message(error))) from None
    return replace(target, probed_key=key_from(target, elements, found))
