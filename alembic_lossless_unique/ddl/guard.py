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

from alembic_lossless_unique.ddl import ledger, private_schema
from alembic_lossless_unique.ddl.comparisons import Comparisons, regclass
from alembic_lossless_unique.ddl.indexes import under_lock_retries
from alembic_lossless_unique.ddl.sqltext import dollar_quoted, ident, idents, literal, literal_array
from alembic_lossless_unique.operations.target import UniqueTarget
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
    return [
        *drop_statements(target),
        f"CREATE UNLOGGED TABLE {target.guard_claims} AS"
        f" SELECT {idents(target.columns)} FROM {target.qualified_table} WITH NO DATA",
        claims_key_sql(target),
        function_sql(target, operators),
        *trigger_statements(target),
        # Whatever default privileges granted on them, to PUBLIC or anyone.
        private_schema.lock_down_sql(target.private_schema),
    ]


def claims_key_sql(target: UniqueTarget) -> str:
    """The claims' own unique, which makes a second writer of a new key wait for the first: a
    primary key, or where NULLs conflict a unique that finds them alike."""
    if target.nulls_not_distinct:
        return (
            f"ALTER TABLE {target.guard_claims}"
            f" ADD UNIQUE NULLS NOT DISTINCT ({idents(target.columns)})"
        )
    return f"ALTER TABLE {target.guard_claims} ADD PRIMARY KEY ({idents(target.columns)})"


def install(db: Database, target: UniqueTarget) -> None:
    operators = db.scalar(
        "SELECT " + Comparisons(target.columns).operators_sql(regclass(target.qualified_table))
    )
    statements = install_statements(target, dict(zip(target.columns, operators, strict=True)))

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
        *drop_statements(target),
        record_removed_sql(target),
    )


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
    keyed = target.key_is_set("NEW")
    key_changed = " OR ".join(
        f"OLD.{ident(c)} IS DISTINCT FROM NEW.{ident(c)}" for c in target.columns
    )
    on_insert, on_update = target.guard_triggers
    return [
        f"CREATE TRIGGER {ident(on_insert)} AFTER INSERT ON {target.qualified_table}"
        f" FOR EACH ROW WHEN ({keyed}) EXECUTE FUNCTION {target.guard_function}()",
        f"CREATE TRIGGER {ident(on_update)} AFTER UPDATE OF {idents(target.columns)}"
        f" ON {target.qualified_table} FOR EACH ROW WHEN ({keyed} AND ({key_changed}))"
        f" EXECUTE FUNCTION {target.guard_function}()",
    ]


def function_sql(target: UniqueTarget, operators: dict[str, str]) -> str:
    # PostgreSQL writes a NULL in the key as `null` in its DETAIL.
    key_text = " || ', ' || ".join(
        f"coalesce(NEW.{ident(c)}::text, 'null')" for c in target.columns
    )
    # Word for word what the constraint will say, so that the app handles both alike.
    message = f'duplicate key value violates unique constraint "{target.constraint_name}"'
    hint = (
        f"{target.display_table} is being given this unique constraint;"
        " its migration rejects duplicates from now on."
    )
    body = f"""
BEGIN
    -- A second writer of the same new key waits here until the first commits.
    INSERT INTO {target.guard_claims} ({idents(target.columns)})
    VALUES ({idents(target.columns, "NEW.")})
    ON CONFLICT DO NOTHING;
    IF {_rows_of_the_key(target, operators)} > 1 THEN
        RAISE EXCEPTION USING
            ERRCODE = 'unique_violation',
            MESSAGE = {literal(message)},
            DETAIL = pg_catalog.format('Key (%s)=(%s) already exists.',
                                       {literal(", ".join(target.columns))}, {key_text}),
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


def _rows_of_the_key(target: UniqueTarget, operators: dict[str, str]) -> str:
    """A plpgsql expression: how many rows (up to 2) hold NEW's key. Where NULLs conflict
    (NULLS NOT DISTINCT), a key with a NULL is looked up apart, so that the common case keeps
    a plain equality the table's indexes serve."""

    def rows(where: str) -> str:
        return (
            f"(SELECT pg_catalog.count(*) FROM (SELECT 1 FROM {target.qualified_table} t"
            f" WHERE {where} LIMIT 2) AS same)"
        )

    equal = [f"t.{ident(c)} {operators[c]} NEW.{ident(c)}" for c in target.columns]
    plain = rows(" AND ".join(equal))
    if not target.nulls_not_distinct:
        return plain
    alike = " AND ".join(
        f"(t.{ident(c)} IS NULL AND NEW.{ident(c)} IS NULL OR {equal_c})"
        for c, equal_c in zip(target.columns, equal, strict=True)
    )
    return f"(CASE WHEN {target.key_has_null('NEW')} THEN {rows(alike)} ELSE {plain} END)"
