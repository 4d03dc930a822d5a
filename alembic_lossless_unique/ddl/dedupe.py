"""Duplicate keyed rows are moved aside, never destroyed, and whatever pointed at them follows
the row that stays.

Of each group of rows sharing a key, the row that stays is the greatest by `keep_newest_by`
(NULL oldest), then by `row_identity`: stable across dumps, restores and replicas, unlike ctid.
Rows with a NULL in a key column never conflict on a unique and are never touched.

The dedupe is two plpgsql blocks, the same text online and offline (offline in one
transaction; online the list in one, then the move a batch of keys per transaction, each batch
its own work table: see convergence.archive_duplicates):

1. list: a parallel hash semi-join of the table with itself finds the rows that share their key
   with another row. Parallel workers never run a statement that writes, so the list goes into
   a work table (CREATE TABLE AS may use them).
2. move: lock every listed row FOR UPDATE as it is now (at its listed ctid when unchanged, else
   found again by its primary key, whatever the app did to it since the list), rank each key
   again under those locks, re-point every child row from a row to archive to the row kept for
   its key, recording each re-pointing, then delete those rows and insert them into the
   archive in one statement, and check the counts: rows ranked to go = rows deleted = rows
   archived. A user trigger that changes that (a soft-delete BEFORE DELETE trigger, say) rolls
   the transaction back, naming the trigger. Writes the app makes to those rows meanwhile wait
   for the move's commit; nothing it changed is skipped, so one move leaves no duplicate that
   the guard saw.
"""

from alembic_lossless_unique.ddl import foreign_keys, ledger, private_schema
from alembic_lossless_unique.ddl.comparisons import (
    Comparisons,
    escape_format,
    fmt_ident,
    fmt_idents,
    regclass,
)
from alembic_lossless_unique.ddl.sqltext import (
    derived_name,
    dollar_quoted,
    idents,
    joined_sql,
    literal,
    literal_array,
)
from alembic_lossless_unique.operations.target import UniqueTarget

# Internal column names of the work table; unusual enough not to meet a user's column.
ROW_CTID = "lossless_row_ctid"
POSITION = "lossless_position"
GROUP_SIZE = "lossless_group_size"
BATCH = "lossless_batch"
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
    {replica_identity_full_plpgsql(target.archive)}
    {replica_identity_full_plpgsql(target.repointed)}
END
"""
    return f"DO {dollar_quoted(body, 'archive')}"


def replica_identity_full_plpgsql(relation: str) -> str:
    """A plpgsql statement: `relation` (a table with no key: append-only) identifies its rows
    to logical replication by all their columns, so that the downgrade may delete from it while
    a publication (FOR ALL TABLES, FOR TABLES IN SCHEMA) carries it to a replica or a CDC
    stream; without one, PostgreSQL refuses the delete."""
    return f"""IF (SELECT relreplident FROM pg_catalog.pg_class
         WHERE oid = {regclass(relation)}) <> 'f' THEN
        ALTER TABLE {relation} REPLICA IDENTITY FULL;
    END IF;"""


def member_columns(target: UniqueTarget) -> tuple[str, ...]:
    """What the dedupe keeps of each row of a duplicate group: its key (the values of the key's
    elements, as columns) and its ranking."""
    return tuple(dict.fromkeys(target.key.columns + target.ranking))


def comparisons(target: UniqueTarget) -> Comparisons:
    """Placeholders for the operators of every column the dedupe compares (a key element's
    own, where its index names one)."""
    known = {e.column: e.operator for e in target.key.elements if e.operator is not None}
    return Comparisons(member_columns(target), known)


def keyed_rows(target: UniqueTarget) -> str:
    """A format() template of the relation the dedupe lists from: the rows the unique judges,
    with their key values as columns (key.keyed_rows)."""
    return escape_format(target.key.keyed_rows(target.qualified_table, target.ranking))


def current_members(target: UniqueTarget, alias: str) -> str:
    """A format() template: the member columns of the live row `alias`, as it is now (a key
    element's value computed from the row)."""
    elements = {e.column: e for e in target.key.elements}
    return ", ".join(
        escape_format(elements[c].of(alias)) if c in elements else f"{alias}.{fmt_ident(c)}"
        for c in member_columns(target)
    )


def _in_duplicate_groups(target: UniqueTarget) -> str:
    """A format() template: every keyed row that shares its key with another row, by ctid,
    with its key and ranking (a hash semi-join of the table with itself)."""
    compare = comparisons(target)
    table = keyed_rows(target)
    key = target.key.columns
    keys_not_null = " AND ".join(f"{{alias}}.{fmt_ident(c)} IS NOT NULL" for c in key)
    members = fmt_idents(member_columns(target), "c.")
    with_nulls = ""
    if target.nulls_not_distinct:
        # Keys holding NULLs conflict too, but equality never matches a NULL: those rows (few,
        # as a rule) are grouped apart, where PARTITION BY finds NULLs alike, as the index does.
        any_null = " OR ".join(f"c.{fmt_ident(c)} IS NULL" for c in key)
        with_nulls = f"""
    UNION ALL
    SELECT {ROW_CTID}, {fmt_idents(member_columns(target))}
      FROM (SELECT c.ctid AS {ROW_CTID}, {members},
                   pg_catalog.count(*) OVER (PARTITION BY {fmt_idents(key, "c.")})
                       AS {GROUP_SIZE}
              FROM {table} c
             WHERE {any_null}) AS keyed_with_nulls
     WHERE {GROUP_SIZE} > 1"""
    return f"""
    SELECT c.ctid AS {ROW_CTID}, {members}
      FROM {table} c
     WHERE {keys_not_null.format(alias="c")}
       AND EXISTS (SELECT 1 FROM {table} other
                    WHERE {keys_not_null.format(alias="other")}
                      AND {compare.equal("other", "c", key)}
                      AND other.ctid <> c.ctid){with_nulls}"""


def _losers_of(target: UniqueTarget, members: str) -> str:
    """The rows of `members` (a relation or subquery with the member columns and a ctid) that
    are not the greatest of their key, with their key, ranking and the kept row's identity, in
    ctid order (so the move reads each heap page once)."""
    order = ", ".join(f"{fmt_ident(c)} DESC NULLS LAST" for c in target.ranking)
    kept = ", ".join(
        f"pg_catalog.first_value({fmt_ident(c)}) OVER newest_first AS {fmt_ident(work_kept(c))}"
        for c in target.row_identity
    )
    columns = fmt_idents(member_columns(target))
    keys_not_null = (
        "true"
        if target.nulls_not_distinct
        else " AND ".join(f"{fmt_ident(c)} IS NOT NULL" for c in target.key.columns)
    )
    return f"""
SELECT {ROW_CTID}, {columns}, {fmt_idents(work_kept(c) for c in target.row_identity)}
  FROM (SELECT {ROW_CTID}, {columns},
               pg_catalog.row_number() OVER newest_first AS {POSITION}, {kept}
          FROM {members} AS members
         WHERE {keys_not_null}
        WINDOW newest_first AS (PARTITION BY {fmt_idents(target.key.columns)} ORDER BY {order})
       ) AS ranked
 WHERE {POSITION} > 1
 ORDER BY {ROW_CTID}"""


def losers_select(target: UniqueTarget) -> tuple[str, Comparisons]:
    """Every row but the kept one of each duplicate group, with the identity of the row that
    stays, as the table is now: a format() template whose placeholders are the operators of
    the member columns. Preflight counts it; the move ranks the same way under row locks."""
    members = f"({_in_duplicate_groups(target)})"
    return _losers_of(target, members), comparisons(target)


def list_statement(target: UniqueTarget) -> tuple[str, Comparisons]:
    """CREATE TABLE AS of every row in a duplicate group, in the work table, in ctid order (the
    move locks them in that order, reading each heap page once)."""
    return (
        f"CREATE UNLOGGED TABLE {escape_format(target.work)} AS{_in_duplicate_groups(target)}"
        f"\n     ORDER BY {ROW_CTID}",
        comparisons(target),
    )


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


def batches_sql(target: UniqueTarget, keys_per_batch: int) -> list[str]:
    """The online move's batches: the work table's rows numbered by batch, `keys_per_batch`
    keys to a batch (every row of a key in the same batch), indexed by batch so that each
    batch is read alone. Keys sort by their types' default ordering, which needs no operator
    looked up by name."""
    return [
        f"DROP TABLE IF EXISTS {target.batches}",
        f"CREATE UNLOGGED TABLE {target.batches} AS SELECT w.*,"
        f" (pg_catalog.dense_rank() OVER (ORDER BY {idents(target.key.columns, 'w.')}) - 1)"
        f" / {int(keys_per_batch)} AS {BATCH} FROM {target.work} w",
        f"CREATE INDEX ON {target.batches} ({BATCH})",
        f"DROP TABLE {target.work}",
        # It outlives its transaction: closed to every other role before that commits.
        private_schema.lock_down_sql(target.private_schema),
    ]


def batch_count_sql(target: UniqueTarget) -> str:
    return f"SELECT coalesce(pg_catalog.max({BATCH}) + 1, 0) FROM {target.batches}"


def batch_work_sql(target: UniqueTarget, batch: int) -> str:
    """The work table of one batch: its rows of the listed ones, in ctid order."""
    return (
        f"CREATE UNLOGGED TABLE {target.work} AS SELECT {ROW_CTID},"
        f" {idents(member_columns(target))} FROM {target.batches}"
        f" WHERE {BATCH} = {int(batch)} ORDER BY {ROW_CTID}"
    )


def locked_work(target: UniqueTarget) -> str:
    """The move's table of the listed rows as they are once locked; it lives inside the move."""
    return target.private(derived_name(target.constraint_name, "locked"))


def lock_changed_sql(target: UniqueTarget) -> str:
    """A format() template: lock the listed rows the app changed since the list (not locked at
    their listed ctid), found again by their identity, as they are now.

    The listed rows not locked yet are found first (a materialized CTE), then joined to the
    table. As one join, the planner would estimate the join of the listed rows with the table
    on a row identity of several columns (as a partitioned table's must be) at one row, since
    it multiplies the columns' selectivities, and check every listed row against every locked
    one in a nested loop: 45 s a batch of 10,000 keys (30,000 rows) at 1M rows."""
    compare = comparisons(target)
    live, work = escape_format(target.qualified_table), escape_format(target.work)
    locked = escape_format(locked_work(target))
    admitted = ""
    if target.key.predicate is not None:
        admitted = f"\n WHERE {escape_format(target.key.admits('c'))}"
    return f"""
WITH not_locked AS MATERIALIZED (
    SELECT w.* FROM {work} w
     WHERE NOT EXISTS (SELECT 1 FROM {locked} l
                        WHERE {compare.equal("l", "w", target.row_identity)}))
INSERT INTO {locked}
SELECT c.ctid, {current_members(target, "c")}
  FROM not_locked w JOIN {live} c ON {compare.equal("c", "w", target.row_identity)}{admitted}
   FOR UPDATE OF c"""


def move_sql(target: UniqueTarget) -> str:
    """The move step: lock every listed row as it is now, rank each key again, re-point
    children, delete and archive, check, record.

    Between the list and the move the app may have updated, deleted or re-keyed listed rows
    (an update gives a row a new ctid, and may change which row of its key is the newest). So
    the move first locks every row of every listed group FOR UPDATE: at its listed ctid when it
    is still that version, else found again by its identity (the row's primary key), in its
    current version. No new row can join a listed key meanwhile (the guard rejects it), so
    these are all the rows of those keys, and ranking them again under the lock decides the
    kept row exactly; nothing is skipped, and every count check is exact.
    """
    table = regclass(target.qualified_table)
    compare = comparisons(target)
    live, work = escape_format(target.qualified_table), escape_format(target.work)
    locked = escape_format(locked_work(target))
    same_identity = compare.equal("c", "w", target.row_identity)
    unchanged = compare.same("c", "w", target.ranking)
    current = current_members(target, "c")
    # A row the app has taken out of the partial index's predicate since the list is no longer
    # the key's: never locked, ranked or moved.
    admitted = ""
    if target.key.predicate is not None:
        admitted = f" AND {escape_format(target.key.admits('c'))}"
    lock_unchanged = f"""
INSERT INTO {locked}
SELECT c.ctid, {current}
  FROM {live} c JOIN {work} w ON c.ctid = w.{ROW_CTID}
 WHERE c.ctid = ANY (ARRAY(SELECT {ROW_CTID} FROM {work})) AND {same_identity}{admitted}
   FOR UPDATE OF c"""
    lock_changed = lock_changed_sql(target)
    rank_again = f"CREATE UNLOGGED TABLE {work} AS{_losers_of(target, locked)}"
    kept_identity = compare.equal(
        "k", "w", target.row_identity, renamed={c: work_kept(c) for c in target.row_identity}
    )
    work_kept_columns = [work_kept(c) for c in target.row_identity]
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
    sample_keys = f"""
SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_array({fmt_idents(target.key.columns)}))
  FROM (SELECT DISTINCT {fmt_idents(target.key.columns)} FROM {work} LIMIT 3) AS sample"""
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
    body = f"""
DECLARE
    operators constant text[] := {compare.operators_sql(table)};
    kept_join constant text := pg_catalog.format({literal(kept_identity)}, VARIADIC operators);
    live_columns text;
    removed_columns text;
    bookkeeping text;
    members bigint;
    still_listed bigint;
    changed bigint;
    listed bigint;
    deleted bigint;
    archived bigint;
    groups bigint;
    keys jsonb;
    triggers_off boolean := false;
    fk record;
    repointed bigint;
    repointed_total jsonb := '{{}}'::jsonb;
    interfering text;
BEGIN
    -- Foreign keys are not checked while user triggers are skipped: the rows that stay are
    -- locked below before anything is pointed at them.
    {skip_user_triggers_sql()}
    SELECT pg_catalog.count(*) INTO members FROM {target.work};
    DROP TABLE IF EXISTS {locked_work(target)};
    CREATE UNLOGGED TABLE {locked_work(target)} AS
        SELECT * FROM {target.work} WITH NO DATA;
    -- Every row of the listed groups, locked as it is now; none of them changes again until
    -- the move commits.
    EXECUTE pg_catalog.format({literal(lock_unchanged)}, VARIADIC operators);
    GET DIAGNOSTICS still_listed = ROW_COUNT;
    EXECUTE pg_catalog.format({literal(lock_changed)}, VARIADIC operators);
    GET DIAGNOSTICS changed = ROW_COUNT;
    -- Ranked again as they are now: the rows to archive, and the row each key keeps.
    DROP TABLE {target.work};
    EXECUTE pg_catalog.format({literal(rank_again)}, VARIADIC operators);
    DROP TABLE {locked_work(target)};
    SELECT pg_catalog.count(*) INTO listed FROM {target.work};
    EXECUTE pg_catalog.format({literal(sample_keys)}) INTO keys;
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
    IF deleted <> archived OR deleted <> listed THEN
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
        'changed_since_listed', changed, 'gone_since_listed', members - still_listed - changed,
        'sample_keys', coalesce(keys, '[]'::jsonb),
        'triggers_skipped', triggers_off, 'repointed', repointed_total)
        || {ledger.partition_detail_sql(target)});
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
