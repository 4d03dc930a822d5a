"""The unique pair as a Supabase migration file, ready for `supabase db push`.

    python -m app.supabase_migration [--directory supabase/migrations] [--blocking]
                                     [--timestamp YYYYMMDDHHMMSS]

writes `<directory>/<timestamp>_meta_assets_cache_unique_ws_phone.sql`: `alembic upgrade head
--sql` from base, so it brings any database (empty, constrained, drifted, with the hand-made
index, or both) to the one constraint, whatever alembic revision it is at, and changes nothing
where there is nothing left to do. Pushed again (a second file with the same content, a retried
deploy, a database the SQL editor already migrated), it completes what is left and records
itself. Its header says which locks it takes and how long the app's writes may wait.

The default is the concurrent form, which `supabase db push` and psql -f run; --blocking writes
the form for the Supabase SQL editor. No database is needed: `python -m app.preflight` says what
the file will do to a given database, and how long the blocking form would stall its writes.
"""

import argparse
import io
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.util import CommandError

from alembic_lossless_unique.operations import offline
from alembic_lossless_unique.reports import preflight
from alembic_lossless_unique.runtime.errors import MigrationAbort
from app.names import CANONICAL_UNIQUE_NAME, PAIR, TABLE

PROJECT_ROOT = Path(__file__).resolve().parent.parent
NAME = "meta_assets_cache_unique_ws_phone"

CONCURRENT_LOCKS = f"""\
-- Locks, and how long the app's writes may wait (concurrent form, for supabase db push and
-- psql -f; each strong lock is waited for at most lock_timeout, {offline.LOCK_TIMEOUT}):
--   * SHARE ROW EXCLUSIVE on {TABLE} for the moment the duplicate guard is
--     installed;
--   * row locks on the duplicate rows only, while they move to the archive: writes to those
--     rows wait for that transaction;
--   * SHARE UPDATE EXCLUSIVE while the unique index builds CONCURRENTLY: reads and writes go on;
--   * ACCESS EXCLUSIVE to promote the index to the constraint: a catalog change, milliseconds.
-- So writes wait at most about {offline.LOCK_TIMEOUT} at a time, and that only where a step
-- queues behind a long transaction of the app's; such a timeout stops the push, and pushing
-- again completes it. A table that already has a unique on the pair gets catalog locks only.
"""

BLOCKING_LOCKS = f"""\
-- Locks, and how long the app's writes may wait (blocking form, for the Supabase SQL editor):
--   * where no unique covers the pair yet, SHARE ROW EXCLUSIVE on {TABLE} from the archive
--     step to the revision's COMMIT while the index builds: writes wait that long, about
--     {preflight.BLOCKING_STALL_SECONDS_PER_GB:g} s per GB of table (python -m app.preflight
--     estimates it for yours); reads go on until the ACCESS EXCLUSIVE promotion at the end;
--   * a table that already has a unique on the pair gets catalog locks only, each waited for
--     at most lock_timeout ({offline.LOCK_TIMEOUT}).
"""


def file_header(file_name: str, blocking: bool) -> str:
    return (
        f"""\
-- {file_name}
-- Written by `python -m app.supabase_migration{" --blocking" if blocking else ""}` from
-- `alembic upgrade head --sql`. Whatever the database holds, {TABLE}
-- ends with exactly one unique on ({", ".join(PAIR)}): the constraint
-- {CANONICAL_UNIQUE_NAME}. Duplicate rows move to an archive the API
-- cannot read; rows with a NULL phone_number_id stay.
-- Apply it with supabase db push, or psql -X -v ON_ERROR_STOP=1 -f THIS_FILE "$DATABASE_URL".
"""
        + (BLOCKING_LOCKS if blocking else CONCURRENT_LOCKS)
        + "\n"
    )


def offline_script(blocking: bool) -> str:
    """`alembic [-x offline_build=blocking] upgrade head --sql`, in this process."""
    output = io.StringIO()
    config = Config(str(PROJECT_ROOT / "alembic.ini"), output_buffer=output)
    config.attributes["skip_logging_config"] = True
    config.cmd_opts = argparse.Namespace(x=["offline_build=blocking"] if blocking else [])
    command.upgrade(config, "head", sql=True)
    return output.getvalue()


def write(directory: Path, timestamp: str, blocking: bool) -> Path:
    if not (len(timestamp) == 14 and timestamp.isdigit()):
        raise MigrationAbort(
            f"--timestamp {timestamp!r} is not YYYYMMDDHHMMSS, as supabase migration files start"
        )
    path = directory / f"{timestamp}_{NAME}.sql"
    if path.exists():
        raise MigrationAbort(f"{path} exists already: give another --timestamp")
    script = offline_script(blocking)
    directory.mkdir(parents=True, exist_ok=True)
    path.write_text(file_header(path.name, blocking) + script)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m app.supabase_migration",
        description="Write the unique pair's Supabase migration file (for supabase db push).",
    )
    parser.add_argument("--directory", type=Path, default=Path("supabase/migrations"))
    parser.add_argument(
        "--blocking",
        action="store_true",
        help="the form for the Supabase SQL editor, which builds the index blocking writes",
    )
    parser.add_argument(
        "--timestamp",
        default=datetime.now(UTC).strftime("%Y%m%d%H%M%S"),
        help="the file's version (default: now, UTC)",
    )
    arguments = parser.parse_args(argv)
    try:
        path = write(arguments.directory, arguments.timestamp, arguments.blocking)
    except (MigrationAbort, CommandError, OSError) as error:
        print(f"FAILED: {error}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
