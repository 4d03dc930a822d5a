"""The upgrade of a drifted table under heavy app writes, at full speed.

    python bench/heavy_updates.py --keys 240000 [--fast]

On a durable PostgreSQL, a drifted table of `--keys` keys; while `alembic upgrade head` runs, an
inserter of duplicate keys and two updaters (`SET last_error = ..., updated_at = now()` on random
rows, half of them rows the dedupe archives) write as fast as they can
(devtools.app_traffic). Prints how long the upgrade took, how many concurrent builds it needed,
what the move found changed, and the writers' statement and error counts.
"""

import argparse
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.server_settings import server_settings
from bench.upsert_races import alembic, dsn, execute
from devtools.app_traffic import Mix, Traffic, errors_by_sqlstate, keyed_rows
from devtools.starting_states import build_state
from devtools.throwaway_postgres import throwaway_postgres

WRITERS = Mix(insert=1, update=2, duplicate_share=1.0)
LOSERS = """
SELECT id::text FROM (
    SELECT id, row_number() OVER (PARTITION BY workspace_id, phone_number_id
                                  ORDER BY updated_at DESC, last_synced_at DESC NULLS LAST,
                                           id DESC) AS position
      FROM public.meta_assets_cache WHERE phone_number_id IS NOT NULL) AS ranked
 WHERE position > 1"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=240_000)
    parser.add_argument("--fast", action="store_true", help="durability off: quick runs only")
    arguments = parser.parse_args()
    with throwaway_postgres(server_settings(arguments.fast, {})) as server:
        execute(server, "postgres", "CREATE DATABASE heavy")
        build_state(lambda sql: execute(server, "heavy", sql), "drifted", arguments.keys)
        execute(server, "heavy", "CHECKPOINT")
        code, output, _ = alembic(server, "heavy", "upgrade", "meta_assets_cache_0001")
        assert code == 0, output
        rows = keyed_rows(lambda sql: execute(server, "heavy", sql))
        workspaces = [
            r[0] for r in execute(server, "heavy", "SELECT id::text FROM public.workspaces")
        ]
        traffic = Traffic(dsn(server, "heavy"), WRITERS, rows, workspaces, seed=1).start()
        traffic.wait_for_writes()
        code, output, seconds = alembic(server, "heavy", "upgrade", "head")
        outcomes = traffic.stop()
        builds = execute(
            server,
            "heavy",
            "SELECT count(*) FROM meta_assets_migration.unique_pair_steps WHERE action = 'built'",
        )[0][0]
        result = {
            "keys": arguments.keys,
            "exit": code,
            "seconds": round(seconds, 1),
            "builds": builds,
            "moves": re.findall(r"archived \d+ rows from \d+ duplicate groups[^\n]*", output),
            "statements": {
                kind: sum(1 for o in outcomes if o.kind == kind)
                for kind in ("update", "insert_duplicate")
            },
            "errors": dict(errors_by_sqlstate(outcomes, ["update", "insert_duplicate"])),
        }
        print(json.dumps(result, indent=2))
        if code != 0:
            print(output)
    return code


if __name__ == "__main__":
    sys.exit(main())
