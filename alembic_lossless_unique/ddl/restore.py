"""The downgrade's way back: archived rows return to the table, unchanged, and every child row
that the upgrade re-pointed points at its original row again.

One plpgsql block, the same online and offline, inside the downgrade's single transaction (the
one that also drops the constraint and stamps the revision): it either all happens or none of it.
Online, a large archive comes back before that transaction, a batch per transaction
(restore_batch_sql), once the constraint is gone; the final block then finds the archive empty
and points the child rows back.
Where the role may, user triggers do not fire (session_replication_role = replica); foreign
keys are then not checked by triggers either, so the block checks and locks the restored rows'
parents itself. Where it may not lock a parent (no rights on the referenced table: the upgrade
needed none), the triggers fire instead, so that PostgreSQL's own foreign key check, which runs
as the parent's owner, checks and locks those parent rows: the downgrade needs no privilege the
upgrade did not. Generated columns are recomputed; identity values come back as they were.
The restore checks its own effect: every archived row back, identical; otherwise it rolls back,
naming the user triggers that changed the rows.
"""

from alembic_lossless_unique.ddl import foreign_keys, private_schema
from alembic_lossless_unique.ddl.comparisons import escape_format, operators_sql, regclass
from alembic_lossless_unique.ddl.dedupe import (
    BOOKKEEPING_PREFIX,
    CHECK_FAILED,
    bookkeeping_columns,
    raise_trigger_interference_sql,
    replica_identity_full_plpgsql,
    skip_user_triggers_sql,
)
from alembic_lossless_unique.ddl.guard import drop_statements
from alembic_lossless_unique.ddl.sqltext import (
    dollar_quoted,
    joined_sql,
    literal,
    literal_array,
    qualified_relation_sql,
)
from alembic_lossless_unique.operations.target import UniqueTarget


def restorable_columns_sql(target: UniqueTarget, source: str | None = None) -> str:
    """The columns a restore writes: in both the table and the archive (or `source`, a copy of
    its rows), not generated."""
    return f"""
        SELECT a.attname::text AS name, a.attnum, a.attidentity
          FROM pg_catalog.pg_attribute a
         WHERE a.attrelid = {regclass(target.qualified_table)} AND a.attnum > 0
           AND NOT a.attisdropped AND a.attgenerated = ''
           AND EXISTS (SELECT 1 FROM pg_catalog.pg_attribute b
                        WHERE b.attrelid = {regclass(source or target.archive)}
                          AND b.attname = a.attname AND NOT b.attisdropped)"""


# Per outbound foreign key: the distinct references of archived rows (all columns NOT NULL:
# MATCH SIMPLE ignores the others) that no parent row matches. %1$s parent, %2$s columns,
# %3$s not-null test, %4$s match.
_MISSING_PARENTS = """
SELECT pg_catalog.count(*) FROM (SELECT DISTINCT %2$s FROM {archive} WHERE %3$s) AS a
 WHERE NOT EXISTS (SELECT 1 FROM %1$s p WHERE %4$s)"""
_LOCK_PARENTS = """
SELECT 1 FROM %1$s p WHERE EXISTS (SELECT 1 FROM {archive} a WHERE %3$s AND %4$s)
   FOR KEY SHARE OF p"""


def missing_parents_sql(target: UniqueTarget, source: str | None = None) -> str:
    return _MISSING_PARENTS.format(archive=escape_format(source or target.archive))


def lock_parents_sql(target: UniqueTarget, source: str | None = None) -> str:
    return _LOCK_PARENTS.format(archive=escape_format(source or target.archive))


def may_lock_parent_sql(fk: str) -> str:
    """An SQL boolean: the role may read and lock (FOR KEY SHARE) the parent rows of the
    outbound foreign key `fk`: USAGE on its schema, SELECT on the referenced columns, UPDATE on
    a column of it."""
    parent = f"{fk}.parent_table::pg_catalog.regclass"
    return f"""(pg_catalog.has_schema_privilege(
                 (SELECT relnamespace FROM pg_catalog.pg_class WHERE oid = {parent}), 'USAGE')
             AND NOT EXISTS (SELECT 1 FROM pg_catalog.unnest({fk}.parent_columns) AS c
                              WHERE NOT pg_catalog.has_column_privilege({parent}, c, 'SELECT'))
             AND pg_catalog.has_any_column_privilege({parent}, 'UPDATE'))"""


def foreign_key_parts_sql(fk: str, archive_alias: str = "a") -> str:
    """plpgsql expressions for one outbound foreign key `fk`: its columns, the NOT NULL test and
    the match of an archived row against a parent `p`, as format() arguments 2 to 4."""
    return f"""
                (SELECT pg_catalog.string_agg(pg_catalog.quote_ident(c), ', ')
                   FROM pg_catalog.unnest({fk}.child_columns) AS c),
                (SELECT pg_catalog.string_agg(pg_catalog.format('%I IS NOT NULL', c), ' AND ')
                   FROM pg_catalog.unnest({fk}.child_columns) AS c),
                {
        joined_sql(
            f"{archive_alias}.%I %s p.%I",
            " AND ",
            c=f"{fk}.child_columns",
            op=f"{fk}.operators",
            pc=f"{fk}.parent_columns",
        )
    }"""


def restore_batch_sql(target: UniqueTarget, rows: int) -> list[str]:
    """One batch of a restore in batches, inside its own transaction: up to `rows` archived
    rows taken out of the archive into a table that lives inside the transaction (no other
    session ever sees it), then restored from there
    (their parents checked and locked, the rows compared), without pointing child rows back:
    their parents may be in a later batch. Moves nothing once the archive is empty."""
    return [
        f"DROP TABLE IF EXISTS {target.restoring}",
        f"CREATE UNLOGGED TABLE {target.restoring} (LIKE {target.archive})",
        f"WITH batch AS (DELETE FROM {target.archive} WHERE ctid = ANY (ARRAY("
        f"SELECT ctid FROM {target.archive} LIMIT {int(rows)})) RETURNING *)"
        f" INSERT INTO {target.restoring} SELECT * FROM batch",
        restore_sql(target, source=target.restoring),
        f"DROP TABLE {target.restoring}",
    ]


def restore_sql(target: UniqueTarget, source: str | None = None) -> str:
    """Move every archived row back, point re-pointed child rows back, record how many. With
    `source` (a batch of the archive's rows, restore_batch_sql), move those back only."""
    child = "fk.child_table::pg_catalog.regclass"
    archive = escape_format(source or target.archive)
    restore = f"""
WITH moved AS (DELETE FROM {archive} RETURNING %1$s),
     restored AS (INSERT INTO {escape_format(target.qualified_table)} (%1$s)%2$s
                  SELECT %1$s FROM moved RETURNING %1$s)
SELECT (SELECT pg_catalog.count(*) FROM moved),
       (SELECT pg_catalog.count(*) FROM restored),
       (SELECT pg_catalog.count(*)
          FROM (SELECT ROW(%1$s)::text FROM moved
                EXCEPT ALL
                SELECT ROW(%1$s)::text FROM restored) AS differing)"""
    point_back = f"""
WITH back AS (
    UPDATE %1$s ch SET (%2$s) = ROW(%3$s)
      FROM {escape_format(target.repointed)} r,
           LATERAL pg_catalog.jsonb_populate_record(NULL::%1$s, r.child_row) AS key,
           LATERAL pg_catalog.jsonb_populate_record(NULL::%1$s, r.old_reference) AS old,
           LATERAL pg_catalog.jsonb_populate_record(NULL::%1$s, r.new_reference) AS new
     WHERE r.constraint_name = %4$L AND r.child_table = %5$L AND %6$s AND %7$s
    RETURNING 1)
SELECT pg_catalog.count(*) FROM back"""
    outbound = foreign_keys.outbound_sql(regclass(target.qualified_table))
    body = f"""
DECLARE
    triggers_off boolean := false;
    columns text;
    overriding text := '';
    fk record;
    missing bigint;
    moved bigint := 0;
    restored bigint := 0;
    differing bigint := 0;
    recorded bigint;
    pointed bigint;
    pointed_total bigint := 0;
    not_pointed_total bigint := 0;
    key_columns text[];
    reference_columns text[];
    interfering text;
    violated text;
    violated_parent text;
BEGIN
    IF pg_catalog.to_regclass({literal(target.archive)}) IS NULL THEN
        RETURN;
    END IF;
    -- An archive made by an earlier release has no replica identity: deleting from it fails
    -- while a publication carries it.
    {replica_identity_full_plpgsql(target.archive)}
    -- Triggers are skipped only where the block can check and lock every parent itself.
    IF NOT EXISTS (SELECT 1 FROM ({outbound}) AS parent_fk
                    WHERE NOT {may_lock_parent_sql("parent_fk")}) THEN
        {skip_user_triggers_sql()}
    END IF;
    SELECT pg_catalog.string_agg(pg_catalog.quote_ident(c.name), ', ' ORDER BY c.attnum),
           CASE WHEN pg_catalog.bool_or(c.attidentity = 'a') THEN ' OVERRIDING SYSTEM VALUE'
                ELSE '' END
      INTO columns, overriding
      FROM ({restorable_columns_sql(target, source)}) AS c;
    -- The restored rows' own parents must exist, and stay until the commit. Those the role
    -- may not lock are left to the foreign key's own trigger, which fires for this restore.
    FOR fk IN {foreign_keys.outbound_sql(regclass(target.qualified_table))} LOOP
        CONTINUE WHEN NOT {may_lock_parent_sql("fk")};
        EXECUTE pg_catalog.format({literal(missing_parents_sql(target, source))},
                                  fk.parent_table, {foreign_key_parts_sql("fk")}) INTO missing;
        IF missing > 0 THEN
            RAISE EXCEPTION USING ERRCODE = {literal(CHECK_FAILED)},
                MESSAGE = pg_catalog.format(
                    'archived rows of %s reference %s rows of %s that no longer exist (foreign'
                    ' key %s): nothing was changed; restore those rows of %s, or delete the'
                    ' archived rows that reference them from %s, then downgrade again',
                    {literal(target.display_table)}, missing, fk.parent_table,
                    fk.constraint_name, fk.parent_table, {literal(target.archive)});
        END IF;
        EXECUTE pg_catalog.format({literal(lock_parents_sql(target, source))},
                                  fk.parent_table, {foreign_key_parts_sql("fk")});
    END LOOP;
    IF columns IS NOT NULL THEN
        BEGIN
            EXECUTE pg_catalog.format({literal(restore)}, columns, overriding)
               INTO moved, restored, differing;
        EXCEPTION WHEN foreign_key_violation THEN  -- a parent the block could not check
            GET STACKED DIAGNOSTICS violated = CONSTRAINT_NAME;
            SELECT {qualified_relation_sql("con.confrelid")} INTO violated_parent
              FROM pg_catalog.pg_constraint con
             WHERE con.conname = violated
               AND con.conrelid = {regclass(target.qualified_table)};
            RAISE EXCEPTION USING ERRCODE = {literal(CHECK_FAILED)},
                MESSAGE = pg_catalog.format(
                    'archived rows of %s reference rows of %s that no longer exist (foreign'
                    ' key %s): nothing was changed; restore those rows of %s, or delete the'
                    ' archived rows that reference them from %s, then downgrade again',
                    {literal(target.display_table)}, violated_parent, violated,
                    violated_parent, {literal(target.archive)});
        END;
    END IF;
    IF restored <> moved OR differing > 0 THEN
        {
        raise_trigger_interference_sql(
            target,
            "INSERT",
            "restoring the archived rows of %s gave %s rows of %s, %s of them not as archived",
            f"{literal(target.display_table)}, restored, moved, differing",
            effect="changed them",
            run="the downgrade",
            again="downgrade again",
        )
    }
    END IF;
    -- Child rows back to the rows they pointed at before the upgrade, where the app has not
    -- pointed them elsewhere (or deleted them) since; once every archived row is back.
    IF pg_catalog.to_regclass({literal(target.repointed)}) IS NOT NULL AND {
        "false" if source else "true"
    } THEN
        FOR fk IN SELECT constraint_name, child_table, pg_catalog.count(*) AS recorded,
                         (pg_catalog.array_agg(child_row))[1] AS sample_key,
                         (pg_catalog.array_agg(old_reference))[1] AS sample_reference
                    FROM {target.repointed}
                   GROUP BY constraint_name, child_table
                   ORDER BY constraint_name, child_table LOOP
            key_columns := ARRAY(SELECT pg_catalog.jsonb_object_keys(fk.sample_key));
            reference_columns := ARRAY(SELECT pg_catalog.jsonb_object_keys(fk.sample_reference));
            EXECUTE pg_catalog.format({literal(point_back)},
                fk.child_table,
                (SELECT pg_catalog.string_agg(pg_catalog.quote_ident(c), ', ')
                   FROM pg_catalog.unnest(reference_columns) AS c),
                (SELECT pg_catalog.string_agg('old.' || pg_catalog.quote_ident(c), ', ')
                   FROM pg_catalog.unnest(reference_columns) AS c),
                fk.constraint_name, fk.child_table,
                {
        joined_sql(
            "ch.%1$I %2$s key.%1$I",
            " AND ",
            c="key_columns",
            op=operators_sql("key_columns", child),
        )
    },
                {
        joined_sql(
            "ch.%1$I %2$s new.%1$I",
            " AND ",
            c="reference_columns",
            op=operators_sql("reference_columns", child),
        )
    })
               INTO pointed;
            pointed_total := pointed_total + pointed;
            not_pointed_total := not_pointed_total + fk.recorded - pointed;
        END LOOP;
    END IF;
    INSERT INTO {target.ledger} (action, detail)
    VALUES ('restored', pg_catalog.jsonb_build_object(
        'rows', restored, 'pointed_back', pointed_total,
        'changed_or_deleted_since', not_pointed_total, 'triggers_skipped', triggers_off));
    RAISE NOTICE 'restored % archived rows of %; pointed % child rows back (% had been changed'
                 ' or deleted since)', restored, {literal(target.display_table)}, pointed_total,
                 not_pointed_total;
END
"""
    return f"DO {dollar_quoted(body, 'restore')}"


def cleanup_sql(target: UniqueTarget) -> str:
    """The operation's private objects, gone once the downgrade has restored what they held:
    the guard (if a killed run left it), the archive, the re-pointing record, the ledger. No
    client uses them; then the private schema, if this package created it and nothing else
    lives there. One DO block, shared by the online and offline downgrade."""
    statements = [
        *drop_statements(target),
        *(
            f"DROP TABLE IF EXISTS {relation}"
            for relation in (
                target.archive,
                target.repointed,
                target.work,
                target.batches,
                target.ledger,
            )
        ),
    ]
    body = (
        "\nBEGIN\n"
        + "".join(f"    {statement};\n" for statement in statements)
        + f"    {private_schema.drop_if_created_and_empty_plpgsql(target.private_schema)}\nEND\n"
    )
    return f"DO {dollar_quoted(body, 'cleanup')}"


def bookkeeping_names(target: UniqueTarget) -> list[str]:
    """The archive's own columns under either spelling: never restored, never a dropped column."""
    names = list(bookkeeping_columns(target))
    return names + [BOOKKEEPING_PREFIX + name for name in names]


def bookkeeping_array(target: UniqueTarget) -> str:
    return literal_array(bookkeeping_names(target))
