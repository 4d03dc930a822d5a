"""Before `alembic upgrade head`: what it would find and do, without changing a thing.

    DATABASE_URL=postgresql://... python -m app.preflight [--json]

The unique pair's report from alembic_lossless_unique.reports.preflight (state, size, rows to
archive, NULL-phone rows kept, foreign keys and child rows to re-point, triggers and
publications, each step with its lock, anything that would make the upgrade or the downgrade
refuse), plus what only this package knows: its revision, the baseline for an empty
database, and columns of the table that its model does not declare. One READ ONLY
transaction, rolled back.
"""

import argparse
import sys
from dataclasses import dataclass, field
from typing import Any

from alembic_lossless_unique.reports import preflight
from alembic_lossless_unique.runtime.database import Database
from app.baseline import PRIVILEGE_PROBLEM
from app.names import (
    PRIVATE_SCHEMA,
    SEED_INDEX_NAME,
    SUBSCRIBER_DDL_COMMAND,
    TABLE,
    VERSION_TABLE,
)
from app.unique_pair import TARGET


@dataclass
class Report:
    database: str
    role: str
    server_version: str
    alembic_revision: str | None
    unique_pair: preflight.Report
    unknown_columns: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        pair = self.unique_pair.as_json()
        return {
            "database": self.database,
            "role": self.role,
            "server_version": self.server_version,
            "alembic_revision": self.alembic_revision,
            **pair,
            "null_phone_rows": pair["null_key_rows"],
            "unknown_columns": self.unknown_columns,
        }


def model_columns() -> set[str]:
    from app.models import MetaAssetsCache

    return {column.name for column in MetaAssetsCache.__table__.columns}


def revision(db: Database) -> str | None:
    for table in (VERSION_TABLE, "public.alembic_version"):  # the latter: earlier releases
        if db.relation_exists(table):
            return db.scalar(f"SELECT pg_catalog.string_agg(version_num, ',') FROM {table}")
    return None


def gather(db: Database) -> Report:
    facts = db.execute(
        "SELECT pg_catalog.current_database() AS database, current_user AS role,"
        " pg_catalog.current_setting('server_version') AS server_version"
    ).one()
    privileges = db.scalar("SELECT " + PRIVILEGE_PROBLEM)
    if privileges:
        # Read no further: the private schema may be someone else's, with code in its views.
        pair = preflight.Report(table=TARGET.display_table, problems=[privileges])
        pair.table_exists = db.relation_exists(TARGET.qualified_table)
        pair.state, pair.state_description = "blocked", privileges
        return Report(facts.database, facts.role, facts.server_version, None, pair)
    pair = preflight.gather(db, TARGET, SUBSCRIBER_DDL_COMMAND)
    if not db.relation_exists(VERSION_TABLE):  # env.py creates it first, in the private schema
        pair.replication = preflight.replication_lines(db, [PRIVATE_SCHEMA], SUBSCRIBER_DDL_COMMAND)
    report = Report(facts.database, facts.role, facts.server_version, revision(db), pair)
    if not pair.table_exists:
        pair.problems = [p for p in pair.problems if "does not exist" not in p]
        pair.state = "empty"
        pair.state_description = f"no {TABLE}: the baseline revision creates it"
        pair.steps = [
            preflight.Step(
                f"create public.workspaces (when missing) and {TABLE} with the constraint"
                f" {TARGET.constraint_name}",
                "none: new tables",
            )
        ]
        return report
    if pair.state == "indexed" and SEED_INDEX_NAME in pair.state_description:
        pair.state = "seedindex"  # the hand-made fix's index, in this package's words
    live = {
        row.attname
        for row in db.rows(
            "SELECT attname FROM pg_catalog.pg_attribute WHERE attrelid ="
            " pg_catalog.to_regclass(:table) AND attnum > 0 AND NOT attisdropped",
            {"table": TARGET.qualified_table},
        )
    }
    report.unknown_columns = sorted(live - model_columns())
    return report


def run(url) -> Report:
    return preflight.read_only(url, "meta_assets_cache preflight", gather)


def text_lines(report: Report) -> list[str]:
    pair = report.unique_pair
    lines = [
        f"preflight for {report.database} (as {report.role}, PostgreSQL"
        f" {report.server_version}); read only, nothing was changed",
        f"  alembic revision     {report.alembic_revision or 'none (not migrated yet)'}",
    ]
    if not pair.table_exists:
        lines.append(f"  starting state       empty: {pair.state_description}")
        lines += [f"  replication          {line}" for line in pair.replication]
        lines += [f"  step                 {step.action}" for step in pair.steps]
    else:
        lines += preflight.text_lines(pair)
    if report.unknown_columns:
        lines.append(
            "  columns not in model "
            + ", ".join(report.unknown_columns)
            + " (archived and restored with their rows)"
        )
    lines += [f"  PROBLEM: {problem}" for problem in pair.problems]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="meta-assets-preflight",
        description="Read-only report: what `alembic upgrade head` would find and do.",
    )
    return preflight.command(argv, parser, lambda arguments, url: run(url), text_lines)


if __name__ == "__main__":
    sys.exit(main())
