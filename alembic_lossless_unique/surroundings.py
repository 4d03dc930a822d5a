"""What else sees the table move: foreign keys into it, user triggers, publications (Supabase
Realtime), columns that are generated or identity. Announced before the upgrade changes a row,
in the run's log, in preflight and in the offline script: never hidden."""

import logging
from dataclasses import dataclass

from sqlalchemy.exc import DBAPIError

from alembic_lossless_unique.comparisons import regclass
from alembic_lossless_unique.database import Database
from alembic_lossless_unique.sqltext import literal, literal_array, qualified_relation_sql
from alembic_lossless_unique.target import UniqueTarget

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


# Publications that carry the package's private tables: a logical subscriber of one needs those
# tables (with their columns) before the first change to them arrives, or its apply worker
# stops on "logical replication target relation ... does not exist" and replicates nothing.


def carrying_publications(db: Database, schemas: list[str]) -> list[tuple[str, str]]:
    """(publication, how) for each publication that publishes, or will publish, the tables of
    `schemas`: FOR ALL TABLES, FOR TABLES IN SCHEMA (PostgreSQL 15+), or FOR TABLE naming
    one of their tables. Read-only."""
    by_schema = int(db.scalar("SELECT pg_catalog.current_setting('server_version_num')")) >= 150000
    rows = db.rows(
        """
SELECT p.pubname::text AS name, 'FOR ALL TABLES' AS how
  FROM pg_catalog.pg_publication p WHERE p.puballtables
UNION ALL
SELECT pt.pubname::text, 'FOR TABLE ' || pg_catalog.string_agg(
           pg_catalog.format('%I.%I', pt.schemaname, pt.tablename), ', ' ORDER BY pt.tablename)
  FROM pg_catalog.pg_publication_tables pt
 WHERE pt.schemaname = ANY (:schemas)
   AND pt.pubname NOT IN (SELECT pubname FROM pg_catalog.pg_publication WHERE puballtables)
 GROUP BY pt.pubname"""
        + (
            """
UNION ALL
SELECT p.pubname::text, 'FOR TABLES IN SCHEMA ' || pg_catalog.quote_ident(n.nspname)
  FROM pg_catalog.pg_publication p
  JOIN pg_catalog.pg_publication_namespace pn ON pn.pnpubid = p.oid
  JOIN pg_catalog.pg_namespace n ON n.oid = pn.pnnspid
 WHERE n.nspname = ANY (:schemas)"""
            if by_schema
            else ""
        )
        + "\nORDER BY 1, 2",
        {"schemas": list(schemas)},
    )
    found: dict[str, str] = {}
    for row in rows:  # FOR TABLES IN SCHEMA lists the schema's tables too: say it once
        if row.name not in found or not row.how.startswith("FOR TABLE "):
            found[row.name] = row.how
    return list(found.items())


def replication_announcements(
    publications: list[tuple[str, str]], schemas: list[str], ddl_command: str
) -> list[str]:
    """What the subscribers of those publications need, one line per publication."""
    where = ", ".join(schemas)
    return [
        f"publication {name} ({how}) carries the tables this migration writes in {where} (version"
        " table, ledger, archive) to its subscribers: a logical replica needs them, with their"
        " columns, before this run writes them, or its apply worker stops replicating every"
        f" table; print their DDL with `{ddl_command}` and run it on each subscriber first (a"
        " CDC stream just sees new tables)"
        for name, how in publications
    ]


def announce_replication(
    db: Database, schemas: list[str], ddl_command: str, log: logging.Logger
) -> None:
    """Log the replication announcements, each publication once per migrator connection (the
    environment and the operation both ask, before each writes its tables)."""
    said = db.connection.info.setdefault(_ANNOUNCED, set())
    for publication in carrying_publications(db, schemas):
        if publication[0] not in said:
            log.warning("%s", *replication_announcements([publication], schemas, ddl_command))
            said.add(publication[0])


_ANNOUNCED = "lossless_unique_replication_announced"


SUBSCRIBER_DDL = "python -m alembic_lossless_unique.subscriber_ddl"


def subscriber_ddl_command(target: UniqueTarget) -> str:
    """The command that prints the subscriber's DDL for `target`."""
    return (
        f"{SUBSCRIBER_DDL} --table {target.table} --columns {','.join(target.columns)}"
        " (the operation's arguments)"
    )


def version_table_ddl_command(schema: str, table: str) -> str:
    """The command that prints the subscriber's DDL where the version table is `schema.table`."""
    return f"{SUBSCRIBER_DDL} (the operation's arguments, and --version-table {schema}.{table})"
