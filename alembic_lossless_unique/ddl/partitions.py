"""A partitioned table's tree, what PostgreSQL allows a unique on it, and the statements that
give it one without a build that blocks writes.

PostgreSQL builds no index concurrently on a partitioned table and refuses ADD CONSTRAINT ...
USING INDEX there, but a constraint added to the partitioned table ONLY is a catalog change that
leaves its index invalid; each partition's own unique, built concurrently and promoted like a
plain table's, is then attached to it (ALTER INDEX ... ATTACH PARTITION), and the partitioned
index turns valid with its last partition's. Every level of a sub-partitioned table has its own
index, attached to its parent's once all of its own partitions are.
"""

import re
from dataclasses import dataclass
from typing import Any

from alembic_lossless_unique.ddl.probe import shape_sql
from alembic_lossless_unique.ddl.sqltext import (
    MAX_IDENTIFIER_BYTES,
    ident,
    idents,
    literal,
    literal_array,
    qualified,
)
from alembic_lossless_unique.operations.target import UniqueTarget
from alembic_lossless_unique.runtime.database import Database

# PostgreSQL's own words for the rule a partitioned table's unique must follow.
PARTITION_KEY_RULE = "unique constraint on partitioned table must include all partitioning columns"


@dataclass(frozen=True)
class Member:
    """One table of a partition tree: the partitioned table given, a partitioned partition of
    it (a level of a sub-partitioned table), or a leaf, which holds rows."""

    schema: str
    table: str
    level: int
    is_leaf: bool
    # The partitioned table it is a partition of (schema, table); None for the root.
    parent: tuple[str, str] | None

    @property
    def qualified(self) -> str:
        return qualified(self.schema, self.table)

    @property
    def display(self) -> str:
        return f"{self.schema}.{self.table}"


def is_partitioned(db: Database, target: UniqueTarget) -> bool:
    return bool(
        db.scalar(
            "SELECT c.relkind = 'p' FROM pg_catalog.pg_class c"
            " WHERE c.oid = pg_catalog.to_regclass(:table)",
            {"table": target.qualified_table},
        )
    )


def tree(db: Database, target: UniqueTarget) -> list[Member]:
    """Every table of the target's partition tree, the root first, then level by level."""
    rows = db.rows(
        """
SELECT n.nspname::text AS schema, c.relname::text AS table, t.level, c.relkind <> 'p' AS is_leaf,
       pn.nspname::text AS parent_schema, p.relname::text AS parent_table
  FROM pg_catalog.pg_partition_tree(pg_catalog.to_regclass(:table)) AS t
  JOIN pg_catalog.pg_class c ON c.oid = t.relid
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
  LEFT JOIN pg_catalog.pg_class p ON p.oid = t.parentrelid
  LEFT JOIN pg_catalog.pg_namespace pn ON pn.oid = p.relnamespace
 ORDER BY t.level, n.nspname, c.relname""",
        {"table": target.qualified_table},
    )
    return [
        Member(
            row.schema,
            row.table,
            row.level,
            row.is_leaf,
            (row.parent_schema, row.parent_table) if row.parent_table else None,
        )
        for row in rows
    ]


def key_columns(target: UniqueTarget) -> tuple[str, ...]:
    """The key's plain columns, which are what PostgreSQL's rule counts: the constraint's
    columns; the index form's elements that are a bare column (pg_get_indexdef prints them as
    their quoted names)."""
    if not target.is_index:
        return target.columns
    return tuple(
        unquoted(element.printed)
        for element in target.key.elements
        if element.printed == ident(unquoted(element.printed))
    )


def unquoted(name: str) -> str:
    """A name as ident() quotes it, unquoted."""
    if name.startswith('"') and name.endswith('"') and len(name) > 1:
        return name[1:-1].replace('""', '"')
    return name


def problems_sql(target: UniqueTarget) -> str:
    """A query of one text column: every reason PostgreSQL allows no unique on the key of the
    partitioned table (none: no rows). Read-only, for the refusal and for preflight."""
    root = f"pg_catalog.to_regclass({literal(target.qualified_table)})"
    key = literal_array(key_columns(target))
    return f"""
WITH members AS (
    SELECT t.relid, t.parentrelid, c.relkind,
           pg_catalog.format('%I.%I', n.nspname, c.relname) AS display
      FROM pg_catalog.pg_partition_tree({root}) AS t
      JOIN pg_catalog.pg_class c ON c.oid = t.relid
      JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
)
SELECT pg_catalog.format(
           '%s is partitioned by an expression (%s), so PostgreSQL allows no unique on it',
           m.display, pg_catalog.pg_get_partkeydef(m.relid))
  FROM members m JOIN pg_catalog.pg_partitioned_table pt ON pt.partrelid = m.relid
 WHERE 0 = ANY (pt.partattrs::int2[])
UNION ALL
SELECT pg_catalog.format(
           '%s on %s lacks column %s, which partitions %s (%s): PostgreSQL''s rule is "%s";'
           ' add %s to the key as a column', {literal(f"{target.kind} {target.constraint_name}")},
           {literal(target.display_table)}, a.attname, m.display,
           pg_catalog.pg_get_partkeydef(m.relid), {literal(PARTITION_KEY_RULE)}, a.attname)
  FROM members m
  JOIN pg_catalog.pg_partitioned_table pt ON pt.partrelid = m.relid
  JOIN pg_catalog.pg_attribute a
    ON a.attrelid = m.relid AND a.attnum = ANY (pt.partattrs::int2[]) AND a.attnum > 0
 WHERE a.attname::text <> ALL ({key})
UNION ALL
SELECT pg_catalog.format(
           'partition %s of %s is a foreign table, which holds no index: PostgreSQL allows no'
           ' unique on a partitioned table with such a partition', m.display,
           (SELECT p.display FROM members p WHERE p.relid = m.parentrelid))
  FROM members m WHERE m.relkind = 'f'"""


def problems(db: Database, target: UniqueTarget) -> list[str]:
    return [str(row[0]) for row in db.rows(problems_sql(target))]


def _uniques_on_key_sql(table: str, target: UniqueTarget) -> str:
    """Every unique index on `table` (qualified, as text) whose key columns are the target's,
    in any order: its name, its constraint's (or NULL), and how to name it in a sentence."""
    return f"""
SELECT ic.relname::text AS index_name, con.conname::text AS name,
       CASE WHEN con.conname IS NULL THEN 'unique index ' || ic.relname
            ELSE 'constraint ' || con.conname END AS description
  FROM pg_catalog.pg_index i
  JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid
  LEFT JOIN pg_catalog.pg_constraint con ON con.conindid = i.indexrelid AND con.contype = 'u'
 WHERE i.indrelid = pg_catalog.to_regclass({literal(table)}) AND i.indisunique
   AND i.indexprs IS NULL AND i.indpred IS NULL
   AND ARRAY(SELECT a.attname::text COLLATE "C" FROM pg_catalog.pg_attribute a
              WHERE a.attrelid = i.indrelid
                AND a.attnum = ANY ((i.indkey::int2[])[0:i.indnkeyatts - 1])
              ORDER BY 1)
       = ARRAY(SELECT c COLLATE "C" FROM pg_catalog.unnest({literal_array(target.columns)}) AS c
                ORDER BY 1)"""


def _shaped_like_sql(table: str, target: UniqueTarget) -> str:
    """The index form's: every unique index on `table` that judges keys as the target will
    (its shape), as _uniques_on_key_sql describes them; an index alone is its own name."""
    return f"""
SELECT ic.relname::text AS index_name, ic.relname::text AS name,
       'unique index ' || ic.relname AS description
  FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid
 WHERE i.indrelid = pg_catalog.to_regclass({literal(table)}) AND i.indisunique
   AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint con WHERE con.conindid = ic.oid)
   AND {shape_sql("i.indexrelid")} = {literal(target.key.shape)}"""


def uniques_on_key(db: Database, table: str, target: UniqueTarget) -> list[Any]:
    if target.is_index:
        return db.rows(_shaped_like_sql(table, target))
    return db.rows(_uniques_on_key_sql(table, target))


def other_uniques(db: Database, target: UniqueTarget) -> list[str]:
    """The uniques on the partitioned table's key other than the target's, described."""
    return [
        str(row.description)
        for row in uniques_on_key(db, target.qualified_table, target)
        if row.name != target.constraint_name
    ]


def existing_name(db: Database, member: Member, target: UniqueTarget) -> str | None:
    """The unique a partitioned level already has on the key (this operation's, from an
    interrupted run), or None."""
    names = [
        str(row.name)
        for row in uniques_on_key(db, member.qualified, target)
        if row.name is not None
    ]
    return min(names) if names else None


def chosen_name(db: Database, member: Member, target: UniqueTarget) -> str:
    """The name PostgreSQL gives a partition's unique when ALTER TABLE ... ADD CONSTRAINT (or
    CREATE UNIQUE INDEX) on its partitioned table makes it (ChooseRelationName:
    table_columns_key, or _idx for an index, each part shortened to fit, a number after the
    label while the name is taken in the schema; an expression goes by its function's name).
    An INVALID index of the partition's own, which its plan drops first, takes no name."""
    columns = target.columns
    if target.is_index:
        columns = tuple(element_name(element.printed) for element in target.key.elements)
    base_label = "idx" if target.is_index else "key"
    taken = {
        str(row[0])
        for row in db.rows(
            "SELECT c.relname FROM pg_catalog.pg_class c"
            " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = :schema AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_index i"
            " WHERE i.indexrelid = c.oid AND NOT i.indisvalid"
            " AND i.indrelid = pg_catalog.to_regclass(:table))",
            {"schema": member.schema, "table": member.qualified},
        )
    }
    addition = "_".join(columns)
    number = 0
    while True:
        label = base_label if number == 0 else f"{base_label}{number}"
        name = object_name(member.table, addition, label)
        if name not in taken:
            return name
        number += 1


def element_name(printed: str) -> str:
    """How PostgreSQL names a key element in an index's name: a column by its name, a call by
    its function's name, anything else `expr`."""
    name = unquoted(printed)
    if printed == ident(name):
        return name
    match = re.match(r"\(*([A-Za-z_][A-Za-z0-9_$]*)\(", printed)
    return match.group(1).lower() if match else "expr"


def object_name(name1: str, name2: str, label: str) -> str:
    """PostgreSQL's makeObjectName: name1_name2_label, the longer of name1 and name2 shortened
    a byte at a time (never inside a character) until it fits."""
    first, second = name1.encode(), name2.encode()
    room = MAX_IDENTIFIER_BYTES - len(label.encode()) - 1 - (1 if second else 0)
    a, b = len(first), len(second)
    while a + b > room:
        if a > b:
            a -= 1
        else:
            b -= 1

    def clipped(raw: bytes, length: int) -> str:
        return raw[:length].decode(errors="ignore")

    parts = [clipped(first, a)] + ([clipped(second, b)] if second else []) + [label]
    return "_".join(parts)


def add_constraint_only_sql(target: UniqueTarget, member: Member, name: str) -> str:
    """The partitioned table's own constraint (the index form: unique index), ONLY: a catalog
    change that leaves its index invalid until every partition's is attached."""
    if target.is_index:
        return target.index_statement(name, f"ONLY {member.qualified}")
    nulls = " NULLS NOT DISTINCT" if target.nulls_not_distinct else ""
    include = f" INCLUDE ({idents(target.include)})" if target.include else ""
    return (
        f"ALTER TABLE ONLY {member.qualified} ADD CONSTRAINT {ident(name)}"
        f" UNIQUE{nulls} ({idents(target.columns)}){include}{target.deferral}"
    )


def attach_sql(parent_index: str, child_index: str) -> str:
    """Both qualified. Takes SHARE UPDATE EXCLUSIVE on the parent index, briefly ACCESS
    EXCLUSIVE on the child's; validates the parent's index when this was its last partition."""
    return f"ALTER INDEX {parent_index} ATTACH PARTITION {child_index}"


def attached(db: Database, parent_index: str, child_index: str) -> bool:
    return bool(
        db.scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_inherits"
            " WHERE inhrelid = pg_catalog.to_regclass(:child)"
            " AND inhparent = pg_catalog.to_regclass(:parent))",
            {"child": child_index, "parent": parent_index},
        )
    )


def unique_index(
    db: Database, member: Member, name: str, target: UniqueTarget
) -> tuple[str, bool] | None:
    """`member`'s unique `name` as the target's form makes it (a constraint, found by its name;
    or an index, by its own), as its index (qualified) and whether that is valid; None when
    there is none."""
    named = (
        "ic.relname = :name"
        if target.is_index
        else "EXISTS (SELECT 1 FROM pg_catalog.pg_constraint con"
        " WHERE con.conindid = i.indexrelid AND con.conrelid = i.indrelid AND con.conname = :name)"
    )
    rows = db.rows(
        "SELECT pg_catalog.format('%I.%I', n.nspname, ic.relname) AS index, i.indisvalid"
        " FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid"
        " JOIN pg_catalog.pg_namespace n ON n.oid = ic.relnamespace"
        f" WHERE i.indrelid = pg_catalog.to_regclass(:table) AND {named}",
        {"table": member.qualified, "name": name},
    )
    return (str(rows[0].index), bool(rows[0].indisvalid)) if rows else None
