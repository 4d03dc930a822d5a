"""Duplicate keyed rows are moved aside, never destroyed, and whatever pointed at them follows
the row that stays.

Of each group of rows sharing a key, the row that stays is the greatest by `keep_newest_by`
(NULL oldest), then by `row_identity`: stable across dumps, restores and replicas, unlike ctid.
Rows with a NULL in a key column never conflict on a unique and are never touched.

The dedupe is one transaction of two plpgsql blocks, the same text online and offline:

1. list: a parallel hash semi-join of the table with itself finds the rows that share their key
   with another row, and only those are ranked. Parallel workers never run a statement that
   writes, so the list goes into a work table (CREATE TABLE AS may use them), in ctid order so
   the move reads each heap page once.
2. move: lock the listed rows that are still as listed (only when foreign keys point at the
   table or user triggers would fire: then the set must not change under the re-pointing, and
   the count check must be exact), re-point every child row from an archived row to the row
   kept for its key, recording each re-pointing, then delete the listed rows and insert them
   into the archive in one statement, and check the counts: rows listed = rows deleted = rows
   archived. A user trigger that changes that (a soft-delete BEFORE DELETE trigger, say) rolls
   the transaction back, naming the trigger.
"""

from alembic_lossless_unique import foreign_keys
from alembic_lossless_unique.comparisons import (
    Comparisons,
    escape_format,
    fmt_ident,
    fmt_idents,
    regclass,
)
from alembic_lossless_unique.sqltext import (
    dollar_quoted,
    joined_sql,
    literal,
    literal_array,
)
from alembic_lossless_unique.target import UniqueTarget

# Internal column names of the work table; unusual enough not to meet a user's column.
ROW_CTID = "lossless_row_ctid"
POSITION = "lossless_position"
BOOKKEEPING_PREFIX = "lossless_unique_"
# SQLSTATEs of this package's own refusals and failed checks, so callers tell them apart.
REFUSED = "LU001"
CHECK_FAILED = "LU002"


def work_kept(column: str) -> str:
    return f"lossless_kept_{column}"


def bookkeeping_columns(target: UniqueTarget) -> tuple[str, ...]:
    """The archive's own columns, unprefixed; prefixed when the table already has one."""
    return (*target.kept_columns, "archived_at", "archived_reason")


def archive_sql(target: UniqueTarget) -> str:
    """Create the archive (the live table's columns plus which row was kept, when and why) and
    the record of re-pointed child rows, and give the archive every column the table gained
    since it was made (with the table's default, as ADD COLUMN gave the table's own rows)."""
    table = regclass(target.qualified_table)
    kept = ", ".join(
        f"pg_catalog.format('%I %s NOT NULL', prefix || {literal(kept_name)},"
        f" (SELECT pg_catalog.format_type(atttypid, atttypmod) FROM pg_catalog.pg_attribute"
        f" WHERE attrelid = {table} AND attname = {literal(column)}))"
        for column, kept_name in zip(target.row_identity, target.kept_columns, strict=True)
    )
    body = f"""
DECLARE
    prefix text := '';
    added record;
BEGIN
    IF pg_catalog.to_regclass({literal(target.archive)}) IS NULL THEN
        IF EXISTS (SELECT 1 FROM pg_catalog.pg_attribute
                    WHERE attrelid = {table} AND attnum > 0 AND NOT attisdropped
                      AND attname = ANY ({literal_array(bookkeeping_columns(target))})) THEN
            prefix := {literal(BOOKKEEPING_PREFIX)};
        END IF;
        -- No primary key: the archive is append-only and keeps every row version it is given.
        EXECUTE pg_catalog.format(
            'CREATE TABLE %s (LIKE %s, %s, %I timestamptz NOT NULL DEFAULT pg_catalog.now(),'
            ' %I text NOT NULL)',
            {literal(target.archive)}, {literal(target.qualified_table)},
            pg_catalog.concat_ws(', ', {kept}),
            prefix || 'archived_at', prefix || 'archived_reason');
        -- Defence in depth beside the private schema: no policy, so no API role sees a row.
        EXECUTE {literal(f"ALTER TABLE {target.archive} ENABLE ROW LEVEL SECURITY")};
    END IF;
    FOR added IN
        SELECT a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod) AS type,
               pg_catalog.pg_get_expr(d.adbin, d.adrelid) AS default_value
          FROM pg_catalog.pg_attribute a
          LEFT JOIN pg_catalog.pg_attrdef d
                 ON d.adrelid = a.attrelid AND d.adnum = a.attnum AND a.attgenerated = ''
         WHERE a.attrelid = {table} AND a.attnum > 0 AND NOT a.attisdropped
           AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute b
                            WHERE b.attrelid = {regclass(target.archive)}
                              AND b.attname = a.attname AND NOT b.attisdropped)
         ORDER BY a.attnum
    LOOP
        EXECUTE pg_catalog.format('ALTER TABLE %s ADD COLUMN %I %s%s', {literal(target.archive)},
                                  added.attname, added.type,
                                  ' DEFAULT ' || added.default_value);
    END LOOP;
    CREATE TABLE IF NOT EXISTS {target.repointed} (
        constraint_name text NOT NULL,
        child_table text NOT NULL,
        child_row jsonb NOT NULL,
        old_reference jsonb NOT NULL,
        new_reference jsonb NOT NULL,
        repointed_at timestamptz NOT NULL DEFAULT pg_catalog.now()
    );
END
"""
    return f"DO {dollar_quoted(body, 'archive')}"


def losers_select(target: UniqueTarget) -> tuple[str, Comparisons]:
    """Every row but the kept one of each duplicate group, with the identity of the row that
    stays: a format() template whose placeholders are the key's operators. The dedupe stores it
    in the work table; preflight counts it."""
    compare = Comparisons(target.columns)
    table = escape_format(target.qualified_table)
    keys_not_null = " AND ".join(f"{{alias}}.{fmt_ident(c)} IS NOT NULL" for c in target.columns)
    order = ", ".join(f"{fmt_ident(c)} DESC NULLS LAST" for c in target.ranking)
    kept = ", ".join(
        f"pg_catalog.first_value({fmt_ident(c)}) OVER newest_first AS {fmt_ident(work_kept(c))}"
        for c in target.row_identity
    )
    statement = f"""
WITH in_duplicate_groups AS (
    SELECT c.ctid AS {ROW_CTID}, {fmt_idents(target.ranking, "c.")},
           {fmt_idents(target.columns, "c.")}
      FROM {table} c
     WHERE {keys_not_null.format(alias="c")}
       AND EXISTS (SELECT 1 FROM {table} other
                    WHERE {keys_not_null.format(alias="other")}
                      AND {compare.equal("other", "c", target.columns)}
                      AND other.ctid <> c.ctid)
), ranked AS (
    SELECT {ROW_CTID}, {fmt_idents(target.ranking)},
           pg_catalog.row_number() OVER newest_first AS {POSITION},
           {kept}
      FROM in_duplicate_groups
    WINDOW newest_first AS (PARTITION BY {fmt_idents(target.columns)} ORDER BY {order})
)
SELECT {ROW_CTID}, {fmt_idents(target.ranking)},
       {fmt_idents(work_kept(c) for c in target.row_identity)}
  FROM ranked
 WHERE {POSITION} > 1
 ORDER BY {ROW_CTID}"""
    return statement, compare


def list_statement(target: UniqueTarget) -> tuple[str, Comparisons]:
    """CREATE TABLE AS of losers_select, in the work table."""
    select, compare = losers_select(target)
    return f"CREATE UNLOGGED TABLE {escape_format(target.work)} AS{select}", compare


def list_sql(target: UniqueTarget, work_mem: str) -> str:
    """The list step: `work_mem` for this transaction only, never lower than configured."""
    statement, compare = list_statement(target)
    body = f"""
BEGIN
    PERFORM pg_catalog.set_config('work_mem', {literal(work_mem)}, true)
      WHERE pg_catalog.pg_size_bytes(pg_catalog.current_setting('work_mem'))
            < pg_catalog.pg_size_bytes({literal(work_mem)});
    DROP TABLE IF EXISTS {target.work};
    EXECUTE pg_catalog.format({literal(statement)},
                              VARIADIC {compare.operators_sql(regclass(target.qualified_table))});
END
"""
    return f"DO {dollar_quoted(body, 'list')}"


def move_sql(target: UniqueTarget) -> str:
    """The move step: lock, re-point children, delete and archive, check, record."""
    table = regclass(target.qualified_table)
    compare = Comparisons(target.ranking)
    live, work = escape_format(target.qualified_table), escape_format(target.work)
    unchanged = compare.same("c", "w", target.ranking)
    kept_identity = compare.equal(
        "k", "w", target.row_identity, renamed={c: work_kept(c) for c in target.row_identity}
    )
    work_kept_columns = [work_kept(c) for c in target.row_identity]
    lock_listed = f"""
        SELECT 1 FROM {live} c JOIN {work} w ON c.ctid = w.{ROW_CTID}
         WHERE c.ctid = ANY (ARRAY(SELECT {ROW_CTID} FROM {work})) AND {unchanged}
           FOR UPDATE OF c"""
    forget_changed = f"""
        DELETE FROM {work} w WHERE NOT EXISTS (
            SELECT 1 FROM {live} c WHERE c.ctid = w.{ROW_CTID} AND {unchanged})"""
    lock_kept = f"""
        SELECT 1 FROM {live} k JOIN {work} w ON {kept_identity} FOR KEY SHARE OF k"""
    forget_orphans = f"""
        DELETE FROM {work} w WHERE NOT EXISTS (SELECT 1 FROM {live} k WHERE {kept_identity})"""
    n = compare.count
    move = f"""
WITH removed AS (
    DELETE FROM {live} c
     USING {work} w
     WHERE c.ctid = ANY (ARRAY(SELECT {ROW_CTID} FROM {work}))
       AND c.ctid = w.{ROW_CTID} AND {unchanged}
    RETURNING %{n + 1}$s, {fmt_idents(work_kept_columns, "w.")}
), archived AS (
    INSERT INTO {escape_format(target.archive)} (%{n + 2}$s, %{n + 3}$s)
    SELECT %{n + 2}$s, {fmt_idents(work_kept_columns)}, %{n + 4}$L FROM removed
    RETURNING 1
)
SELECT (SELECT pg_catalog.count(*) FROM removed),
       (SELECT pg_catalog.count(*) FROM archived),
       (SELECT pg_catalog.count(*)
          FROM (SELECT DISTINCT {fmt_idents(work_kept_columns)} FROM removed) AS groups)"""
    # Per foreign key (filled by format() in the loop): child table, its columns, the kept
    # row's referenced columns, how the kept row is found, how a child row matches the
    # archived row, and the three records: the child row's identity, old and new reference.
    repoint = f"""
WITH repointed AS (
    UPDATE %1$s ch SET (%2$s) = ROW(%3$s)
      FROM {work} w
      JOIN {live} l ON l.ctid = w.{ROW_CTID}
      JOIN {live} k ON %4$s
     WHERE %5$s
    RETURNING pg_catalog.jsonb_build_object(%6$s), pg_catalog.jsonb_build_object(%7$s),
              pg_catalog.jsonb_build_object(%8$s))
INSERT INTO {escape_format(target.repointed)}
       (constraint_name, child_table, child_row, old_reference, new_reference)
SELECT %9$L, %1$L, repointed.* FROM repointed"""
    user_delete_triggers = user_triggers_sql(target, "DELETE")
    body = f"""
DECLARE
    operators constant text[] := {compare.operators_sql(table)};
    kept_join constant text := pg_catalog.format({literal(kept_identity)}, VARIADIC operators);
    live_columns text;
    removed_columns text;
    bookkeeping text;
    listed bigint;
    changed bigint := 0;
    orphaned bigint := 0;
    deleted bigint;
    archived bigint;
    groups bigint;
    triggers_off boolean := false;
    exact boolean;
    fk record;
    repointed bigint;
    repointed_total jsonb := '{{}}'::jsonb;
    interfering text;
BEGIN
    -- Foreign keys are not checked while user triggers are skipped, which is why the rows
    -- that stay are locked below before anything is pointed at them.
    {skip_user_triggers_sql()}
    SELECT pg_catalog.count(*) INTO listed FROM {target.work};
    exact := EXISTS (SELECT 1 FROM pg_catalog.pg_constraint
                      WHERE contype = 'f' AND confrelid = {table})
             OR (NOT triggers_off AND {user_delete_triggers} IS NOT NULL);
    IF exact THEN
        -- Rows changed since they were listed, and groups whose kept row is gone, stay for
        -- the next attempt; the rest can no longer change until the move commits.
        EXECUTE pg_catalog.format({literal(lock_listed)}, VARIADIC operators);
        EXECUTE pg_catalog.format({literal(forget_changed)}, VARIADIC operators);
        GET DIAGNOSTICS changed = ROW_COUNT;
        EXECUTE pg_catalog.format({literal(lock_kept)}, VARIADIC operators);
        EXECUTE pg_catalog.format({literal(forget_orphans)}, VARIADIC operators);
        GET DIAGNOSTICS orphaned = ROW_COUNT;
        changed := changed + orphaned;
        listed := listed - changed;
        FOR fk IN {foreign_keys.inbound_sql(table)} LOOP
            EXECUTE pg_catalog.format({literal(repoint)},
                fk.child_table,
                (SELECT pg_catalog.string_agg(pg_catalog.quote_ident(c), ', ')
                   FROM pg_catalog.unnest(fk.child_columns) AS c),
                (SELECT pg_catalog.string_agg('k.' || pg_catalog.quote_ident(c), ', ')
                   FROM pg_catalog.unnest(fk.parent_columns) AS c),
                kept_join,
                {
        joined_sql(
            "ch.%I %s l.%I", " AND ", c="fk.child_columns", op="fk.operators", p="fk.parent_columns"
        )
    },
                (SELECT pg_catalog.string_agg(pg_catalog.format('%L, ch.%I', c, c), ', ')
                   FROM pg_catalog.unnest(fk.child_identity) AS c),
                {joined_sql("%L, l.%I", ", ", c="fk.child_columns", p="fk.parent_columns")},
                {joined_sql("%L, k.%I", ", ", c="fk.child_columns", p="fk.parent_columns")},
                fk.constraint_name);
            GET DIAGNOSTICS repointed = ROW_COUNT;
            repointed_total := repointed_total
                || pg_catalog.jsonb_build_object(fk.constraint_name, repointed);
        END LOOP;
    END IF;
    SELECT pg_catalog.string_agg(pg_catalog.quote_ident(attname), ', ' ORDER BY attnum),
           pg_catalog.string_agg('c.' || pg_catalog.quote_ident(attname), ', ' ORDER BY attnum)
      INTO live_columns, removed_columns
      FROM pg_catalog.pg_attribute
     WHERE attrelid = {table} AND attnum > 0 AND NOT attisdropped;
    SELECT pg_catalog.string_agg(pg_catalog.quote_ident(
               CASE WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_attribute
                                  WHERE attrelid = {regclass(target.archive)}
                                    AND attname = {literal(BOOKKEEPING_PREFIX)} || wanted.name)
                    THEN {literal(BOOKKEEPING_PREFIX)} || wanted.name
                    ELSE wanted.name END), ', ' ORDER BY wanted.position)
      INTO bookkeeping
      FROM pg_catalog.unnest({literal_array((*target.kept_columns, "archived_reason"))})
               WITH ORDINALITY AS wanted(name, position);
    EXECUTE pg_catalog.format({literal(move)}, VARIADIC operators
            || ARRAY[removed_columns, live_columns, bookkeeping, {literal(target.archive_reason)}])
       INTO deleted, archived, groups;
    IF deleted <> archived OR (exact AND deleted <> listed) THEN
        {
        raise_trigger_interference_sql(
            target,
            "DELETE",
            "the move of duplicate rows of %s deleted %s of the %s rows it listed and archived %s",
            f"{literal(target.display_table)}, deleted, listed, archived",
            effect="interfered",
            run="the migration",
            again="re-run",
        )
    }
    END IF;
    INSERT INTO {target.ledger} (action, detail)
    VALUES ('archived', pg_catalog.jsonb_build_object(
        'rows', archived, 'groups', groups, 'listed', listed,
        'changed_since_listed', changed, 'triggers_skipped', triggers_off,
        'repointed', repointed_total));
    DROP TABLE {target.work};
END
"""
    return f"DO {dollar_quoted(body, 'move')}"


def skip_user_triggers_sql() -> str:
    """plpgsql: where the role may (superusers, or roles granted SET on
    session_replication_role), no user trigger fires for the rest of the transaction, so none
    sees or changes what the move or the restore does. Sets the boolean variable `triggers_off`
    to whether they are skipped."""
    return """BEGIN
        PERFORM pg_catalog.set_config('session_replication_role', 'replica', true);
        triggers_off := true;
    EXCEPTION WHEN insufficient_privilege THEN
        triggers_off := false;
    END;"""


def raise_trigger_interference_sql(
    target: UniqueTarget,
    event: str,
    what: str,
    what_arguments: str,
    *,
    effect: str,
    run: str,
    again: str,
) -> str:
    """plpgsql, for a statement that found its effect not what it should be (`what`, a format
    string, with its arguments): name the user triggers on `event` that could have done it and
    roll back with one line saying how to run without them. Needs a text variable
    `interfering`."""
    message = (
        f"{what}: %s; nothing was changed. Disable %s for {run}, or let the role skip user"
        f" triggers (GRANT SET ON PARAMETER session_replication_role TO %s), then {again}"
    )
    return f"""interfering := {user_triggers_sql(target, event)};
        RAISE EXCEPTION USING ERRCODE = {literal(CHECK_FAILED)},
            MESSAGE = pg_catalog.format({literal(message)}, {what_arguments},
                coalesce('user trigger ' || interfering || {literal(" " + effect)},
                         {literal("something " + effect)}),
                coalesce(interfering, 'the user triggers'), current_user);"""


def user_triggers_sql(target: UniqueTarget, event: str) -> str:
    """An SQL text expression: the enabled user triggers of the table that fire on `event`
    (DELETE or INSERT), as 'name (BEFORE DELETE), ...', or NULL when there are none. Internal
    triggers (foreign keys) and this package's own guard are not user triggers."""
    event_bit = {"INSERT": 4, "DELETE": 8}[event]
    return f"""(SELECT pg_catalog.string_agg(pg_catalog.format('%s (%s {event})', t.tgname,
                    CASE WHEN t.tgtype & 2 <> 0 THEN 'BEFORE'
                         WHEN t.tgtype & 64 <> 0 THEN 'INSTEAD OF' ELSE 'AFTER' END),
                    ', ' ORDER BY t.tgname)
          FROM pg_catalog.pg_trigger t
         WHERE t.tgrelid = {regclass(target.qualified_table)} AND NOT t.tgisinternal
           AND t.tgenabled <> 'D' AND t.tgtype & {event_bit} <> 0
           AND t.tgname <> ALL ({literal_array(target.guard_triggers)}))"""
