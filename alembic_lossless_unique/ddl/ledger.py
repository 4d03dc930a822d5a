"""What an operation found and did, kept in the database itself, in the private schema.

A downgrade must undo exactly what its upgrade did, on whatever database it met, and a re-run
after a crash must know which half-built objects are its own. Both read this ledger: an
append-only log of steps, each recorded before or atomically with its effect.
"""

import json
from dataclasses import dataclass
from typing import Any

from alembic_lossless_unique.ddl.sqltext import literal
from alembic_lossless_unique.operations.target import UniqueTarget
from alembic_lossless_unique.runtime.database import Database


@dataclass(frozen=True)
class Step:
    seq: int
    action: str
    detail: dict[str, Any]

    @property
    def partition(self) -> tuple[str, str] | None:
        """The partition (schema, table) the step acted on, in an operation on a partitioned
        table; None for the table the operation was given."""
        where = self.detail.get(PARTITION)
        return (where[0], where[1]) if where else None


# The detail that names a partition's steps in the ledger of an operation on its partitioned
# table: [schema, table].
PARTITION = "partition"


def partition_detail(target: UniqueTarget) -> dict[str, Any]:
    """What every ledger entry of `target` carries: the partition it acts on, if it is one."""
    return {PARTITION: [target.schema, target.table]} if target.partition_of else {}


def partition_detail_sql(target: UniqueTarget) -> str:
    """The same as a jsonb expression, for entries that SQL writes itself (the dedupe's)."""
    return f"CAST({literal(json.dumps(partition_detail(target)))} AS jsonb)"


def create_ledger_sql(target: UniqueTarget) -> str:
    return (
        f"CREATE TABLE IF NOT EXISTS {target.ledger} ("
        " seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
        " action text NOT NULL,"
        " detail jsonb NOT NULL,"
        " recorded_at timestamptz NOT NULL DEFAULT pg_catalog.now())"
    )


def exists(db: Database, target: UniqueTarget) -> bool:
    return db.relation_exists(target.ledger)


def record(db: Database, target: UniqueTarget, action: str, **detail: Any) -> None:
    db.execute(
        f"INSERT INTO {target.ledger} (action, detail) VALUES (:action, CAST(:detail AS jsonb))",
        {"action": action, "detail": json.dumps({**detail, **partition_detail(target)})},
    )


def steps(db: Database, target: UniqueTarget) -> list[Step]:
    """The steps of `target` itself: of the table given, or of one partition of it."""
    mine = partition_detail(target).get(PARTITION)
    return [
        step
        for step in every_step(db, target)
        if (list(step.partition) if step.partition else None) == mine
    ]


def every_step(db: Database, target: UniqueTarget) -> list[Step]:
    """Every step of the operation, a partitioned table's partitions' included."""
    if not exists(db, target):
        return []
    # As text, parsed here: drivers differ in what they make of jsonb (asyncpg: a str).
    return [
        Step(row.seq, row.action, json.loads(row.detail))
        for row in db.rows(f"SELECT seq, action, detail::text FROM {target.ledger} ORDER BY seq")
    ]


# A rollback that restores in batches marks its ledger with this comment when it drops the
# unique, in the same transaction; the ledger goes with the last batch's transaction. A ledger
# still so marked is a rollback stopped midway: the table has no unique and part of its rows.
ROLLBACK_UNDER_WAY = "alembic_lossless_unique: rollback under way, restoring in batches: "


def mark_rollback_under_way_sql(target: UniqueTarget) -> str:
    what = f"{target.kind} {target.constraint_name} on {target.key_description}"
    return f"COMMENT ON TABLE {target.ledger} IS {literal(ROLLBACK_UNDER_WAY + what)}"


def stopped_rollbacks(db: Database) -> list[str]:
    """What each rollback stopped between its batches was undoing ("unique constraint X on
    schema.table (columns)"), from the marks on their ledgers, wherever they live."""
    return [
        str(row.description)[len(ROLLBACK_UNDER_WAY) :]
        for row in db.rows(
            "SELECT d.description FROM pg_catalog.pg_description d"
            " WHERE d.classoid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.objsubid = 0"
            " AND pg_catalog.starts_with(d.description, :mark)"
            " ORDER BY d.description",
            {"mark": ROLLBACK_UNDER_WAY},
        )
    ]


def built_before(steps_done: list[Step]) -> bool:
    """An index under the target's name was built by this operation, not found."""
    return any(step.action == "built" for step in steps_done)


def built_before_sql(target: UniqueTarget) -> str:
    """The same question asked in SQL, for the offline script (the ledger exists by then)."""
    return (
        f"EXISTS (SELECT 1 FROM {target.ledger} WHERE action = 'built'"
        f" AND NOT detail ? {literal(PARTITION)})"
    )
