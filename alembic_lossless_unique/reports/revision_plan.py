"""`python -m alembic_lossless_unique plan`: what the pending revisions would do, read-only.

    python -m alembic_lossless_unique plan [-c alembic.ini] [upgrade head | downgrade REV]
                                           [--json] [--allow CODE,...]

For every ensure_unique_constraint / undo_unique_constraint and ensure_unique_index /
undo_unique_index the command's revisions would run, preflight's report of its table today
(state, rows to archive, child rows to re-point, each step with its lock and what the app
waits, publications, refusals), its hazard codes (hazards.py), and one fingerprint of what the
plan depended on (expected_plan.py), which `alembic -x expect_plan=FINGERPRINT upgrade head`
checks before changing anything.

How: the project's own env.py runs, as `alembic upgrade --sql` would run it (so an env.py of its
own, that never reaches run_migrations, cannot touch the database either), with a PlanRequest
in the config's attributes. run_migrations hands it the context and every keyword the env.py
gave, so the plan reads the version table where the project keeps it and the database the
project migrates, with no argument typed again. The request then, on the migrator's session:
reads the current heads, reads the revisions from them without a database (pending.py), reads
the index form's keys by their probes (in a transaction that is rolled back: they create a
temporary table, which a READ ONLY transaction refuses), and then, in one READ ONLY transaction,
gathers preflight's report for each operation and the plan's fingerprint.
"""

import argparse
import io
import json
import os
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

from alembic.config import Config
from alembic.runtime.environment import EnvironmentContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection
from sqlalchemy.engine import URL

from alembic_lossless_unique.reports import expected_plan, hazards, preflight
from alembic_lossless_unique.runtime import environment, pending
from alembic_lossless_unique.runtime.database import Database
from alembic_lossless_unique.runtime.database_url import DatabaseUrlError
from alembic_lossless_unique.runtime.errors import MigrationAbort
from alembic_lossless_unique.runtime.settings import MigrationSettings


@dataclass
class OperationPlan:
    revision: str
    operation: str
    table: str
    constraint: str
    hazards: list[hazards.Found]
    preflight: preflight.Report

    @property
    def is_upgrade(self) -> bool:
        return self.operation in pending.UPGRADE_OPERATIONS

    def as_json(self) -> dict[str, Any]:
        return {
            "revision": self.revision,
            "operation": self.operation,
            "table": self.table,
            "constraint": self.constraint,
            "hazards": [hazard.code for hazard in self.hazards],
            "hazard_details": [asdict(hazard) for hazard in self.hazards],
            "preflight": self.preflight.as_json(),
        }


@dataclass
class RevisionPlan:
    command: str
    current_revisions: list[str]
    pending_revisions: list[str]
    fingerprint: str
    operations: list[OperationPlan] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "command": self.command,
            "current_revisions": self.current_revisions,
            "pending_revisions": self.pending_revisions,
            "fingerprint": self.fingerprint,
            "hazard_codes_version": hazards.HAZARD_CODES_VERSION,
            "operations": [operation.as_json() for operation in self.operations],
        }


@dataclass
class ToRun:
    """What the command would run, read before the plan's READ ONLY transaction."""

    heads: tuple[str, ...]
    found: pending.Pending
    # Each operation's target as preflight reads it (the index form's key probed), in order.
    probed: list[preflight.Probed]


def pending_of(context: Any, db: Database, configure: dict[str, Any]) -> ToRun:
    """The revisions `alembic COMMAND` (which `context` runs) would run from the database's
    heads, their operations, and the index form's keys (`db` may write: its transaction is
    rolled back, see preflight.probing)."""
    heads = pending.current_heads(db.connection, configure)
    found = pending.pending_operations(context, heads, configure)
    return ToRun(heads, found, [preflight.probed(db, o.target) for o in found.operations])


def plan_of(db: Database, command: str, to_run: ToRun) -> RevisionPlan:
    """The plan of `alembic COMMAND`, from the database `db` is in (read-only)."""
    heads, found = to_run.heads, to_run.found
    operations = []
    for operation, probed in zip(found.operations, to_run.probed, strict=True):
        report = preflight.gather(db, probed.target, refusal=probed.refusal)
        operations.append(
            OperationPlan(
                revision=operation.revision,
                operation=operation.operation,
                table=operation.target.display_table,
                constraint=operation.target.constraint_name,
                hazards=hazards.hazards_of(report, upgrade=operation.is_upgrade),
                preflight=report,
            )
        )
    return RevisionPlan(
        command=command,
        current_revisions=list(heads),
        pending_revisions=found.revisions,
        fingerprint=expected_plan.fingerprint(db, found.operations),
        operations=operations,
    )


@dataclass
class PlanRequest:
    """Put in config.attributes[PLAN_REQUEST]: run_migrations answers it instead of migrating."""

    # The command planned, as alembic takes it: "upgrade head", "downgrade -1", ...
    command: str
    plan: RevisionPlan | None = None

    def __call__(
        self,
        context: Any,
        *,
        url: str | URL | None,
        connection: Connection | None,
        application_name: str,
        app_schema: str,
        configure: dict[str, Any],
    ) -> None:
        configure.setdefault("version_table_schema", app_schema)
        settings = MigrationSettings.from_config(context.config)

        def read(migrator: Connection) -> RevisionPlan:
            to_run = preflight.probing(
                migrator, settings, lambda db: pending_of(context, db, configure)
            )
            return preflight.in_read_only_transaction(
                migrator, settings, lambda db: plan_of(db, self.command, to_run)
            )

        injected = connection or context.config.attributes.get("connection")
        self.plan = environment.on_migrator_connection(
            context, injected, url, application_name, app_schema, read
        )


def make_plan(config: Config, direction: str, revision: str) -> RevisionPlan:
    """Run the project's env.py for `alembic DIRECTION REVISION`, read-only, for its plan."""
    script = ScriptDirectory.from_config(config)
    request = PlanRequest(f"{direction} {revision}")
    config.attributes[pending.PLAN_REQUEST] = request

    def revisions(heads: Any, _context: Any) -> Any:  # as alembic.command's upgrade/downgrade
        if direction == "upgrade":
            return script._upgrade_revs(revision, heads)
        return script._downgrade_revs(revision, heads)

    # as_sql: an env.py that never calls run_migrations writes a script nobody reads.
    with EnvironmentContext(config, script, fn=revisions, as_sql=True, destination_rev=revision):
        script.run_env()
    if request.plan is None:
        raise MigrationAbort(
            "the project's env.py did not call alembic_lossless_unique.run_migrations(context,"
            " ...): the plan reads the database through it"
        )
    return request.plan


# The command.


def text_lines(plan: RevisionPlan) -> list[str]:
    """The plan for a person: the command, its fingerprint, then each operation."""
    lines = [
        f"plan for `alembic {plan.command}`; read only, nothing was changed",
        "  database at          " + (", ".join(plan.current_revisions) or "base (no revision)"),
        "  revisions to run     " + (", ".join(plan.pending_revisions) or "none: nothing to do"),
        f"  fingerprint          {plan.fingerprint} (deploy with"
        f" `alembic -x expect_plan={plan.fingerprint} {plan.command}`)",
        f"  hazard codes         version {hazards.HAZARD_CODES_VERSION}",
    ]
    if not plan.operations:
        lines.append(
            "  operations           none of ensure_unique_constraint, undo_unique_constraint,"
            " ensure_unique_index, undo_unique_index"
        )
    for operation in plan.operations:
        lines += [
            "",
            f"revision {operation.revision}: {operation.operation} {operation.constraint}"
            f" on {operation.table}",
            "  hazards              "
            + (", ".join(hazard.code for hazard in operation.hazards) or "none"),
            *(f"    {hazard.code}: {hazard.detail}" for hazard in operation.hazards),
            *preflight.text_lines(operation.preflight, upgrade=operation.is_upgrade),
            *(f"  PROBLEM: {problem}" for problem in hazards.refusals(operation.preflight)),
        ]
    return lines


def not_allowed(plan: RevisionPlan, allowed: set[str]) -> list[tuple[str, str]]:
    """(code, a line naming it) for each hazard of the plan that `allowed` does not name."""
    return [
        (
            hazard.code,
            f"hazard {hazard.code} not allowed: revision {operation.revision},"
            f" {operation.operation} on {operation.table}: {hazard.detail}",
        )
        for operation in plan.operations
        for hazard in operation.hazards
        if hazard.code not in allowed
    ]


def allowed_codes(raw: str) -> set[str]:
    codes = {code.strip().upper() for code in raw.split(",") if code.strip()}
    unknown = sorted(codes - set(hazards.CODES))
    if unknown:
        raise MigrationAbort(
            f"--allow names unknown hazard codes {', '.join(unknown)} (version"
            f" {hazards.HAZARD_CODES_VERSION} knows {', '.join(hazards.CODES)})"
        )
    return codes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c",
        "--config",
        default=os.environ.get("ALEMBIC_CONFIG", "alembic.ini"),
        help="the project's alembic.ini (default: ./alembic.ini)",
    )
    parser.add_argument("-n", "--name", default="alembic", help="its section (default: alembic)")
    parser.add_argument(
        "-x",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="as alembic -x takes it: the env.py's arguments and this package's settings",
    )
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    parser.add_argument(
        "--allow",
        help="comma-separated hazard codes: exit 1, naming each, for any other hazard found",
    )
    parser.add_argument("direction", nargs="?", default="upgrade", choices=("upgrade", "downgrade"))
    parser.add_argument("revision", nargs="?", help="default for upgrade: head")


def run(arguments: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Print the plan (text or --json); exit 1 with FAILED lines for a failure or a hazard
    --allow does not name."""
    revision = arguments.revision or ("head" if arguments.direction == "upgrade" else None)
    if revision is None:
        parser.error("downgrade needs a revision (e.g. -1, base or a revision id)")
    try:
        allowed = allowed_codes(arguments.allow) if arguments.allow is not None else None
        if not os.path.isfile(arguments.config):
            raise MigrationAbort(f"no Alembic configuration at {arguments.config}: use -c FILE")
        config = Config(
            arguments.config,
            ini_section=arguments.name,
            # An env.py that never reaches run_migrations writes its offline script here.
            output_buffer=io.StringIO(),
            cmd_opts=argparse.Namespace(x=arguments.x),
        )
        plan = make_plan(config, arguments.direction, revision)
    except (CommandError, DatabaseUrlError, MigrationAbort) as error:
        print(f"FAILED: {error}", file=sys.stderr)
        return 1
    print(json.dumps(plan.as_json(), indent=2) if arguments.json else "\n".join(text_lines(plan)))
    if allowed is None:
        return 0
    refused = not_allowed(plan, allowed)
    for _, line in refused:
        print(line, file=sys.stderr)
    if refused:
        codes = sorted({code for code, _ in refused}, key=hazards.CODES.index)
        print(f"FAILED: hazards not allowed by --allow: {', '.join(codes)}", file=sys.stderr)
        return 1
    return 0
