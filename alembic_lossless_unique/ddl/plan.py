"""The one decision: what to do with each unique found on the key, to end with exactly one, the
target constraint. Written once, as a query over the catalog, and read by the online upgrade,
the offline script (in a DO block) and the preflight report alike.

Actions, in the order they run:

- drop_invalid: an INVALID index on the key, left by an interrupted concurrent build
- refuse: the target name is taken by something that cannot become the constraint
- keep: the target constraint is already there
- rename: a unique constraint on the key under another name is renamed
- promote: a unique index on the key becomes the constraint (ADD CONSTRAINT ... USING INDEX)
- build: nothing covers the key: archive duplicates, build the index concurrently, promote it
- drop_redundant: every other unique on the key's plain columns (one without INCLUDE
  columns; whatever its NULLs rule or deferral)
- leave_alone: partial, expression or INCLUDE uniques on the key that do not fit the target

A unique fits the target, and is kept, renamed or promoted, when it has the key's columns in
order and the target's options: the same INCLUDE columns, NULLS NOT DISTINCT or not, and (a
constraint) the same deferral; promotion gives an index the target's deferral.
"""

from dataclasses import dataclass

from alembic_lossless_unique.ddl.probe import shape_sql
from alembic_lossless_unique.ddl.sqltext import literal, literal_array
from alembic_lossless_unique.operations.target import UniqueTarget, the_unique


def unique_indexes_sql(table: str) -> str:
    """Every unique index on `table` (an SQL expression of type regclass), described."""
    return f"""
SELECT ic.relname::text COLLATE "C" AS index_name,
       con.conname::text AS constraint_name,
       ARRAY(SELECT a.attname::text
               FROM pg_catalog.unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, position)
               JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
              WHERE k.position <= i.indnkeyatts
              ORDER BY k.position) AS columns,
       ARRAY(SELECT a.attname::text
               FROM pg_catalog.unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, position)
               JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
              WHERE k.position > i.indnkeyatts
              ORDER BY k.position) AS include,
       -- Read through jsonb: the column exists from PostgreSQL 15 on.
       coalesce((pg_catalog.to_jsonb(i) ->> 'indnullsnotdistinct')::boolean, false)
           AS nulls_not_distinct,
       CASE WHEN con.condeferrable THEN ' DEFERRABLE'
                 || CASE WHEN con.condeferred THEN ' INITIALLY DEFERRED' ELSE '' END
            ELSE '' END AS deferral,
       i.indisvalid AND i.indisready AS valid,
       (i.indpred IS NULL AND i.indexprs IS NULL AND am.amname = 'btree'
        AND NOT EXISTS (SELECT 1 FROM pg_catalog.unnest(i.indoption::int2[]) AS o(flag)
                         WHERE o.flag <> 0))
           AS plain_key,
       pg_catalog.pg_get_indexdef(i.indexrelid) AS definition,
       pg_catalog.obj_description(i.indexrelid, 'pg_class') AS comment
  FROM pg_catalog.pg_index i
  JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid
  JOIN pg_catalog.pg_am am ON am.oid = ic.relam
  LEFT JOIN pg_catalog.pg_constraint con
         ON con.conindid = i.indexrelid AND con.conrelid = i.indrelid AND con.contype = 'u'
 WHERE i.indrelid = {table} AND i.indisunique"""


def plan_sql(target: UniqueTarget, built_before: str) -> str:
    """The plan as rows (action, index_name, constraint_name, definition, comment, ours,
    description, deferral). `built_before` is an SQL boolean: whether this target's ledger
    records a build of its own, which makes an index under the target's name ours to promote
    without record."""
    if target.is_index:
        return index_plan_sql(target, built_before)
    table = f"pg_catalog.to_regclass({literal(target.qualified_table)})"
    name = literal(target.constraint_name)
    key = literal_array(target.columns)
    include = literal_array(target.include)
    nulls_not_distinct = "true" if target.nulls_not_distinct else "false"
    deferral = literal(target.deferral)
    preferred = literal_array(target.adopt_first)
    return f"""
WITH found AS (
    SELECT u.*,
           -- On plain columns and nothing more: it serves ON CONFLICT on the key.
           u.valid AND u.plain_key AND u.include = '{{}}' AS serves,
           -- It can become the target constraint as it is: the key in the constraint's order
           -- and the constraint's options.
           u.valid AND u.plain_key AND u.columns = {key} AND u.include = {include}
               AND u.nulls_not_distinct = {nulls_not_distinct}
               AND (u.constraint_name IS NULL OR u.deferral = {deferral}) AS fits,
           pg_catalog.format('%s %s (%s)%s',
                  CASE WHEN u.constraint_name IS NULL THEN 'index'
                       ELSE 'constraint ' || u.constraint_name END,
                  u.index_name, pg_catalog.array_to_string(u.columns, ', '),
                  CASE WHEN u.valid THEN '' ELSE ' (INVALID)' END) AS description
      FROM ({unique_indexes_sql(table)}) AS u
     WHERE ARRAY(SELECT c FROM pg_catalog.unnest(u.columns) AS c ORDER BY c COLLATE "C")
           = ARRAY(SELECT c FROM pg_catalog.unnest({key}) AS c ORDER BY c COLLATE "C")
), chosen AS (
    -- The target constraint itself, else an index under the target name, else a constraint
    -- to rename, else an index to promote: the preferred ones in order, then by name.
    SELECT index_name FROM found
     WHERE fits
     ORDER BY constraint_name IS NOT DISTINCT FROM {name} DESC,
              index_name = {name} DESC,
              constraint_name IS NOT NULL DESC,
              pg_catalog.array_position({preferred}, index_name::text) NULLS LAST,
              index_name
     LIMIT 1
), name_taken AS (
    -- The target name held by anything that will not become the target constraint and is not
    -- dropped before it is needed (INVALID indexes are dropped first).
    SELECT pg_catalog.format('%s %s exists but cannot become unique constraint %s on %s: rename'
                             ' or drop it, then re-run', kind, what, {name},
                             {literal(target.key_description)}) AS problem
      FROM (SELECT 'relation' AS kind, c.relname::text AS what
              FROM pg_catalog.pg_class c
             WHERE c.relname = {name}
               AND c.relnamespace = (SELECT relnamespace FROM pg_catalog.pg_class
                                      WHERE oid = {table})
               AND c.relname NOT IN (SELECT index_name FROM chosen)
               AND c.relname NOT IN (SELECT index_name FROM found WHERE NOT valid)
            UNION ALL
            SELECT 'constraint', con.conname::text
              FROM pg_catalog.pg_constraint con
             WHERE con.conrelid = {table} AND con.conname = {name}
               AND con.conname NOT IN (SELECT f.constraint_name FROM found f
                                         JOIN chosen USING (index_name)
                                        WHERE f.constraint_name IS NOT NULL)) AS taken
)
SELECT planned.* FROM (
    SELECT 1 AS position, 'drop_invalid' AS action, index_name, constraint_name, definition,
           comment, false AS ours, description, deferral
      FROM found WHERE NOT valid AND constraint_name IS NULL
    UNION ALL
    SELECT 2, 'refuse', NULL, NULL, NULL, NULL, false, problem, '' FROM name_taken
    UNION ALL
    SELECT 3, CASE WHEN f.constraint_name = {name} THEN 'keep'
                   WHEN f.constraint_name IS NOT NULL THEN 'rename'
                   ELSE 'promote' END,
           f.index_name, f.constraint_name, f.definition, f.comment,
           f.constraint_name IS NULL AND f.index_name = {name} AND ({built_before}),
           f.description, f.deferral
      FROM found f JOIN chosen USING (index_name)
    UNION ALL
    SELECT 3, 'build', {name}, NULL, NULL, NULL, true, 'no unique covers the key', ''
     WHERE NOT EXISTS (SELECT 1 FROM chosen) AND NOT EXISTS (SELECT 1 FROM name_taken)
    UNION ALL
    SELECT 4, 'drop_redundant', index_name, constraint_name, definition, comment, false,
           description, deferral
      FROM found WHERE serves AND index_name NOT IN (SELECT index_name FROM chosen)
    UNION ALL
    SELECT 5, 'leave_alone', index_name, constraint_name, definition, comment, false,
           description, deferral
      FROM found WHERE valid AND NOT serves AND index_name NOT IN (SELECT index_name FROM chosen)
) AS planned
ORDER BY planned.position, planned.index_name"""


def index_plan_sql(target: UniqueTarget, built_before: str) -> str:
    """The index form's plan, as plan_sql's rows. A unique index fits when it judges keys as
    the target will: the same shape (pg_get_indexdef from USING on: elements, operator classes,
    collations, INCLUDE, NULLs rule, predicate), whatever its name, and no constraint holds it.
    The target name's index is kept, else another fitting one renamed (ALTER INDEX RENAME),
    else the index built; every other fitting one is redundant; an INVALID one of that shape
    or name is dropped first; the name taken by anything else is a refusal."""
    table = f"pg_catalog.to_regclass({literal(target.qualified_table)})"
    name = literal(target.constraint_name)
    return f"""
WITH found AS (
    SELECT u.*, u.valid AND u.constraint_name IS NULL AND u.shape = {literal(target.key.shape)}
               AS fits,
           pg_catalog.format('%s %s%s',
                  CASE WHEN u.constraint_name IS NULL THEN 'index'
                       ELSE 'constraint ' || u.constraint_name END,
                  u.index_name, CASE WHEN u.valid THEN '' ELSE ' (INVALID)' END) AS description
      FROM (SELECT ic.relname::text COLLATE "C" AS index_name,
                   con.conname::text AS constraint_name,
                   i.indisvalid AND i.indisready AS valid,
                   {shape_sql("i.indexrelid")} AS shape,
                   pg_catalog.pg_get_indexdef(i.indexrelid) AS definition,
                   pg_catalog.obj_description(i.indexrelid, 'pg_class') AS comment
              FROM pg_catalog.pg_index i
              JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid
              LEFT JOIN pg_catalog.pg_constraint con
                     ON con.conindid = i.indexrelid AND con.conrelid = i.indrelid
             WHERE i.indrelid = {table} AND i.indisunique) AS u
     WHERE u.shape = {literal(target.key.shape)} OR u.index_name = {name}
), chosen AS (
    SELECT index_name FROM found WHERE fits
     ORDER BY index_name = {name} DESC, index_name LIMIT 1
), dropped_first AS (
    SELECT index_name FROM found WHERE NOT valid AND constraint_name IS NULL
), name_taken AS (
    SELECT pg_catalog.format('%s %s exists but cannot become unique index %s on %s: rename'
                             ' or drop it, then re-run', kind, what, {name},
                             {literal(target.key_description)}) AS problem
      FROM (SELECT CASE WHEN con.conname IS NOT NULL THEN 'the index of constraint'
                        ELSE 'relation' END AS kind, c.relname::text AS what
              FROM pg_catalog.pg_class c
              LEFT JOIN pg_catalog.pg_constraint con ON con.conindid = c.oid
             WHERE c.relname = {name}
               AND c.relnamespace = (SELECT relnamespace FROM pg_catalog.pg_class
                                      WHERE oid = {table})
               AND c.relname NOT IN (SELECT index_name FROM chosen)
               AND c.relname NOT IN (SELECT index_name FROM dropped_first)) AS taken
)
SELECT planned.* FROM (
    SELECT 1 AS position, 'drop_invalid' AS action, index_name, constraint_name, definition,
           comment, false AS ours, description, '' AS deferral
      FROM found WHERE index_name IN (SELECT index_name FROM dropped_first)
    UNION ALL
    SELECT 2, 'refuse', NULL, NULL, NULL, NULL, false, problem, '' FROM name_taken
    UNION ALL
    SELECT 3, CASE WHEN f.index_name = {name} THEN 'keep' ELSE 'rename' END,
           f.index_name, NULL, f.definition, f.comment,
           f.index_name = {name} AND ({built_before}), f.description, ''
      FROM found f JOIN chosen USING (index_name)
    UNION ALL
    SELECT 3, 'build', {name}, NULL, NULL, NULL, true, 'no unique index judges the key', ''
     WHERE NOT EXISTS (SELECT 1 FROM chosen) AND NOT EXISTS (SELECT 1 FROM name_taken)
    UNION ALL
    SELECT 4, 'drop_redundant', index_name, NULL, definition, comment, false, description, ''
      FROM found WHERE fits AND index_name NOT IN (SELECT index_name FROM chosen)
) AS planned
ORDER BY planned.position, planned.index_name"""


@dataclass(frozen=True)
class Step:
    action: str
    index_name: str | None
    constraint_name: str | None
    definition: str | None
    comment: str | None
    ours: bool
    description: str
    # A constraint's DEFERRABLE clause ('' when it has none, or for an index alone).
    deferral: str = ""

    def recreation_record(self) -> dict[str, str | None]:
        """What a downgrade needs to build this unique again, exactly as it was."""
        return {
            "index_name": self.index_name,
            "constraint_name": self.constraint_name,
            "definition": self.definition,
            "comment": self.comment,
            "deferral": self.deferral,
        }


@dataclass(frozen=True)
class Plan:
    steps: tuple[Step, ...]
    # The index form's plan (ensure_unique_index): it ends with a unique index, no constraint.
    is_index: bool = False

    def of(self, *actions: str) -> list[Step]:
        return [step for step in self.steps if step.action in actions]

    @property
    def main(self) -> Step | None:
        """keep, rename, promote or build: how the target constraint comes about."""
        return next(iter(self.of("keep", "rename", "promote", "build")), None)

    @property
    def refusal(self) -> str | None:
        return next((step.description for step in self.of("refuse")), None)

    @property
    def converged(self) -> bool:
        """Nothing to change: the target constraint and no other unique serving the key."""
        return [step.action for step in self.steps if step.action != "leave_alone"] == ["keep"]

    def state(self) -> tuple[str, str]:
        """(one word, a sentence) naming the starting state the plan was made for."""
        main = self.main
        redundant = ", ".join(step.index_name or "" for step in self.of("drop_redundant"))
        end = the_unique(self.is_index)
        if main is None:
            return "blocked", self.refusal or f"nothing can become {end}"
        if main.action == "build":
            return "drifted", "no unique on the key"
        if main.action == "keep":
            if redundant:
                return "both", f"{end} plus redundant {redundant}"
            return "converged" if self.is_index else "constrained", f"{end}, nothing to do"
        if main.action == "rename" and self.is_index:
            return "renamed", f"unique index {main.index_name} judges the key as the target will"
        if main.action == "rename":
            return "renamed", f"constraint {main.constraint_name} on the key"
        return "indexed", f"unique index {main.index_name}, no constraint"
