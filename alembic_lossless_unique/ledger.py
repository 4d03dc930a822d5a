"""What the migrations found and did, kept in the database itself.

A downgrade must undo exactly what its upgrade did, on whatever database it met, and a re-run
after a crash must know which half-built objects are its own. Both read this ledger.
It lives in a private schema that the API roles cannot see.
"""

import json
from dataclasses import dataclass
from typing import Any

from alembic_lossless_unique.catalog import existing_roles, relation_exists
from alembic_lossless_unique.database import Database
from alembic_lossless_unique.names import (
    API_ROLES,
    BASELINE_LEDGER,
    LEDGER_SCHEMA,
    UNIQUE_PAIR_LEDGER,
)


def create_ledger_schema(db: Database) -> None:
    db.execute(f"CREATE SCHEMA IF NOT EXISTS {LEDGER_SCHEMA}")
    db.execute(f"REVOKE ALL ON SCHEMA {LEDGER_SCHEMA} FROM PUBLIC")
    for role in existing_roles(db, API_ROLES):
        db.execute(f"REVOKE ALL ON SCHEMA {LEDGER_SCHEMA} FROM {db.quote(role)}")


def drop_ledger_schema(db: Database) -> None:
    db.execute(f"DROP SCHEMA IF EXISTS {LEDGER_SCHEMA}")  # RESTRICT: refuses if anything is left


# Revision 1: the tables the baseline created (and so may drop).


def create_baseline_ledger(db: Database) -> None:
    db.execute(
        f"CREATE TABLE IF NOT EXISTS {BASELINE_LEDGER} ("
        " table_name text PRIMARY KEY, created_at timestamptz NOT NULL DEFAULT now())"
    )


def record_created_table(db: Database, table_name: str) -> None:
    db.execute(
        f"INSERT INTO {BASELINE_LEDGER} (table_name) VALUES (:name) ON CONFLICT DO NOTHING",
        {"name": table_name},
    )


def created_tables(db: Database) -> set[str]:
    if not relation_exists(db, BASELINE_LEDGER):
        return set()
    return {row.table_name for row in db.rows(f"SELECT table_name FROM {BASELINE_LEDGER}")}


def drop_baseline_ledger(db: Database) -> None:
    db.execute(f"DROP TABLE IF EXISTS {BASELINE_LEDGER}")


# Revision 2: an append-only log of the steps, in order.


@dataclass(frozen=True)
class Step:
    seq: int
    action: str
    detail: dict[str, Any]


def create_unique_pair_ledger(db: Database) -> None:
    db.execute(
        f"CREATE TABLE IF NOT EXISTS {UNIQUE_PAIR_LEDGER} ("
        " seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
        " action text NOT NULL,"
        " detail jsonb NOT NULL,"
        " recorded_at timestamptz NOT NULL DEFAULT now())"
    )


def unique_pair_ledger_exists(db: Database) -> bool:
    return relation_exists(db, UNIQUE_PAIR_LEDGER)


def record_step(db: Database, action: str, **detail: Any) -> None:
    db.execute(
        f"INSERT INTO {UNIQUE_PAIR_LEDGER} (action, detail)"
        " VALUES (:action, CAST(:detail AS jsonb))",
        {"action": action, "detail": json.dumps(detail)},
    )


def recorded_steps(db: Database) -> list[Step]:
    if not unique_pair_ledger_exists(db):
        return []
    return [
        Step(row.seq, row.action, row.detail)
        for row in db.rows(f"SELECT seq, action, detail FROM {UNIQUE_PAIR_LEDGER} ORDER BY seq")
    ]


def drop_unique_pair_ledger(db: Database) -> None:
    db.execute(f"DROP TABLE IF EXISTS {UNIQUE_PAIR_LEDGER}")
