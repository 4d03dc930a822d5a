"""What else sees the table move: foreign keys into it, user triggers, publications (Supabase
Realtime), columns that are generated or identity. Announced before the upgrade changes a row,
in the run's log, in preflight and in the offline script: never hidden. A publication that
would carry the private schema's new tables to subscribers that lack them is refused."""

import shlex
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy.exc import DBAPIError

from alembic_lossless_unique.ddl.comparisons import regclass
from alembic_lossless_unique.ddl.sqltext import literal, literal_array, qualified_relation_sql
from alembic_lossless_unique.operations.target import (
    DEFAULT_PRIVATE_SCHEMA,
    UniqueTarget,
    default_constraint_name,
)
from alembic_lossless_unique.runtime.database import Database
from alembic_lossless_unique.runtime.errors import MigrationAbort
from alembic_lossless_unique.runtime.settings import EVERY_PUBLICATION

ON_DELETE = {"a": "NO ACTION", "r": "RESTRICT", "c": "CASCADE", "n": "SET NULL", "d": "SET DEFAULT"}


def surroundings_sql(target: UniqueTarget) -> str:
    """Rows (kind, name, detail, extra): foreign_key, trigger, publication, column."""
    table = regclass(target.qualified_table)
    return f"""
SELECT 'foreign_key' AS kind, con.conname::text AS name,
       pg_catalog.format('%s (%s)', {qualified_relation_sql("con.conrelid")},
           (SELECT pg_catalog.string_agg(a.attname::text, ', ')
              FROM pg_catalog.pg_attribute a
             WHERE a.attrelid = con.conrelid AND a.attnum = ANY (con.conkey))) AS detail,
       con.confdeltype::text AS extra
  FROM pg_catalog.pg_constraint con
 WHERE con.contype = 'f' AND con.confrelid = {table}
UNION ALL
SELECT 'trigger', t.tgname::text,
       pg_catalog.concat_ws(' ',
           CASE WHEN t.tgtype & 2 <> 0 THEN 'BEFORE'
                WHEN t.tgtype & 64 <> 0 THEN 'INSTEAD OF' ELSE 'AFTER' END,
           pg_catalog.concat_ws(' OR ',
               CASE WHEN t.tgtype & 4 <> 0 THEN 'INSERT' END,
               CASE WHEN t.tgtype & 8 <> 0 THEN 'DELETE' END,
               CASE WHEN t.tgtype & 16 <> 0 THEN 'UPDATE' END,
               CASE WHEN t.tgtype & 32 <> 0 THEN 'TRUNCATE' END),
           CASE WHEN t.tgtype & 1 <> 0 THEN 'FOR EACH ROW' ELSE 'FOR EACH STATEMENT' END),
       t.tgenabled::text
  FROM pg_catalog.pg_trigger t
 WHERE t.tgrelid = {table} AND NOT t.tgisinternal
   AND t.tgname <> ALL ({literal_array(target.guard_triggers)})
UNION ALL
SELECT 'publication', p.pubname::text,
       pg_catalog.concat_ws(', ', CASE WHEN p.pubinsert THEN 'inserts' END,
                                  CASE WHEN p.pubdelete THEN 'deletes' END),
       NULL
  FROM pg_catalog.pg_publication p
 WHERE (p.pubinsert OR p.pubdelete)
   AND (p.puballtables
        OR EXISTS (SELECT 1 FROM pg_catalog.pg_publication_tables pt
                    WHERE pt.pubname = p.pubname AND pt.schemaname = {literal(target.schema)}
                      AND pt.tablename = {literal(target.table)}))
UNION ALL
SELECT 'column', a.attname::text,
       CASE WHEN a.attgenerated <> '' THEN 'generated: recomputed when rows are restored'
            WHEN a.attidentity = 'a' THEN 'identity (always): restored with its archived value'
            ELSE 'identity (by default): restored with its archived value' END,
       NULL
  FROM pg_catalog.pg_attribute a
 WHERE a.attrelid = {table} AND a.attnum > 0 AND NOT a.attisdropped
   AND (a.attgenerated <> '' OR a.attidentity <> '')
ORDER BY 1, 2"""


@dataclass(frozen=True)
class Neighbour:
    kind: str
    name: str
    detail: str
    extra: str | None


def read(db: Database, target: UniqueTarget) -> list[Neighbour]:
    return [Neighbour(*row) for row in db.rows(surroundings_sql(target))]


def may_skip_user_triggers(db: Database) -> bool:
    """Whether this role may set session_replication_role (superuser, or granted SET on it):
    then the move and the restore run without firing user triggers. Tried, then undone."""
    with db.trial():
        try:
            db.execute("SET LOCAL session_replication_role = replica")
        except DBAPIError:
            return False
        return True


def fires(neighbour: Neighbour, triggers_skipped: bool) -> bool:
    """Whether a trigger fires in a session of the migration."""
    if neighbour.extra == "A":
        return True
    if neighbour.extra == "D":
        return False
    return (neighbour.extra == "R") == triggers_skipped


def announcements(neighbours: list[Neighbour], triggers_skipped: bool) -> list[str]:
    lines = []
    for n in neighbours:
        if n.kind == "foreign_key":
            lines.append(
                f"foreign key {n.name} of {n.detail} references the table (ON DELETE"
                f" {ON_DELETE.get(n.extra or 'a', n.extra)}): its rows that point at an archived"
                " row are re-pointed to the kept row, and pointed back by the downgrade"
            )
        elif n.kind == "trigger":
            when = "fires" if fires(n, triggers_skipped) else "does not fire"
            why = (
                "the role may skip user triggers (session_replication_role)"
                if triggers_skipped
                else "the role may not skip user triggers (session_replication_role)"
            )
            lines.append(
                f"user trigger {n.name} ({n.detail}) {when} during the move and the restore: {why}"
            )
        elif n.kind == "publication":
            lines.append(
                f"publication {n.name} publishes the table's {n.detail}: its subscribers"
                " (Supabase Realtime, replicas) receive every archived row as a delete and"
                " every restored row as an insert"
            )
        else:
            lines.append(f"column {n.name} is {n.detail}")
    return lines


# Publications that will carry the tables a run creates in a private schema: FOR ALL TABLES,
# or FOR TABLES IN SCHEMA that schema (FOR TABLE can only name a table that exists already, which
# its subscribers have had since they subscribed). A logical subscriber lacking a new table stops
# applying every change, of every table, at its first row ("logical replication target relation
# ... does not exist"), and a warning in a deploy log does not stop that. So the run refuses,
# before it writes anything, unless `subscribers_ready` declares each such publication ready:
# its subscribers ran the subscriber DDL, or it only feeds a CDC stream, which just sees new
# tables. Written once, in SQL, for the online run, preflight and the offline script.

# The refusal, for Python's % and PostgreSQL's format() alike: the publications as
# "publication NAME (HOW), ...", then their names twice, comma-separated.
_REFUSAL = (
    "%s would carry the tables this run creates in {schemas} (version table, ledger, archive)"
    " to subscribers, and a logical subscriber that lacks them stops replicating every"
    " table at their first row, so this run refuses before it writes anything. Run the DDL"
    " that `{command}` prints on each logical subscriber, then run alembic again with"
    " -x subscribers_ready=%s (or MIGRATION_SUBSCRIBERS_READY=%s); a publication that only"
    " feeds a CDC stream, which just sees new tables, needs only that declaration"
)


def refusal_format(schemas: Sequence[str], ddl_command: str) -> str:
    """The refusal's format string (three %s: see _REFUSAL); a % of the names is kept."""
    return _REFUSAL.format(
        schemas=", ".join(schemas).replace("%", "%%"), command=ddl_command.replace("%", "%%")
    )


def unready_publications_sql(schemas: Sequence[str], ready: Sequence[str], by_schema: bool) -> str:
    """One row: the publications that would carry new tables of `schemas` and that `ready` (the
    subscribers_ready setting) does not name, as (described, names), both NULL when none.
    `by_schema`: the server has FOR TABLES IN SCHEMA (PostgreSQL 15+)."""
    in_schema = f"""
UNION
SELECT p.pubname::text, 'FOR TABLES IN SCHEMA ' || pg_catalog.quote_ident(n.nspname)
  FROM pg_catalog.pg_publication p
  JOIN pg_catalog.pg_publication_namespace pn ON pn.pnpubid = p.oid
  JOIN pg_catalog.pg_namespace n ON n.oid = pn.pnnspid
 WHERE n.nspname = ANY ({literal_array(schemas)}) AND NOT p.puballtables"""
    ready_array = literal_array(ready)
    return f"""
SELECT pg_catalog.string_agg(pg_catalog.format('publication %s (%s)', c.name, c.how), ', '
                             ORDER BY c.name, c.how),
       pg_catalog.string_agg(DISTINCT c.name, ',' ORDER BY c.name)
  FROM (SELECT p.pubname::text AS name, 'FOR ALL TABLES' AS how
          FROM pg_catalog.pg_publication p WHERE p.puballtables{in_schema if by_schema else ""}
       ) AS c
 WHERE NOT (c.name = ANY ({ready_array}) OR {literal(EVERY_PUBLICATION)} = ANY ({ready_array}))"""


def table_exists_sql(schema: str, table: str) -> str:
    """An SQL boolean: `schema`.`table` exists. From the catalog, which needs no privilege on
    the schema (to_regclass fails without USAGE on it, before the checks could name that)."""
    return (
        "EXISTS (SELECT 1 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n"
        f" ON n.oid = c.relnamespace WHERE n.nspname = {literal(schema)}"
        f" AND c.relname = {literal(table)})"
    )


def unready_publications(
    db: Database, schemas: Sequence[str], ready: Sequence[str]
) -> tuple[str | None, str | None]:
    """(described, names) of the publications that would carry new tables of `schemas` and
    that `ready` does not name; both None when there are none. Read-only."""
    by_schema = int(db.scalar("SELECT pg_catalog.current_setting('server_version_num')")) >= 150000
    described, names = db.execute(unready_publications_sql(schemas, ready, by_schema)).one()
    return described, names


def unready_subscribers(db: Database, schemas: Sequence[str], ddl_command: str) -> str | None:
    """The refusal for a run about to create tables in `schemas`, or None when every publication
    that would carry them is declared ready (or there is none). Read-only."""
    described, names = unready_publications(db, schemas, db.settings.subscribers_ready)
    if described is None:
        return None
    return refusal_format(schemas, ddl_command) % (described, names, names)


def refuse_unready_subscribers(db: Database, schemas: Sequence[str], ddl_command: str) -> None:
    """Before a run creates tables in `schemas`: refuse, changing nothing, while a publication
    that would carry them is not declared ready."""
    refusal = unready_subscribers(db, schemas, ddl_command)
    if refusal:
        raise MigrationAbort(refusal)


SUBSCRIBER_DDL = "python -m alembic_lossless_unique.subscriber_ddl"

# Where run_migrations keeps the project's own command for the subscriber DDL (its keyword
# subscriber_ddl_command), so that the operations' refusals name it too.
DDL_COMMAND_ATTRIBUTE = "lossless_unique_subscriber_ddl_command"


def project_ddl_command(config: Any, default: str) -> str:
    """The project's command for the subscriber DDL, given to run_migrations, else `default`."""
    attributes = getattr(config, "attributes", None) or {}
    return str(attributes.get(DDL_COMMAND_ATTRIBUTE) or default)


def subscriber_ddl_command(target: UniqueTarget) -> str:
    """The command that prints the subscriber's DDL for `target`, ready to run: every argument
    the DDL depends on (the private tables' names, the kept row's identity) that differs from
    the command's default, each quoted for the shell; the index form's elements as its SQL."""
    derived = replace(target, archive_table="", ledger_table="")  # the names' defaults
    arguments = [("--table", target.table)]
    if target.schema != "public":
        arguments.append(("--schema", target.schema))
    if target.is_index:
        arguments.append(("--index", target.constraint_name))
        arguments.append(("--columns", ", ".join(target.index_elements)))
    else:
        if target.constraint_name != default_constraint_name(target.table, target.columns):
            arguments.append(("--constraint", target.constraint_name))
        arguments.append(("--columns", ",".join(target.columns)))
    for flag, value, default in (
        ("--row-identity", ",".join(target.row_identity), "id"),
        ("--private-schema", target.private_schema, DEFAULT_PRIVATE_SCHEMA),
        ("--archive-table", target.archive_table, derived.archive_table),
        ("--ledger-table", target.ledger_table, derived.ledger_table),
    ):
        if value != default:
            arguments.append((flag, value))
    return " ".join([SUBSCRIBER_DDL, *(f"{flag} {shlex.quote(v)}" for flag, v in arguments)])


def version_table_ddl_command(schema: str, table: str) -> str:
    """The command that prints the subscriber's DDL where the version table is `schema.table`."""
    return f"{SUBSCRIBER_DDL} (the operation's arguments, and --version-table {schema}.{table})"
