"""Upserts racing on the same key through each step whose before and after both serve them.

    python bench/upsert_races.py --rows 1000000 [--reader 10] [--fast]

On a durable PostgreSQL (fsync on, as bench/benchmark.py), for the starting states seedindex
and both at `--rows` keys: 16 PostgREST-style upsert clients (devtools.app_traffic), in groups
of 4 upserting the same new key at the same instant, run through `alembic upgrade head` and
`alembic downgrade -1`; every error is counted by SQLSTATE. Each case runs once plainly and
once beside a reader that keeps a transaction open on the table for `--reader` seconds (a
pg_dump, a report). The downgrade runs with the default (`downgrade_rebuild=auto`, which picks
the in-transaction build at this size when the table is under downgrade_rebuild_limit) and
with `downgrade_rebuild=concurrently`, to show the trade. Prints one line per case and writes
the results as JSON.
"""

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg2

from bench.server_settings import server_settings
from devtools.app_traffic import Mix, Traffic, keyed_rows
from devtools.starting_states import build_state
from devtools.throwaway_postgres import throwaway_postgres

ROOT = Path(__file__).resolve().parent.parent
RACERS = Mix(upsert=16, upsert_group=4, existing_key_share=0.2)


def dsn(server, database: str) -> str:
    return server.url_string(database).replace("postgresql+psycopg2://", "postgresql://")


def execute(server, database: str, sql: str) -> list:
    connection = psycopg2.connect(dsn(server, database))
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            cursor.execute(sql)
            return cursor.fetchall() if cursor.description else []
    finally:
        connection.close()


def alembic(server, database: str, *args: str) -> tuple[int, str, float]:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "alembic", *args],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": dsn(server, database)},
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    return result.returncode, result.stdout + result.stderr, time.monotonic() - started


def reader(server, database: str, seconds: float) -> threading.Thread:
    connection = psycopg2.connect(dsn(server, database))
    cursor = connection.cursor()
    cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
    cursor.execute("SELECT count(*) FROM public.meta_assets_cache")

    def hold() -> None:
        time.sleep(seconds)
        connection.rollback()
        connection.close()

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    return thread


def measure(server, database: str, step: list[str], reader_seconds: float, seed: int) -> dict:
    rows = keyed_rows(lambda sql: execute(server, database, sql))[:5000]
    workspaces = [r[0] for r in execute(server, database, "SELECT id::text FROM public.workspaces")]
    traffic = Traffic(dsn(server, database), RACERS, rows, workspaces, seed).start()
    traffic.wait_for_writes()
    held = reader(server, database, reader_seconds) if reader_seconds else None
    code, output, seconds = alembic(server, database, *step)
    if held:
        held.join()
    time.sleep(0.2)
    outcomes = traffic.stop()
    if code != 0:
        raise SystemExit(f"{' '.join(step)} failed:\n{output}")
    upserts = [o for o in outcomes if o.kind == "upsert"]
    errors: dict[str, int] = {}
    for outcome in upserts:
        if outcome.failed:
            errors[outcome.sqlstate] = errors.get(outcome.sqlstate, 0) + 1
    waits = sorted(o.ended - o.started for o in upserts)
    return {
        "step": " ".join(step),
        "reader_seconds": reader_seconds,
        "seconds": round(seconds, 2),
        "upserts": len(upserts),
        "errors": errors,
        "longest_upsert_s": round(waits[-1], 3) if waits else 0,
        "in_transaction": "inside the downgrade's transaction" in output,
    }


def run_state(server, state: str, rows: int, reader: float) -> list[dict]:
    """One database in `state`, built once: for each reader (none, then `reader` seconds) and
    each rebuild mode, its upgrade and its downgrade under the racers (a downgrade puts the
    state back for the next round)."""
    database = f"races_{state}"
    execute(server, "postgres", f"CREATE DATABASE {database}")
    build_state(lambda sql: execute(server, database, sql), state, rows)
    execute(server, database, "CHECKPOINT")
    code, output, _ = alembic(server, database, "upgrade", "meta_assets_cache_0001")
    if code != 0:
        raise SystemExit(output)
    results = []
    seed = 0
    for reader_seconds in (0.0, reader):
        for rebuild in ("auto", "concurrently"):
            for step in (
                ["upgrade", "head"],
                ["-x", f"downgrade_rebuild={rebuild}", "downgrade", "-1"],
            ):
                seed += 1
                result = measure(server, database, step, reader_seconds, seed)
                result.update(state=state, rows=rows, rebuild=rebuild)
                print(json.dumps(result), flush=True)
                results.append(result)
    execute(server, "postgres", f"DROP DATABASE {database}")
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--reader", type=float, default=10.0)
    parser.add_argument("--fast", action="store_true", help="durability off: quick runs only")
    parser.add_argument("--states", default="both,seedindex")
    parser.add_argument("--out", default=str(ROOT / "bench" / "upsert_races.json"))
    arguments = parser.parse_args()
    results = []
    with throwaway_postgres(server_settings(arguments.fast, {})) as server:
        for state in arguments.states.split(","):
            results += run_state(server, state, arguments.rows, arguments.reader)
    Path(arguments.out).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
