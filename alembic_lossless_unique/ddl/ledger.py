"""What an operation found and did, kept in the database itself, in the private schema.

A downgrade must undo exactly what its upgrade did, on whatever database it met, and a re-run
after a crash must know which half-built objects are its own. Both read this ledger: an
append-only log of steps, each recorded before or atomically with its effect.
"""

import json
from dataclasses import dataclass
from typing import Any

from alembic_lossless_unique.operations.target import UniqueTarget
from alembic_lossless_unique.runtime.database import Database


@dataclass(frozen=True)
class Step:
    seq: int
    action: str
    detail: dict[str, Any]


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
        {"action": action, "detail": json.dumps(detail)},
    )


def steps(db: Database, target: UniqueTarget) -> list[Step]:
    if not exists(db, target):
        return []
    # As text, parsed here: drivers differ in what they make of jsonb (asyncpg: a str).
    return [
        Step(row.seq, row.action, json.loads(row.detail))
        for row in db.rows(f"SELECT seq, action, detail::text FROM {target.ledger} ORDER BY seq")
    ]


def built_before(steps_done: list[Step]) -> bool:
    """An index under the target's name was built by this operation, not found."""
    return any(step.action == "built" for step in steps_done)


def built_before_sql(target: UniqueTarget) -> str:
    """The same question asked in SQL, for the offline script (the ledger exists by then)."""
    return f"EXISTS (SELECT 1 FROM {target.ledger} WHERE action = 'built')"
