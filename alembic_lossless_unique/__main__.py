"""The package's command line: `python -m alembic_lossless_unique SUBCOMMAND ...`.

    plan    read-only: what the pending revisions' unique operations would do (revision_plan)

(`python -m alembic_lossless_unique.preflight` and `.subscriber_ddl` stay commands of their own.)
"""

import argparse
import sys
from collections.abc import Callable, Sequence

from alembic_lossless_unique.reports import revision_plan

AddArguments = Callable[[argparse.ArgumentParser], None]
Run = Callable[[argparse.Namespace, argparse.ArgumentParser], int]

# name -> (what it does, its arguments, the function that runs it)
SUBCOMMANDS: dict[str, tuple[str, AddArguments, Run]] = {
    "plan": (
        "read-only: what the pending revisions' unique operations would do, with their hazard"
        " codes and the plan's fingerprint",
        revision_plan.add_arguments,
        revision_plan.run,
    ),
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m alembic_lossless_unique")
    commands = parser.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")
    parsers = {}
    for name, (what, add_arguments, _) in SUBCOMMANDS.items():
        parsers[name] = commands.add_parser(name, help=what, description=what)
        add_arguments(parsers[name])
    arguments = parser.parse_args(argv)
    _, _, run = SUBCOMMANDS[arguments.command]
    return run(arguments, parsers[arguments.command])


if __name__ == "__main__":
    sys.exit(main())
