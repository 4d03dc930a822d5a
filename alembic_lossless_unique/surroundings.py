"""What else sees the table move: foreign keys into it, user triggers, publications (Supabase
Realtime), columns that are generated or identity. Announced before the upgrade changes a row,
in the run's log, in preflight and in the offline script: never hidden."""

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
