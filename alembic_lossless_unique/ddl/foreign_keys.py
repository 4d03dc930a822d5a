"""Foreign keys, as the catalog describes them: the ones into the table (whose child rows the
dedupe re-points) and the table's own (whose parents a restored row needs)."""

from alembic_lossless_unique.ddl.sqltext import qualified_relation_sql

# The columns that identify a row of the child `con.conrelid`: its replica identity index, else
# its primary key, else the first unique index on NOT NULL columns; NULL when it has none.
CHILD_IDENTITY_SQL = """(SELECT ARRAY(SELECT a.attname::text
                                  FROM pg_catalog.unnest(i.indkey::int2[])
                                           WITH ORDINALITY AS k(attnum, n)
                                  JOIN pg_catalog.pg_attribute a
                                    ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                                 ORDER BY k.n)
                      FROM pg_catalog.pg_index i
                     WHERE i.indrelid = con.conrelid AND i.indisunique AND i.indisvalid
                       AND i.indpred IS NULL AND i.indexprs IS NULL
                       AND NOT EXISTS (SELECT 1
                                         FROM pg_catalog.unnest(i.indkey::int2[]) AS k(attnum)
                                         JOIN pg_catalog.pg_attribute a
                                           ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                                        WHERE NOT a.attnotnull OR k.attnum = 0)
                     ORDER BY i.indisreplident DESC, i.indisprimary DESC, i.indexrelid
                     LIMIT 1)"""


def _columns_of(keys: str, relation: str) -> str:
    return f"""ARRAY(SELECT a.attname::text
                   FROM pg_catalog.unnest({keys}) WITH ORDINALITY AS k(attnum, n)
                   JOIN pg_catalog.pg_attribute a
                     ON a.attrelid = {relation} AND a.attnum = k.attnum
                  ORDER BY k.n)"""


def foreign_keys_sql(where: str) -> str:
    """One row per foreign key `con` matching `where`: its name, the child (referencing) table,
    the parent (referenced) table, their columns in order, the key's own equality operators,
    the columns that identify a child row, and the ON DELETE action (as text: asyncpg reads a
    "char" as bytes)."""
    return f"""
            SELECT con.conname::text AS constraint_name,
                   {qualified_relation_sql("con.conrelid")} AS child_table,
                   con.conrelid AS child_oid,
                   {qualified_relation_sql("con.confrelid")} AS parent_table,
                   {_columns_of("con.conkey", "con.conrelid")} AS child_columns,
                   {_columns_of("con.confkey", "con.confrelid")} AS parent_columns,
                   ARRAY(SELECT pg_catalog.format('OPERATOR(%I.%s)', n.nspname, o.oprname)
                           FROM pg_catalog.unnest(con.conpfeqop) WITH ORDINALITY AS e(op, k)
                           JOIN pg_catalog.pg_operator o ON o.oid = e.op
                           JOIN pg_catalog.pg_namespace n ON n.oid = o.oprnamespace
                          ORDER BY e.k) AS operators,
                   {CHILD_IDENTITY_SQL} AS child_identity,
                   con.confdeltype::text AS on_delete
              FROM pg_catalog.pg_constraint con
             WHERE con.contype = 'f' AND {where}
             ORDER BY con.conname"""


def inbound_sql(table: str) -> str:
    """The foreign keys of other tables that reference `table` (a regclass expression)."""
    return foreign_keys_sql(f"con.confrelid = {table}")


def outbound_sql(table: str) -> str:
    """`table`'s own foreign keys, to its parents."""
    return foreign_keys_sql(f"con.conrelid = {table}")
