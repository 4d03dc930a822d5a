"""Every refusal, checked before anything is changed, written once for three readers.

Each direction has one plpgsql block that only reads. Run with `refuse` (the online upgrade or
downgrade, and the offline script) it stops at the first problem with one line that says what to
do, as SQLSTATE LU001; run to report (preflight, in a read-only transaction) it leaves every
problem in a transaction-local setting, and changes nothing either way.
"""

from alembic_lossless_unique.ddl import foreign_keys
from alembic_lossless_unique.ddl.comparisons import escape_format, operators_sql, regclass
from alembic_lossless_unique.ddl.dedupe import REFUSED
from alembic_lossless_unique.ddl.private_schema import problem_sql
from alembic_lossless_unique.ddl.restore import (
    bookkeeping_array,
    foreign_key_parts_sql,
    missing_parents_sql,
)
from alembic_lossless_unique.ddl.restore import may_lock_parent_sql as _may_lock_parent
from alembic_lossless_unique.ddl.sqltext import dollar_quoted, joined_sql, literal, literal_array
from alembic_lossless_unique.operations.target import UniqueTarget

# Where a block run to report leaves its problems, as a JSON array, until its transaction
# ends: a setting, which a READ ONLY transaction (and a hot standby) may set, and which every
# driver reads the same way.
PROBLEMS_SETTING = "lossless_unique.problems"

_FINISH = f"""
    IF refuse AND pg_catalog.cardinality(problems) > 0 THEN
        RAISE EXCEPTION USING ERRCODE = {literal(REFUSED)}, MESSAGE = problems[1];
    END IF;
    PERFORM pg_catalog.set_config({literal(PROBLEMS_SETTING)},
                                  pg_catalog.array_to_json(problems)::text, true);
END
"""


def _partitioned_problem(target: UniqueTarget, online: bool) -> str:
    """plpgsql: a partitioned table takes its unique partition by partition, online only (each
    partition's concurrent build is a transaction of its own)."""
    if online:
        return "            NULL;"
    why = (
        "the offline script cannot give it a unique without blocking writes (each partition''s"
        " concurrent build needs a transaction of its own): run the migration online"
        " (alembic upgrade, without --sql)"
    )
    return f"""            problems := problems || pg_catalog.format(
                '%s is partitioned: {why}', {literal(target.display_table)});"""


def _table_problems(target: UniqueTarget, online: bool = True) -> str:
    """The checks both directions share: the table is there, ours to alter, and workable.
    `online`: a partitioned table is one (operations/partitioned.py), offline it is refused."""
    table = f"pg_catalog.to_regclass({literal(target.qualified_table)})"
    display = literal(target.display_table)
    return f"""
    SELECT c.oid, c.relkind, c.relforcerowsecurity, pg_catalog.pg_get_userbyid(c.relowner),
           pg_catalog.pg_has_role(current_user, c.relowner, 'USAGE')
             OR (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user),
           (SELECT rolsuper OR rolbypassrls FROM pg_catalog.pg_roles
             WHERE rolname = current_user)
      INTO relation, kind, forced_rls, owner, may_alter, bypasses_rls
      FROM pg_catalog.pg_class c WHERE c.oid = {table};
    IF relation IS NULL THEN
        problems := problems || pg_catalog.format(
            'table %s does not exist in database %s: check that the connection points at the'
            ' right database', {display}, pg_catalog.current_database());
    ELSE
        IF NOT may_alter THEN
            problems := problems || pg_catalog.format(
                'role %s cannot alter %s (owned by %s): run the migration as the table''s'
                ' owner or a member of its role', current_user, {display}, owner);
        END IF;
        IF kind = 'p' THEN
{_partitioned_problem(target, online)}
        ELSIF kind <> 'r' THEN
            problems := problems || pg_catalog.format(
                '%s is not a table (relkind %s): a unique constraint cannot be built'
                ' concurrently on it', {display}, kind);
        END IF;
        IF forced_rls AND NOT bypasses_rls THEN
            problems := problems || pg_catalog.format(
                '%s has FORCE ROW LEVEL SECURITY, so policies would hide rows from the'
                ' migration: run it as a role with BYPASSRLS, or ALTER TABLE %s NO FORCE ROW'
                ' LEVEL SECURITY for its duration', {display}, {display});
        END IF;
        FOR found IN SELECT r.rulename FROM pg_catalog.pg_rewrite r
                      WHERE r.ev_class = relation AND r.rulename <> '_RETURN' LOOP
            problems := problems || pg_catalog.format(
                '%s has rule %s, which would rewrite the migration''s own deletes and inserts:'
                ' drop it for the migration', {display}, found);
        END LOOP;
        FOR found IN SELECT wanted.name
                       FROM pg_catalog.unnest({literal_array(target.named_columns)})
                                AS wanted(name)
                      WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a
                                         WHERE a.attrelid = relation AND a.attname = wanted.name
                                           AND a.attnum > 0 AND NOT a.attisdropped) LOOP
            problems := problems || pg_catalog.format(
                'column %s of %s does not exist: check the columns given to the unique'
                ' constraint %s', found, {display}, {literal(target.constraint_name)});
        END LOOP;
    END IF;
{_option_problems(target)}
    found := {problem_sql(literal(target.private_schema))};
    IF found IS NOT NULL THEN
        problems := problems || found;
    END IF;
"""


def option_problem_sql(target: UniqueTarget) -> str | None:
    """An SQL text expression: why this server cannot make the unique's options (NULL when it
    can), for either form; None when the target has no option a server may lack. The index
    form asks before its probe (probe.py), where PostgreSQL would only say "syntax error"."""
    if not target.nulls_not_distinct:
        return None
    return f"""(CASE WHEN pg_catalog.current_setting('server_version_num')::int < 150000
        THEN pg_catalog.format(
            '%s %s is NULLS NOT DISTINCT, which PostgreSQL has from 15 on; this server runs %s',
            {literal(target.kind)}, {literal(target.constraint_name)},
            pg_catalog.current_setting('server_version')) END)"""


def _option_problems(target: UniqueTarget) -> str:
    """The unique's options the server must know."""
    problem = option_problem_sql(target)
    if problem is None:
        return ""
    return f"""
    found := {problem};
    IF found IS NOT NULL THEN
        problems := problems || found;
    END IF;"""


_DECLARE = """
DECLARE
    refuse constant boolean := {refuse};
    problems text[] := ARRAY[]::text[];
    found text;
    relation oid;
    kind "char";
    forced_rls boolean;
    owner text;
    may_alter boolean;
    bypasses_rls boolean;
    fk record;
    counted bigint;
    details record;
"""


def table_checks_sql(target: UniqueTarget, *, refuse: bool, online: bool = True) -> str:
    """The checks that need no key: the table, the role, the options, the private schema. All
    that stops the upgrade of a table that does not exist yet (a pending revision creates it),
    whose key the index form cannot read (probe.py) before it does."""
    body = f"""{_DECLARE.format(refuse="true" if refuse else "false")}
BEGIN
{_table_problems(target, online)}
{_FINISH}"""
    return f"DO {dollar_quoted(body, 'table_checks')}"


def upgrade_checks_sql(target: UniqueTarget, *, refuse: bool, online: bool = True) -> str:
    """What would stop the upgrade: the table, the role, the private schema, the row identity,
    and every foreign key into the table that re-pointing could not handle."""
    display = literal(target.display_table)
    identity = literal_array(target.row_identity)
    body = f"""{_DECLARE.format(refuse="true" if refuse else "false")}
BEGIN
{_table_problems(target, online)}
    IF relation IS NOT NULL THEN
        IF NOT EXISTS (
            SELECT 1 FROM pg_catalog.pg_index i
             WHERE i.indrelid = relation AND i.indisunique AND i.indisvalid
               AND i.indpred IS NULL AND i.indexprs IS NULL
               AND ARRAY(SELECT a.attname::text FROM pg_catalog.pg_attribute a
                          WHERE a.attrelid = relation AND a.attnum = ANY (i.indkey)
                          ORDER BY a.attname COLLATE "C")
                   = ARRAY(SELECT c FROM pg_catalog.unnest({identity}) AS c
                            ORDER BY c COLLATE "C")
               AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a
                                WHERE a.attrelid = relation AND a.attnum = ANY (i.indkey)
                                  AND NOT a.attnotnull)) THEN
            problems := problems || pg_catalog.format(
                'row_identity (%s) is not a primary key or unique NOT NULL key of %s: give the'
                ' columns that identify a row of it%s',
                pg_catalog.array_to_string({identity}, ', '), {display},
                CASE WHEN kind = 'p' THEN ' (on a partitioned table its primary key holds the'
                ' partition key''s columns too)' ELSE '' END);
        END IF;
        FOR fk IN {foreign_keys.inbound_sql("relation")} LOOP
{_foreign_key_problems(target)}
        END LOOP;
    END IF;
{_FINISH}"""
    return f"DO {dollar_quoted(body, 'upgrade_checks')}"


def _foreign_key_problems(target: UniqueTarget) -> str:
    """Inside the loop over the foreign keys `fk` that reference the table."""
    display = literal(target.display_table)
    where = "foreign key %s of %s"
    return f"""
            IF fk.child_oid = relation THEN
                problems := problems || pg_catalog.format(
                    '{where} references its own table: re-pointing rows that may themselves be'
                    ' archived is not supported; drop the foreign key for the migration',
                    fk.constraint_name, fk.child_table);
                CONTINUE;
            END IF;
            IF fk.child_identity IS NULL THEN
                problems := problems || pg_catalog.format(
                    '{where} (referencing %s): %s has no primary key, so child rows re-pointed'
                    ' to the kept row could not be pointed back exactly; add one, then re-run',
                    fk.constraint_name, fk.child_table, {display}, fk.child_table);
            END IF;
            IF NOT pg_catalog.has_schema_privilege(
                       (SELECT relnamespace FROM pg_catalog.pg_class WHERE oid = fk.child_oid),
                       'USAGE')
               OR NOT pg_catalog.has_table_privilege(fk.child_oid, 'SELECT')
               OR EXISTS (SELECT 1 FROM pg_catalog.unnest(fk.child_columns) AS c
                           WHERE NOT pg_catalog.has_column_privilege(fk.child_oid, c, 'UPDATE'))
            THEN
                problems := problems || pg_catalog.format(
                    '{where}: role %s may not update %s (%s), which re-pointing its rows to the'
                    ' kept row needs: GRANT USAGE on its schema and SELECT, UPDATE ON %s TO %s,'
                    ' or run as its owner',
                    fk.constraint_name, fk.child_table, current_user, fk.child_table,
                    pg_catalog.array_to_string(fk.child_columns, ', '), fk.child_table,
                    current_user);
            END IF;
            SELECT c.relrowsecurity, c.relforcerowsecurity,
                   pg_catalog.pg_has_role(current_user, c.relowner, 'USAGE') AS owns
              INTO details FROM pg_catalog.pg_class c WHERE c.oid = fk.child_oid;
            IF details.relrowsecurity AND NOT bypasses_rls
               AND (NOT details.owns OR details.relforcerowsecurity) THEN
                problems := problems || pg_catalog.format(
                    '{where}: %s has row level security, which would hide child rows from the'
                    ' re-pointing; run as a role with BYPASSRLS or as its owner',
                    fk.constraint_name, fk.child_table, fk.child_table);
            END IF;
            -- A unique on the child that holds the foreign key columns: re-pointing every
            -- child of a duplicate group to the kept row must not make two child rows equal.
            FOR details IN
                SELECT ic.relname::text AS index_name,
                       ARRAY(SELECT a.attname::text FROM pg_catalog.pg_attribute a
                              WHERE a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
                                AND a.attname <> ALL (fk.child_columns)) AS others
                  FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid
                 WHERE i.indrelid = fk.child_oid AND i.indisunique AND i.indisvalid
                   AND i.indexprs IS NULL
                   AND fk.child_columns <@ ARRAY(SELECT a.attname::text
                                                   FROM pg_catalog.pg_attribute a
                                                  WHERE a.attrelid = i.indrelid
                                                    AND a.attnum = ANY (i.indkey))
            LOOP
                EXECUTE pg_catalog.format(
                    'SELECT pg_catalog.count(*) FROM (SELECT 1 FROM %1$s ch'
                    '   JOIN {escape_format(target.qualified_table)} p ON %2$s'
                    '  WHERE %3$s AND %6$s AND EXISTS ('
                    '        SELECT 1 FROM {escape_format(target.qualified_table)} o'
                    '                          WHERE %4$s AND o.ctid <> p.ctid)'
                    '  GROUP BY %5$s HAVING pg_catalog.count(*) > 1) AS collisions',
                    fk.child_table,
                    {
        joined_sql(
            "ch.%I %s p.%I",
            " AND ",
            c="fk.child_columns",
            op="fk.operators",
            pc="fk.parent_columns",
        )
    },
                    {_key_not_null(target, "p")},
                    {_key_match(target, "o", "p")},
                    (SELECT pg_catalog.string_agg(x, ', ') FROM (
                        SELECT x FROM pg_catalog.unnest({_key_values(target, "p")}) AS x
                        UNION ALL
                        SELECT pg_catalog.format('ch.%I', c)
                          FROM pg_catalog.unnest(details.others) AS c) AS grouping_columns),
                    -- NULLs never collide on a unique.
                    coalesce((SELECT pg_catalog.string_agg(
                                         pg_catalog.format('ch.%I IS NOT NULL', c), ' AND ')
                                FROM pg_catalog.unnest(details.others) AS c), 'true'))
                   INTO counted;
                IF counted > 0 THEN
                    problems := problems || pg_catalog.format(
                        '{where}: re-pointing its rows to the kept row of each duplicate group'
                        ' would break unique index %s of %s in %s cases; resolve those child'
                        ' rows first, then re-run', fk.constraint_name, fk.child_table,
                        details.index_name, fk.child_table, counted);
                END IF;
            END LOOP;"""


def _not_null(columns: str) -> str:
    """A plpgsql text expression: `x.a IS NOT NULL AND ...` for the columns in the text[]
    expression `columns` (NULLs never collide on a unique)."""
    return (
        "(SELECT pg_catalog.string_agg(pg_catalog.format('x.%I IS NOT NULL', c), ' AND ')"
        f" FROM pg_catalog.unnest({columns}) AS c)"
    )


# A format() template: column %1$I of x and y alike, with operator %2$s, NULLs alike too.
NULLS_ALIKE = "({x}.%1$I %2$s {y}.%1$I OR {x}.%1$I IS NULL AND {y}.%1$I IS NULL)"


def _keyed(index_row: str) -> str:
    """A plpgsql text expression: the rows `x` that the unique `index_row` judges (all, where
    NULLs conflict; else those with no NULL in its columns)."""
    return (
        f"CASE WHEN {index_row}.nulls_not_distinct THEN 'true'"
        f" ELSE {_not_null(f'{index_row}.columns')} END"
    )


def _index_key_match(template: str) -> str:
    """A plpgsql text expression: `template` (a format() of column %1$I and operator %2$s) for
    each column of `index_row`, joined by AND."""
    return joined_sql(
        template,
        " AND ",
        c="index_row.columns",
        op=operators_sql("index_row.columns", "relation"),
    )


def _key_not_null(target: UniqueTarget, alias: str) -> str:
    """A plpgsql text expression: the rows of `alias` that the target's unique judges."""
    key = target.key
    admitted = "" if key.predicate is None else f"{key.admits(alias)} AND "
    return literal(admitted + key.is_set(alias))


def _key_values(target: UniqueTarget, alias: str) -> str:
    """A text[] expression: the key's element values of the row `alias`, as SQL."""
    return literal_array(e.of(alias) for e in target.key.elements)


def _key_match(target: UniqueTarget, left: str, right: str) -> str:
    """A plpgsql text expression: the key columns of `left` and `right` alike, as the
    target's unique judges them."""
    key = target.key
    if not key.plain:  # the index form: every element's operator is known
        return literal(
            " AND ".join(
                f"({e.of(left)} {e.operator} {e.of(right)}"
                f" OR {e.of(left)} IS NULL AND {e.of(right)} IS NULL)"
                if key.nulls_not_distinct
                else f"{e.of(left)} {e.operator} {e.of(right)}"
                for e in key.elements
            )
        )
    operators = operators_sql(literal_array(target.columns), regclass(target.qualified_table))
    if target.nulls_not_distinct:
        template = NULLS_ALIKE.format(x=left, y=right)
    else:
        template = f"{left}.%1$I %2$s {right}.%1$I"
    return joined_sql(template, " AND ", c=literal_array(target.columns), op=operators)


def downgrade_checks_sql(
    target: UniqueTarget, *, refuse: bool, archive_expected: bool = False, online: bool = True
) -> str:
    """What would stop the downgrade from putting back exactly what the upgrade found: a
    privilege it lacks on any table it reads, writes or locks (named with the GRANT that gives
    it), archived values of a column since dropped, a column whose type changed, a new NOT NULL
    column with no default, archived identities or keys a live row now uses, parents the
    archived rows lost. `archive_expected`: check the privileges as if the upgrade had made its
    archive already (preflight, before the upgrade)."""
    display = literal(target.display_table)
    archive = literal(target.archive)
    archive_oid = f"pg_catalog.to_regclass({archive})"
    body = f"""{_DECLARE.format(refuse="true" if refuse else "false")}
    archived oid;
    column_row record;
    index_row record;
    readable boolean := true;
BEGIN
{_table_problems(target, online)}
    archived := {archive_oid};
    IF relation IS NOT NULL AND (archived IS NOT NULL OR {
        "true" if archive_expected else "false"
    }) THEN
{_restore_privilege_problems(target)}
    END IF;
    IF relation IS NOT NULL AND archived IS NOT NULL AND readable THEN
        -- Columns of the archived rows that the table no longer has.
        FOR column_row IN
            SELECT b.attname::text AS name, pg_catalog.format_type(b.atttypid, b.atttypmod) AS type
              FROM pg_catalog.pg_attribute b
             WHERE b.attrelid = archived AND b.attnum > 0 AND NOT b.attisdropped
               AND b.attname <> ALL ({bookkeeping_array(target)})
               AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a
                                WHERE a.attrelid = relation AND a.attname = b.attname
                                  AND a.attnum > 0 AND NOT a.attisdropped)
        LOOP
            EXECUTE pg_catalog.format('SELECT pg_catalog.count(*) FROM %s WHERE %I IS NOT NULL',
                                      {archive}, column_row.name) INTO counted;
            IF counted > 0 THEN
                problems := problems || pg_catalog.format(
                    'column %s was dropped from %s after the upgrade, and %s archived rows hold'
                    ' values for it: re-add it (ALTER TABLE %s ADD COLUMN %I %s) and downgrade'
                    ' again, or drop it from the archive (ALTER TABLE %s DROP COLUMN %I) to'
                    ' restore the rows without it', column_row.name, {display}, counted,
                    {display}, column_row.name, column_row.type, {archive}, column_row.name);
            END IF;
        END LOOP;
        -- Columns whose type changed since the rows were archived.
        FOR column_row IN
            SELECT a.attname::text AS name,
                   pg_catalog.format_type(b.atttypid, b.atttypmod) AS archived_type,
                   pg_catalog.format_type(a.atttypid, a.atttypmod) AS live_type
              FROM pg_catalog.pg_attribute a
              JOIN pg_catalog.pg_attribute b ON b.attrelid = archived AND b.attname = a.attname
                                            AND NOT b.attisdropped
             WHERE a.attrelid = relation AND a.attnum > 0 AND NOT a.attisdropped
               AND a.attgenerated = ''
               AND (a.atttypid, a.atttypmod) IS DISTINCT FROM (b.atttypid, b.atttypmod)
        LOOP
            problems := problems || pg_catalog.format(
                'column %s of %s is %s now but was %s when its rows were archived: the'
                ' restored rows would not be what the upgrade archived; convert the archive''s'
                ' column too (ALTER TABLE %s ALTER COLUMN %I TYPE %s), then downgrade again',
                column_row.name, {display}, column_row.live_type, column_row.archived_type,
                {archive}, column_row.name, column_row.live_type);
        END LOOP;
        -- Columns added since, that the restored rows could not leave empty.
        FOR column_row IN
            SELECT a.attname::text AS name
              FROM pg_catalog.pg_attribute a
             WHERE a.attrelid = relation AND a.attnum > 0 AND NOT a.attisdropped
               AND a.attnotnull AND NOT a.atthasdef AND a.attidentity = ''
               AND a.attgenerated = ''
               AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute b
                                WHERE b.attrelid = archived AND b.attname = a.attname
                                  AND NOT b.attisdropped)
        LOOP
            EXECUTE pg_catalog.format('SELECT pg_catalog.count(*) FROM %s', {archive})
               INTO counted;
            IF counted > 0 THEN
                problems := problems || pg_catalog.format(
                    'column %s was added to %s after the upgrade, NOT NULL and with no default,'
                    ' so the %s archived rows cannot return: give it a default (ALTER TABLE %s'
                    ' ALTER COLUMN %I SET DEFAULT ...), then downgrade again', column_row.name,
                    {display}, counted, {display}, column_row.name);
            END IF;
        END LOOP;
        -- Keys an archived row would share with a live row, or with another archived row, on
        -- every unique the downgrade keeps (all but the target constraint it drops).
        FOR index_row IN
            SELECT ic.relname::text AS index_name,
                   ARRAY(SELECT a.attname::text
                           FROM pg_catalog.unnest(i.indkey::int2[]) WITH ORDINALITY AS k(n, p)
                           JOIN pg_catalog.pg_attribute a
                             ON a.attrelid = i.indrelid AND a.attnum = k.n
                          WHERE k.p <= i.indnkeyatts  -- INCLUDE columns are not compared
                          ORDER BY k.p) AS columns,
                   -- Read through jsonb: the column exists from PostgreSQL 15 on.
                   coalesce((pg_catalog.to_jsonb(i) ->> 'indnullsnotdistinct')::boolean, false)
                       AS nulls_not_distinct
              FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid
             WHERE i.indrelid = relation AND i.indisunique AND i.indisvalid
               AND i.indpred IS NULL AND i.indexprs IS NULL
               AND ic.relname <> {literal(target.constraint_name)}
               AND NOT EXISTS (SELECT 1 FROM pg_catalog.unnest(i.indkey::int2[]) AS k(n)
                                JOIN pg_catalog.pg_attribute a
                                  ON a.attrelid = i.indrelid AND a.attnum = k.n
                               WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute b
                                                  WHERE b.attrelid = archived
                                                    AND b.attname = a.attname
                                                    AND NOT b.attisdropped))
        LOOP
            -- Two statements, each linear in the archived rows: a semi-join into the live
            -- table (through the very unique being checked), and a grouping of the archive by
            -- the key. Written as one EXISTS ... OR EXISTS, PostgreSQL runs a correlated scan
            -- of the whole archive for every archived row.
            EXECUTE pg_catalog.format(
                'SELECT pg_catalog.count(*) FROM %1$s x WHERE %2$s AND EXISTS ('
                'SELECT 1 FROM {escape_format(target.qualified_table)} y WHERE %3$s)',
                {archive}, {_keyed("index_row")},
                CASE WHEN index_row.nulls_not_distinct
                     THEN {_index_key_match(NULLS_ALIKE.format(x="x", y="y"))}
                     ELSE {_index_key_match("x.%1$I %2$s y.%1$I")} END)
               INTO counted;
            IF counted > 0 THEN
                problems := problems || pg_catalog.format(
                    '%s archived rows of %s have (%s) values that a live row now uses (unique'
                    ' %s), so they cannot return: the app has re-used them since the upgrade;'
                    ' change or delete those live rows, or the archived ones in %s, then'
                    ' downgrade again', counted, {display},
                    pg_catalog.array_to_string(index_row.columns, ', '), index_row.index_name,
                    {archive});
            END IF;
            -- Grouping compares with the key types' default equality, as the unique does.
            EXECUTE pg_catalog.format(
                'SELECT coalesce(pg_catalog.sum(copies), 0) FROM (SELECT pg_catalog.count(*)'
                ' AS copies FROM %1$s x WHERE %2$s GROUP BY %3$s'
                ' HAVING pg_catalog.count(*) > 1) AS shared',
                {archive}, {_keyed("index_row")},
                (SELECT pg_catalog.string_agg(pg_catalog.format('x.%I', c), ', ')
                   FROM pg_catalog.unnest(index_row.columns) AS c))
               INTO counted;
            IF counted > 0 THEN
                problems := problems || pg_catalog.format(
                    '%s archived rows of %s share their (%s) values with another archived row'
                    ' (unique %s), so they cannot all return: keep one of each in %s, then'
                    ' downgrade again', counted, {display},
                    pg_catalog.array_to_string(index_row.columns, ', '), index_row.index_name,
                    {archive});
            END IF;
        END LOOP;
        -- Parents the archived rows reference (those the role may not lock are left to the
        -- foreign key's own check during the restore: restore.py).
        FOR fk IN {foreign_keys.outbound_sql(regclass(target.qualified_table))} LOOP
            CONTINUE WHEN NOT {_may_lock_parent("fk")};
            EXECUTE pg_catalog.format({literal(missing_parents_sql(target))},
                                      fk.parent_table, {foreign_key_parts_sql("fk")})
               INTO counted;
            IF counted > 0 THEN
                problems := problems || pg_catalog.format(
                    'archived rows of %s reference %s rows of %s that no longer exist (foreign'
                    ' key %s): restore those rows of %s, or delete the archived rows that'
                    ' reference them from %s, then downgrade again', {display}, counted,
                    fk.parent_table, fk.constraint_name, fk.parent_table, {archive});
            END IF;
        END LOOP;
    END IF;
{_FINISH}"""
    return f"DO {dollar_quoted(body, 'downgrade_checks')}"


def _restore_privilege_problems(target: UniqueTarget) -> str:
    """plpgsql, inside downgrade_checks_sql: every privilege the restore uses, as the role runs
    it. The table: SELECT and INSERT for the rows coming back, and one of UPDATE, DELETE or
    TRUNCATE for its LOCK TABLE; the operation's own tables; the child tables whose rows it
    points back. Not the parents of the table's foreign keys: where the role may not lock their
    rows, the restore leaves that to PostgreSQL's own foreign key check (restore.py), so the
    downgrade needs nothing there that the upgrade did not. Sets `readable` to false when the
    data checks below could not read what they check."""
    display = literal(target.display_table)
    wanted = (
        (target.qualified_table, "SELECT"),
        (target.qualified_table, "INSERT"),
        (target.archive, "SELECT"),
        (target.archive, "DELETE"),
        (target.repointed, "SELECT"),
        (target.ledger, "SELECT"),
        (target.ledger, "INSERT"),
    )
    needed = ", ".join(
        f"({literal(relation)}, {literal(privilege)}, {n})"
        for n, (relation, privilege) in enumerate(wanted, 1)
    )
    repointed = literal(target.repointed)
    children = (
        f"SELECT DISTINCT constraint_name, child_table, ARRAY(SELECT pg_catalog.jsonb_object_keys("
        f"old_reference) ORDER BY 1) AS columns FROM {target.repointed} ORDER BY 1, 2"
    )
    how = "GRANT %s ON %s TO %s, or run the downgrade as its owner"
    return f"""
        FOR details IN
            SELECT wanted.relation,
                   pg_catalog.string_agg(wanted.privilege, ', ' ORDER BY wanted.n) AS privileges
              FROM (VALUES {needed}) AS wanted(relation, privilege, n)
             WHERE pg_catalog.to_regclass(wanted.relation) IS NOT NULL
               AND NOT pg_catalog.has_table_privilege(wanted.relation, wanted.privilege)
             GROUP BY wanted.relation
             ORDER BY pg_catalog.min(wanted.n)
        LOOP
            readable := readable AND details.privileges NOT LIKE '%SELECT%';
            problems := problems || pg_catalog.format(
                'role %s lacks %s on %s, which the downgrade needs to restore the archived'
                ' rows: {how}', current_user, details.privileges, details.relation,
                details.privileges, details.relation, current_user);
        END LOOP;
        IF NOT (pg_catalog.has_table_privilege(relation, 'UPDATE')
                OR pg_catalog.has_table_privilege(relation, 'DELETE')
                OR pg_catalog.has_table_privilege(relation, 'TRUNCATE')) THEN
            problems := problems || pg_catalog.format(
                'role %s may not lock %s (LOCK TABLE needs UPDATE, DELETE or TRUNCATE), which'
                ' the downgrade does while it restores: {how}', current_user, {display},
                'UPDATE', {display}, current_user);
        END IF;
        IF pg_catalog.to_regclass({repointed}) IS NOT NULL
           AND pg_catalog.has_table_privilege({repointed}, 'SELECT') THEN
            FOR details IN EXECUTE {literal(children)} LOOP
                IF pg_catalog.to_regclass(details.child_table) IS NULL THEN
                    problems := problems || pg_catalog.format(
                        'table %s, whose rows the upgrade re-pointed (foreign key %s), no longer'
                        ' exists, so they cannot be pointed back: restore it, or delete its rows'
                        ' from %s, then downgrade again', details.child_table,
                        details.constraint_name, {repointed});
                ELSIF NOT pg_catalog.has_schema_privilege(
                          (SELECT relnamespace FROM pg_catalog.pg_class
                            WHERE oid = details.child_table::pg_catalog.regclass), 'USAGE')
                      OR NOT pg_catalog.has_table_privilege(details.child_table, 'SELECT')
                      OR EXISTS (SELECT 1 FROM pg_catalog.unnest(details.columns) AS c
                                  WHERE NOT pg_catalog.has_column_privilege(
                                            details.child_table, c, 'UPDATE')) THEN
                    problems := problems || pg_catalog.format(
                        'foreign key %s of %s: role %s may not update %s (%s), which pointing its'
                        ' re-pointed rows back needs: GRANT USAGE on its schema and SELECT,'
                        ' UPDATE ON %s TO %s, or run the downgrade as its owner',
                        details.constraint_name, details.child_table, current_user,
                        details.child_table, pg_catalog.array_to_string(details.columns, ', '),
                        details.child_table, current_user);
                END IF;
            END LOOP;
        END IF;"""
