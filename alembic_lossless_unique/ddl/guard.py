"""The duplicate guard: from the moment the dedupe begins until the constraint exists, the table
rejects a new duplicate key the way the constraint soon will, so the concurrent build is not
failed by a writer that keeps inserting duplicates.

Why reject rather than archive the older row: the table then behaves, a few minutes early,
exactly as it will for good (a plain INSERT of an existing key fails with unique_violation,
SQLSTATE 23505, naming the constraint), the writer learns at once that its row was not stored,
and no row of the app's is moved while the app is writing it. Upserts are not affected: ON
CONFLICT needs the unique index to exist, and once it does, a conflicting upsert takes its
UPDATE path, which the guard does not check.

Two AFTER triggers (insert, and update of a key column) call one SECURITY DEFINER function in
the private schema: it sees rows that row level security hides from the writer, with a fixed
search_path. Writers of the same new key are serialized through a unique "claims" table: the
second waits for the first to commit, then sees its row. Created under the lock timeout and
recorded in the ledger in one transaction; dropped with the promotion, in one transaction; a
re-run or the downgrade removes a guard a killed run left behind.
"""

from alembic_lossless_unique.ddl import ledger, partitions, private_schema
from alembic_lossless_unique.ddl.comparisons import Comparisons, regclass
from alembic_lossless_unique.ddl.indexes import under_lock_retries
from alembic_lossless_unique.ddl.sqltext import dollar_quoted, ident, idents, literal, literal_array
from alembic_lossless_unique.operations.target import KeyElement, UniqueTarget
from alembic_lossless_unique.runtime.database import Database
from alembic_lossless_unique.runtime.locks import with_table_lock_retries


def exists_sql(target: UniqueTarget) -> str:
    """An SQL boolean: a guard (its triggers or its claims table) is on the table."""
    return (
        "(EXISTS (SELECT 1 FROM pg_catalog.pg_trigger"
        f" WHERE tgrelid = pg_catalog.to_regclass({literal(target.qualified_table)})"
        f" AND tgname = ANY ({literal_array(target.guard_triggers)}))"
        f" OR pg_catalog.to_regclass({literal(target.guard_claims)}) IS NOT NULL)"
    )


def exists(db: Database, target: UniqueTarget) -> bool:
    return bool(db.scalar("SELECT " + exists_sql(target)))


def install_statements(target: UniqueTarget, operators: dict[str, str]) -> list[str]:
    """The guard, from nothing (a leftover one goes first); `operators` maps each key column to
    its equality operator (comparisons.py). Shared by the online path and the offline script."""
    key = target.key
    values = ", ".join(
        e.value if e.is_column else f"{e.value} AS {ident(e.column)}" for e in key.elements
    )
    return [
        *drop_statements(target),
        f"CREATE UNLOGGED TABLE {target.guard_claims} AS"
        f" SELECT {values} FROM {target.qualified_table} WITH NO DATA",
        claims_key_sql(target),
        function_sql(target, operators),
        *trigger_statements(target),
        # Whatever default privileges granted on them, to PUBLIC or anyone.
        private_schema.lock_down_sql(target.private_schema),
    ]


def claims_key_sql(target: UniqueTarget) -> str:
    """The claims' own unique, which makes a second writer of a new key wait for the first: a
    primary key, or where NULLs conflict a unique that finds them alike."""
    key = idents(target.key.columns)
    if target.nulls_not_distinct:
        return f"ALTER TABLE {target.guard_claims} ADD UNIQUE NULLS NOT DISTINCT ({key})"
    return f"ALTER TABLE {target.guard_claims} ADD PRIMARY KEY ({key})"


def operators_sql(target: UniqueTarget) -> str:
    """A text[] expression: each key column's equality operator, in the key's order (the key
    element's own where it has one; else the column type's, looked up where it runs)."""
    key = target.key
    known = {e.column: e.operator for e in key.elements if e.operator is not None}
    return Comparisons(key.columns, known).operators_sql(regclass(target.qualified_table))


def install(db: Database, target: UniqueTarget) -> None:
    key = target.key
    operators = db.scalar("SELECT " + operators_sql(target))
    statements = install_statements(target, dict(zip(key.columns, operators, strict=True)))
    if exists(db, target):  # a leftover's triggers are dropped first
        statements = lock_first(db, target) + statements

    def create() -> None:
        for statement in statements:
            db.execute(statement)
        ledger.record(db, target, "guard_installed", triggers=list(target.guard_triggers))

    with_table_lock_retries(db, target, "install the duplicate guard", create)


def remove(db: Database, target: UniqueTarget) -> None:
    """Drop the guard in one short transaction of its own (a re-run, a failed run)."""
    under_lock_retries(
        db,
        target,
        "remove the duplicate guard",
        *lock_first(db, target),
        *drop_statements(target),
        record_removed_sql(target),
    )


def lock_first(db: Database, target: UniqueTarget) -> list[str]:
    """On a partitioned table, the statements that drop the guard's triggers lock each partition
    (its copy of the trigger) before the partitioned table itself, the reverse of an insert's
    order: the partitioned table is locked first, so that they wait for the app's inserts
    instead of deadlocking with one."""
    if not partitions.is_partitioned(db, target):
        return []
    return [f"LOCK TABLE {target.qualified_table} IN ACCESS EXCLUSIVE MODE"]


def drop_statements(target: UniqueTarget) -> list[str]:
    return [
        *(
            f"DROP TRIGGER IF EXISTS {ident(name)} ON {target.qualified_table}"
            for name in target.guard_triggers
        ),
        f"DROP FUNCTION IF EXISTS {target.guard_function}()",
        f"DROP TABLE IF EXISTS {target.guard_claims}",
    ]


def record_removed_sql(target: UniqueTarget) -> str:
    return f"INSERT INTO {target.ledger} (action, detail) VALUES ('guard_removed', '{{}}'::jsonb)"


def trigger_statements(target: UniqueTarget) -> list[str]:
    key = target.key
    on_insert, on_update = target.guard_triggers
    # Every update where the key's columns are not known when the statement is written (the
    # offline script's probe reads them as it runs): the function skips those that leave it.
    of = f" OF {idents(key.referenced)}" if key.referenced else ""
    update_of = f"AFTER UPDATE{of} ON {target.qualified_table}"
    if not key.plain:
        # A trigger's WHEN takes no subquery: the function itself skips rows the key does not
        # judge, and updates that leave the key as it was.
        return [
            f"CREATE TRIGGER {ident(on_insert)} AFTER INSERT ON {target.qualified_table}"
            f" FOR EACH ROW EXECUTE FUNCTION {target.guard_function}()",
            f"CREATE TRIGGER {ident(on_update)} {update_of}"
            f" FOR EACH ROW EXECUTE FUNCTION {target.guard_function}()",
        ]
    keyed = target.key_is_set("NEW")
    key_changed = " OR ".join(
        f"OLD.{ident(c)} IS DISTINCT FROM NEW.{ident(c)}" for c in target.columns
    )
    return [
        f"CREATE TRIGGER {ident(on_insert)} AFTER INSERT ON {target.qualified_table}"
        f" FOR EACH ROW WHEN ({keyed}) EXECUTE FUNCTION {target.guard_function}()",
        f"CREATE TRIGGER {ident(on_update)} {update_of}"
        f" FOR EACH ROW WHEN ({keyed} AND ({key_changed}))"
        f" EXECUTE FUNCTION {target.guard_function}()",
    ]


def function_sql(target: UniqueTarget, operators: dict[str, str]) -> str:
    key = target.key
    # The new row's key, in a record whose name no column can take; a plain key reads NEW.
    new = "NEW" if key.plain else NEW_KEY
    # PostgreSQL writes a NULL in the key as `null` in its DETAIL.
    key_text = " || ', ' || ".join(f"coalesce({new}.{ident(c)}::text, 'null')" for c in key.columns)
    # Word for word what the unique will say, so that the app handles both alike.
    message = f'duplicate key value violates unique constraint "{target.constraint_name}"'
    hint = (
        f"{target.display_table} is being given this {target.kind};"
        " its migration rejects duplicates from now on."
    )
    body = f"""{_declare_and_read_key(target)}
    -- A second writer of the same new key waits here until the first commits.
    INSERT INTO {target.guard_claims} ({idents(key.columns)})
    VALUES ({idents(key.columns, new + ".")})
    ON CONFLICT DO NOTHING;
    IF {_rows_of_the_key(target, operators, new)} > 1 THEN
        RAISE EXCEPTION USING
            ERRCODE = 'unique_violation',
            MESSAGE = {literal(message)},
            DETAIL = pg_catalog.format('Key (%s)=(%s) already exists.',
                                       {literal(", ".join(e.printed for e in key.elements))},
                                       {key_text}),
            HINT = {literal(hint)},
            CONSTRAINT = {literal(target.constraint_name)},
            TABLE = {literal(target.table)},
            SCHEMA = {literal(target.schema)};
    END IF;
    RETURN NULL;
END
"""
    return (
        f"CREATE OR REPLACE FUNCTION {target.guard_function}() RETURNS trigger"
        " LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp"
        f" AS {dollar_quoted(body, 'guard')}"
    )


# plpgsql variables of the guard: a row's key values and whether the key judges it. Their
# prefix keeps them apart from any column an index expression reads.
NEW_KEY, OLD_KEY = "lossless_guard_new", "lossless_guard_old"


def _declare_and_read_key(target: UniqueTarget) -> str:
    """plpgsql, the function's start: for a key other than plain columns, NEW's key values and
    whether the key judges NEW (its predicate, its NULLs rule), computed in a scope where only
    NEW's columns are; a row the key does not judge, or an update that leaves its key as it
    was, is let through at once (the triggers' WHEN does that for plain columns)."""
    key = target.key
    if key.plain:
        return "\nBEGIN"
    values = ", ".join(f"{e.value} AS {ident(e.column)}" for e in key.elements)
    judged = key.predicate or "true"
    if not key.nulls_not_distinct:
        judged += "".join(f" AND {e.value} IS NOT NULL" for e in key.elements)
    read = (
        f"SELECT {values}, ({judged}) AS lossless_judged INTO {{row_key}}"
        f" FROM (SELECT {{row}}.*) AS lossless_row;"
    )
    same_key = " AND ".join(
        f"{OLD_KEY}.{ident(c)} IS NOT DISTINCT FROM {NEW_KEY}.{ident(c)}" for c in key.columns
    )
    return f"""
DECLARE
    {NEW_KEY} record;
    {OLD_KEY} record;
BEGIN
    {read.format(row_key=NEW_KEY, row="NEW")}
    IF NOT coalesce({NEW_KEY}.lossless_judged, false) THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'UPDATE' THEN
        {read.format(row_key=OLD_KEY, row="OLD")}
        IF coalesce({OLD_KEY}.lossless_judged, false) AND {same_key} THEN
            RETURN NULL;
        END IF;
    END IF;"""


def _rows_of_the_key(target: UniqueTarget, operators: dict[str, str], new: str) -> str:
    """A plpgsql expression: how many rows (up to 2) hold the key of `new` (NEW, or the record
    of its key values), in a single-table scope where the key's expressions read the table's
    row. Where NULLs conflict (NULLS NOT DISTINCT), a key with a NULL is looked up apart, so
    that the common case keeps a plain equality the table's indexes serve."""
    key = target.key
    admitted = "" if key.predicate is None else f"({key.predicate}) AND "

    def rows(where: str) -> str:
        return (
            f"(SELECT pg_catalog.count(*) FROM (SELECT 1 FROM {target.qualified_table} t"
            f" WHERE {admitted}{where} LIMIT 2) AS same)"
        )

    def value(element: KeyElement) -> str:
        return f"t.{element.value}" if key.plain else element.value

    equal = [f"{value(e)} {operators[e.column]} {new}.{ident(e.column)}" for e in key.elements]
    plain = rows(" AND ".join(equal))
    if not target.nulls_not_distinct:
        return plain
    alike = " AND ".join(
        f"({value(e)} IS NULL AND {new}.{ident(e.column)} IS NULL OR {equal_e})"
        for e, equal_e in zip(key.elements, equal, strict=True)
    )
    has_null = " OR ".join(f"{new}.{ident(c)} IS NULL" for c in key.columns)
    return f"(CASE WHEN {has_null} THEN {rows(alike)} ELSE {plain} END)"
