"""Duplicate keyed rows are moved aside, never destroyed, and can be moved back.

Per (workspace_id, phone_number_id) the kept row is the newest: greatest updated_at, then
greatest last_synced_at (NULL counts as oldest), then greatest id. The id breaks ties instead of
the reference's ctid because it is stable across dumps, restores and replicas.
Rows whose phone_number_id is NULL never conflict on the unique and are never touched.
"""

from dataclasses import dataclass

from app.migration_helpers.catalog import existing_roles, relation_exists, table_columns
from app.migration_helpers.database import Database
from app.migration_helpers.names import (
    API_ROLES,
    ARCHIVE,
    ARCHIVE_NAME,
    TABLE,
)

ARCHIVE_REASON = "duplicate (workspace_id, phone_number_id): a newer row was kept"


@dataclass(frozen=True)
class ArchiveResult:
    duplicate_groups: int
    rows_archived: int


def create_archive(db: Database) -> None:
    """The archive mirrors the live table's columns and adds when, why and which row was kept."""
    db.execute(
        f"CREATE TABLE IF NOT EXISTS {ARCHIVE} ("
        f" LIKE {TABLE},"
        " kept_id uuid NOT NULL,"
        " archived_at timestamptz NOT NULL DEFAULT now(),"
        " archived_reason text NOT NULL,"
        f" CONSTRAINT {ARCHIVE_NAME}_pkey PRIMARY KEY (id))"
    )
    # Defence in depth beside the private schema: no API role may read what was removed.
    db.execute(f"ALTER TABLE {ARCHIVE} ENABLE ROW LEVEL SECURITY")
    db.execute(f"REVOKE ALL ON TABLE {ARCHIVE} FROM PUBLIC")
    for role in existing_roles(db, API_ROLES):
        db.execute(f"REVOKE ALL ON TABLE {ARCHIVE} FROM {db.quote(role)}")


def archive_duplicates(db: Database) -> ArchiveResult:
    """One statement: find duplicate keys with a hash aggregate, rank only those groups, delete
    the losers and insert them into the archive. The delete finds each loser by its ctid (a
    direct heap fetch in heap order, no primary-key lookup) and re-checks the id and the ranking
    columns, so a row updated meanwhile is left alone (a later unique build failure retries the
    dedupe)."""
    columns = [db.quote(column) for column in table_columns(db)]
    column_list = ", ".join(columns)
    removed_columns = ", ".join(f"c.{column}" for column in columns)
    with db.transaction():
        raise_work_mem(db)
        row = db.execute(
            move_duplicates_sql(column_list, removed_columns, reason=":reason")
            + " SELECT count(DISTINCT kept_id) AS groups, count(*) AS rows FROM archived",
            {"reason": ARCHIVE_REASON},
        ).one()
    return ArchiveResult(duplicate_groups=row.groups, rows_archived=row.rows)


def move_duplicates_sql(column_list: str, removed_columns: str, reason: str) -> str:
    """The statement's CTEs, ending in `archived` (one kept_id per archived row). Shared with
    the offline script, which fills the column lists and the reason in with format().

    The losers are deleted in ctid order: the deletes walk the heap forward instead of jumping to
    a random page per row, which halves the delete on a table larger than shared_buffers."""
    return f"""
            WITH duplicate_keys AS (
                SELECT workspace_id, phone_number_id
                  FROM {TABLE}
                 WHERE phone_number_id IS NOT NULL
                 GROUP BY workspace_id, phone_number_id
                HAVING count(*) > 1
            ), ranked AS (
                SELECT c.ctid AS row_ctid, c.id, c.updated_at, c.last_synced_at,
                       row_number() OVER newest_first AS position,
                       first_value(c.id) OVER newest_first AS kept_id
                  FROM {TABLE} c
                  JOIN duplicate_keys d
                    ON d.workspace_id = c.workspace_id AND d.phone_number_id = c.phone_number_id
                WINDOW newest_first AS (
                    PARTITION BY c.workspace_id, c.phone_number_id
                    ORDER BY c.updated_at DESC, c.last_synced_at DESC NULLS LAST, c.id DESC)
            ), removed AS (
                DELETE FROM {TABLE} c
                 USING (SELECT * FROM ranked WHERE position > 1 ORDER BY row_ctid) r
                 WHERE c.ctid = r.row_ctid
                   AND c.id = r.id
                   AND c.updated_at = r.updated_at
                   AND c.last_synced_at IS NOT DISTINCT FROM r.last_synced_at
                RETURNING {removed_columns}, r.kept_id
            ), archived AS (
                INSERT INTO {ARCHIVE} ({column_list}, kept_id, archived_reason)
                SELECT {column_list}, kept_id, {reason} FROM removed
                RETURNING kept_id
            )
    """


# The hash aggregate over every key spills to disk in dozens of batches under the default 4MB
# (about 150 bytes per key); 64MB (x hash_mem_multiplier) keeps a million keys nearly in memory.
DEDUPE_WORK_MEM = "64MB"


def raise_work_mem(db: Database) -> None:
    """For this transaction only, and never lower than what the DBA configured."""
    db.execute(
        "SELECT set_config('work_mem', :work_mem, true)"
        " WHERE pg_size_bytes(current_setting('work_mem')) < pg_size_bytes(:work_mem)",
        {"work_mem": DEDUPE_WORK_MEM},
    )


def archived_row_count(db: Database) -> int:
    if not relation_exists(db, ARCHIVE):
        return 0
    return db.scalar(f"SELECT count(*) FROM {ARCHIVE}")


def restore_archived_rows(db: Database) -> int:
    """Move every archived row back, unchanged, in one transaction."""
    if not relation_exists(db, ARCHIVE):
        return 0
    column_list = ", ".join(db.quote(column) for column in table_columns(db))
    with db.transaction():
        restored = db.scalar(
            f"""
            WITH moved AS (DELETE FROM {ARCHIVE} RETURNING {column_list})
            , restored AS (INSERT INTO {TABLE} ({column_list})
                           SELECT {column_list} FROM moved RETURNING 1)
            SELECT count(*) FROM restored
            """
        )
    return restored


def drop_archive(db: Database) -> None:
    db.execute(f"DROP TABLE IF EXISTS {ARCHIVE}")
