"""What an upgrade or a downgrade under the app's traffic must leave, whatever the traffic was.

Every existing row a traffic client writes belongs to that client alone, so from the outcomes
the exact content each row must end with is known: the last value its updater or re-keyer
wrote, or its original bytes when nobody wrote it. The checks compare that with the table and
the archive, row by row.
"""

from dataclasses import dataclass

from app.names import ARCHIVE
from devtools.app_traffic import Outcome

# The table's columns as one text value, the same from the table and from the archive (whose
# own columns come after the table's): equal means byte for byte.
TABLE_COLUMNS = """
SELECT pg_catalog.string_agg(pg_catalog.quote_ident(attname), ', ' ORDER BY attnum)
  FROM pg_catalog.pg_attribute
 WHERE attrelid = 'public.meta_assets_cache'::regclass AND attnum > 0 AND NOT attisdropped"""


@dataclass
class Contents:
    """Rows by id, as text of the table's columns, with the facts the checks read."""

    table: dict[str, str]
    archive: dict[str, str]
    last_error: dict[str, str | None]
    phone: dict[str, str | None]

    @property
    def everywhere(self) -> dict[str, str]:
        return {**self.archive, **self.table}


def contents(harness) -> Contents:
    columns = harness.scalar(TABLE_COLUMNS)

    def read(relation: str) -> list:
        if not harness.scalar("SELECT to_regclass(:r) IS NOT NULL", r=relation):
            return []
        return harness.rows(
            f"SELECT id::text, ROW({columns})::text, last_error, phone_number_id FROM {relation}"
        )

    table, archive = read("public.meta_assets_cache"), read(ARCHIVE)
    return Contents(
        table={row[0]: row[1] for row in table},
        archive={row[0]: row[1] for row in archive},
        last_error={row[0]: row[2] for row in table + archive},
        phone={row[0]: row[3] for row in table + archive},
    )


def conservation_problems(before: Contents, after: Contents, outcomes: list[Outcome]) -> list:
    """Nothing lost, nothing invented, nothing held twice; each row as its last write left it."""
    problems = []
    inserted = {o.row_id for o in outcomes if not o.failed and o.kind == "insert"}
    inserted |= {o.row_id for o in outcomes if not o.failed and o.kind == "upsert" and o.inserted}
    inserted |= {
        o.row_id for o in outcomes if not o.failed and o.kind == "insert_duplicate" and o.row_id
    }
    deleted = {o.row_id for o in outcomes if not o.failed and o.kind == "delete" and o.rowcount}
    expected = (before.everywhere.keys() | inserted) - deleted
    both = after.table.keys() & after.archive.keys()
    if both:
        problems.append(f"{len(both)} rows both in the table and the archive: {sorted(both)[:3]}")
    found = after.everywhere.keys()
    if found - expected:
        problems.append(f"{len(found - expected)} rows appeared: {sorted(found - expected)[:3]}")
    if expected - found:
        problems.append(f"{len(expected - found)} rows were lost: {sorted(expected - found)[:3]}")
    last_write: dict[str, Outcome] = {}
    for outcome in outcomes:  # in the order they started; each row has one writer
        if not outcome.failed and outcome.rowcount and outcome.kind in ("update", "rekey"):
            last_write[outcome.row_id] = outcome
    touched = set(last_write) | {
        o.row_id for o in outcomes if o.kind == "upsert" and not o.failed and not o.inserted
    }
    for row_id, outcome in last_write.items():
        if row_id not in found:
            continue
        column = after.last_error if outcome.kind == "update" else after.phone
        if column[row_id] != outcome.value:
            problems.append(
                f"row {row_id} holds {column[row_id]!r}, not its last {outcome.kind}"
                f" {outcome.value!r}"
            )
    for row_id, body in before.everywhere.items():
        if row_id in found and row_id not in touched and after.everywhere[row_id] != body:
            problems.append(f"row {row_id} changed though nobody wrote it: {body} -> "
                            f"{after.everywhere[row_id]}")  # fmt: skip
    return problems


# Each archived row against the live row of its key: the live row must rank at least as high
# (updated_at, then last_synced_at with NULL oldest, then id), and the row the archive names
# as kept must be that live row, unless the app deleted or re-keyed it since.
OUTRANKED = f"""
SELECT a.id::text, l.id::text
  FROM {ARCHIVE} a
  JOIN public.meta_assets_cache l
    ON l.workspace_id = a.workspace_id AND l.phone_number_id = a.phone_number_id
 WHERE (l.updated_at, coalesce(l.last_synced_at, '-infinity'), l.id)
     < (a.updated_at, coalesce(a.last_synced_at, '-infinity'), a.id)"""
KEPT_ELSEWHERE = f"""
SELECT a.id::text, a.kept_id::text
  FROM {ARCHIVE} a
 WHERE NOT EXISTS (SELECT 1 FROM public.meta_assets_cache k
                    WHERE k.id = a.kept_id AND k.workspace_id = a.workspace_id
                      AND k.phone_number_id = a.phone_number_id)"""
LIVE_DUPLICATES = """
SELECT workspace_id::text, phone_number_id FROM public.meta_assets_cache
 WHERE phone_number_id IS NOT NULL GROUP BY 1, 2 HAVING count(*) > 1"""


def newest_kept_problems(harness, outcomes: list[Outcome]) -> list[str]:
    """Of each key, exactly the newest row stayed, and only duplicates were archived."""
    problems = []
    if harness.rows(LIVE_DUPLICATES):
        problems.append(f"duplicate keys stayed: {harness.rows(LIVE_DUPLICATES)[:3]}")
    if not harness.scalar("SELECT to_regclass(:r) IS NOT NULL", r=ARCHIVE):
        return problems
    outranked = harness.rows(OUTRANKED)
    if outranked:
        problems.append(f"archived rows that outrank the row kept for their key: {outranked[:3]}")
    moved_by_the_app = {
        o.row_id for o in outcomes if not o.failed and o.rowcount and o.kind in ("delete", "rekey")
    }
    elsewhere = [row for row in harness.rows(KEPT_ELSEWHERE) if row[1] not in moved_by_the_app]
    if elsewhere:
        problems.append(
            f"archived rows whose kept row is not the live row of their key: {elsewhere[:3]}"
        )
    return problems
