"""Read-only facts about public.meta_assets_cache and the uniques that cover the pair."""

from dataclasses import dataclass

from alembic_lossless_unique.database import Database
from alembic_lossless_unique.errors import MigrationAbort
from alembic_lossless_unique.names import CANONICAL_UNIQUE_NAME, PAIR, SEED_INDEX_NAME, TABLE


@dataclass(frozen=True)
class PairUnique:
    """A unique index whose key columns are exactly workspace_id and phone_number_id."""

    index_name: str
    constraint_name: str | None
    columns: tuple[str, ...]
    valid: bool
    # No predicate, expressions or INCLUDE columns, btree with default ordering: such an index
    # serves ON CONFLICT (workspace_id, phone_number_id) and can be promoted to a constraint.
    plain: bool
    definition: str
    comment: str | None

    @property
    def is_canonical_constraint(self) -> bool:
        return (
            self.constraint_name == CANONICAL_UNIQUE_NAME
            and self.valid
            and self.plain
            and self.columns == PAIR
        )

    @property
    def promotable(self) -> bool:
        return self.valid and self.plain and self.columns == PAIR and self.constraint_name is None

    @property
    def serves_upsert(self) -> bool:
        return self.valid and self.plain

    def recreation_record(self) -> dict[str, str | None]:
        """What a downgrade needs to build this unique again, exactly as it was."""
        return {
            "index_name": self.index_name,
            "constraint_name": self.constraint_name,
            "definition": self.definition,
            "comment": self.comment,
        }

    def describe(self) -> str:
        kind = f"constraint {self.constraint_name}" if self.constraint_name else "index"
        flags = "" if self.valid else " (INVALID)"
        return f"{kind} {self.index_name} ({', '.join(self.columns)}){flags}"


def unique_indexes_with_two_keys_sql(table: str) -> str:
    """Every unique index on `table` (an SQL expression of type regclass) with two key columns,
    described for PairUnique. Shared with the offline script, which filters it in plpgsql."""
    return f"""
SELECT ic.relname::text COLLATE "C" AS index_name,
       con.conname::text AS constraint_name,
       ARRAY(SELECT a.attname::text
               FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, position)
               JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
              WHERE k.position <= i.indnkeyatts
              ORDER BY k.position) AS columns,
       i.indisvalid AND i.indisready AS valid,
       (i.indpred IS NULL AND i.indexprs IS NULL AND i.indnatts = i.indnkeyatts
        AND am.amname = 'btree'
        AND NOT EXISTS (SELECT 1 FROM unnest(i.indoption::int2[]) AS o(flag) WHERE o.flag <> 0))
           AS plain,
       pg_get_indexdef(i.indexrelid) AS definition,
       obj_description(i.indexrelid, 'pg_class') AS comment
  FROM pg_index i
  JOIN pg_class ic ON ic.oid = i.indexrelid
  JOIN pg_am am ON am.oid = ic.relam
  LEFT JOIN pg_constraint con
         ON con.conindid = i.indexrelid AND con.conrelid = i.indrelid AND con.contype = 'u'
 WHERE i.indrelid = {table} AND i.indisunique AND i.indnkeyatts = 2
"""


_PAIR_UNIQUES = unique_indexes_with_two_keys_sql("to_regclass(:table)") + " ORDER BY index_name"


def pair_uniques(db: Database) -> list[PairUnique]:
    found = []
    for row in db.rows(_PAIR_UNIQUES, {"table": TABLE}):
        columns = tuple(row.columns)
        if sorted(columns) == sorted(PAIR):
            found.append(
                PairUnique(
                    index_name=row.index_name,
                    constraint_name=row.constraint_name,
                    columns=columns,
                    valid=row.valid,
                    plain=row.plain,
                    definition=row.definition,
                    comment=row.comment,
                )
            )
    return found


def index_is_valid(db: Database, name: str) -> bool | None:
    """True/False for an index on the table; None when there is no such index."""
    return db.scalar(
        "SELECT i.indisvalid AND i.indisready FROM pg_index i JOIN pg_class c"
        " ON c.oid = i.indexrelid WHERE i.indrelid = to_regclass(:table) AND c.relname = :name",
        {"table": TABLE, "name": name},
    )


def constraint_exists(db: Database, name: str) -> bool:
    return bool(
        db.scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_constraint"
            " WHERE conrelid = to_regclass(:table) AND conname = :name)",
            {"table": TABLE, "name": name},
        )
    )


def relation_exists(db: Database, qualified_name: str) -> bool:
    return db.scalar("SELECT to_regclass(:name) IS NOT NULL", {"name": qualified_name})


def existing_roles(db: Database, roles: tuple[str, ...]) -> list[str]:
    """The given roles that exist here: Supabase's API roles are absent on a plain PostgreSQL."""
    return [
        row.rolname
        for row in db.rows(
            "SELECT rolname FROM pg_roles WHERE rolname = ANY(:roles) ORDER BY rolname",
            {"roles": list(roles)},
        )
    ]


def table_columns(db: Database) -> list[str]:
    """The live table's columns in order: the archive copies whatever the table really has."""
    return [
        row.attname
        for row in db.rows(
            "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(:table)"
            " AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            {"table": TABLE},
        )
    ]


def require_table_owned_by_current_role(db: Database) -> None:
    """Fail before changing anything when the table is missing or this role cannot alter it."""
    row = db.execute(
        "SELECT pg_get_userbyid(c.relowner) AS owner,"
        " pg_has_role(current_user, c.relowner, 'USAGE')"
        " OR (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) AS may_alter,"
        " current_user AS role"
        " FROM pg_class c WHERE c.oid = to_regclass(:table)",
        {"table": TABLE},
    ).first()
    if row is None:
        raise MigrationAbort(
            f"table {TABLE} does not exist in database {db.scalar('SELECT current_database()')}:"
            " check DATABASE_URL points at the app's database"
        )
    if not row.may_alter:
        raise MigrationAbort(
            f"role {row.role!r} cannot alter {TABLE} (owned by {row.owner!r}):"
            " run the migration as the table's owner"
        )


def estimated_row_count(db: Database) -> int:
    """The planner's estimate: free to read, good enough for a progress line."""
    return int(
        db.scalar(
            "SELECT greatest(reltuples, 0)::bigint FROM pg_class WHERE oid = to_regclass(:table)",
            {"table": TABLE},
        )
        or 0
    )


def seed_index_first(uniques: list[PairUnique]) -> list[PairUnique]:
    """Order candidates for promotion: the canonical name, the seed fix's index, then by name."""
    rank = {CANONICAL_UNIQUE_NAME: 0, SEED_INDEX_NAME: 1}
    return sorted(uniques, key=lambda unique: (rank.get(unique.index_name, 2), unique.index_name))
