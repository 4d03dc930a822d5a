"""The offline script's two forms, measured: how long the app's writes wait while each runs.

    python bench/offline_forms.py [--rows 1M] [--repeat 3] [--fast] [--out bench]

A drifted meta_assets_cache (bench/starting_tables.py, heavy mix) is built once on a throwaway
PostgreSQL, durable unless --fast, and cloned for every run. While a run goes, a writer inserts
a valid new row every 10 ms on its own autocommit connection (bench/writers.py's probe, at 10
ms); its worst and 99th-percentile wait are the figures. The runs, each on a fresh clone right
after a CHECKPOINT:

- the concurrent form (`alembic upgrade head --sql`) through psql -f, and through
  `supabase db push` when the Supabase CLI is installed (python -m devtools.supabase_cli);
- the blocking form (`alembic -x offline_build=blocking upgrade head --sql`) through psql -f,
  and as one simple-protocol query, as the Supabase SQL editor sends it.

The blocking runs also give the write stall per byte of table that preflight uses to estimate
the blocking form's stall on another table. Results go to OUT/offline_forms.json and, as the
section BENCHMARKS.md appends, OUT/offline_forms.md.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))

from bench.attribution import percentile, wait_ms  # noqa: E402
from bench.benchmark import parse_size  # noqa: E402
from bench.db import connect, session  # noqa: E402
from bench.runs import psql  # noqa: E402
from bench.server_settings import REPORTED, effective_settings, server_settings  # noqa: E402
from bench.starting_tables import (  # noqa: E402
    MIXES,
    TEMPLATE_DRIFTED,
    build_drifted,
    census,
    clone,
)
from bench.writers import FAILED, InsertProbe  # noqa: E402
from devtools import supabase_cli  # noqa: E402
from devtools.throwaway_postgres import ThrowawayServer, throwaway_postgres  # noqa: E402

WRITER_INTERVAL = 0.010
WRITERS_TAIL = 0.25
RESULTS = "offline_forms.json"
SECTION = "offline_forms.md"


class TenMillisecondProbe(InsertProbe):
    """The probe of the main benchmark, one insert every 10 ms."""

    def __init__(self, *arguments) -> None:
        super().__init__(*arguments)
        self.interval = WRITER_INTERVAL


@dataclass
class Run:
    form: str
    path: str
    seconds: float
    worst_wait_ms: float
    p99_wait_ms: float
    inserts: int
    failed_inserts: int
    converged: bool


def offline_script(*alembic_arguments: str) -> str:
    env = {key: value for key, value in os.environ.items() if key != "DATABASE_URL"}
    result = subprocess.run(
        [sys.executable, "-m", "alembic", *alembic_arguments],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout


def through_psql(server: ThrowawayServer, database: str, script: str) -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".sql") as file:
        file.write(script)
        file.flush()
        subprocess.run(
            psql(server, database, "-f", file.name),
            check=True,
            capture_output=True,
            env={**os.environ, "PGPASSWORD": server.password},
        )


def as_one_query(server: ThrowawayServer, database: str, script: str) -> None:
    connection = connect(server, database, "bench sql editor")
    try:
        with connection.cursor() as cursor:
            cursor.execute(script)
    finally:
        connection.close()


def through_db_push(server: ThrowawayServer, database: str, script: str) -> None:
    cli = supabase_cli.find()
    assert cli is not None
    url = (
        f"postgresql://{server.user}:{server.password}@{server.host}:{server.port}/{database}"
        "?sslmode=disable"
    )
    with tempfile.TemporaryDirectory() as project:
        migrations = Path(project) / "supabase" / "migrations"
        migrations.mkdir(parents=True)
        (migrations / "20260125100000_meta_assets_cache_unique_ws_phone.sql").write_text(script)
        subprocess.run(
            [str(cli), "db", "push", "--db-url", url, "--yes"],
            cwd=project,
            check=True,
            capture_output=True,
            stdin=subprocess.DEVNULL,
            env=supabase_cli.quiet_env(Path(project)),
        )


def measure(server, shape, form: str, path: str, script: str, run) -> Run:
    database = "bench_offline_run"
    clone(server, TEMPLATE_DRIFTED, database)
    with session(server, database) as cursor:
        cursor.execute("CHECKPOINT")
    probe = TenMillisecondProbe(server, database, f"{form}-{path}", shape)
    origin = time.perf_counter()
    probe.start(origin)
    try:
        run(server, database, script)
    finally:
        seconds = time.perf_counter() - origin
        time.sleep(WRITERS_TAIL)
        probe.stop()
    after = census(server, database)
    with session(server, "postgres") as cursor:
        cursor.execute(f"DROP DATABASE {database}")
    waits = wait_ms(probe.attempts)
    return Run(
        form=form,
        path=path,
        seconds=seconds,
        worst_wait_ms=max(waits, default=0.0),
        p99_wait_ms=percentile(waits, 99),
        inserts=len(probe.attempts),
        failed_inserts=probe.count(FAILED),
        converged=after.unique_on_pair and after.archived_rows > 0,
    )


def table_bytes(server: ThrowawayServer) -> int:
    with session(server, TEMPLATE_DRIFTED) as cursor:
        cursor.execute("SELECT pg_total_relation_size('public.meta_assets_cache')")
        return cursor.fetchone()[0]


def section(info: dict, runs: list[Run]) -> str:
    by_path: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        by_path.setdefault((run.form, run.path), []).append(run)
    rows = []
    for (form, path), repeats in by_path.items():
        rows.append(
            f"| {form} | {path} | {statistics.median(r.seconds for r in repeats):.1f}"
            f" | {max(r.worst_wait_ms for r in repeats):,.0f}"
            f" | {max(r.p99_wait_ms for r in repeats):,.0f}"
            f" | {sum(r.failed_inserts for r in repeats)}"
            f" | {'yes' if all(r.converged for r in repeats) else 'NO'} |"
        )
    settings = ", ".join(f"{name}={value}" for name, value in info["settings"].items())
    return "\n".join(
        [
            f"## The offline script's two forms, {info['rows_label']} rows, {info['mode']}",
            "",
            "`python bench/offline_forms.py`: the whole `alembic upgrade head --sql` script, in"
            " each form, on a fresh clone of the drifted table (heavy mix,"
            f" {info['table_bytes']:,} bytes with indexes), while a writer inserts a new row"
            f" every 10 ms; {info['repeat']} rounds: seconds are the median, waits and failed"
            " inserts the worst or the sum of the rounds.",
            "",
            "| form | run through | seconds | worst wait (ms) | p99 wait (ms) | failed inserts"
            " | converged |",
            "|---|---|---:|---:|---:|---:|---|",
            *rows,
            "",
            f"Server: {settings}.",
            "",
            "The concurrent form's writes wait only for its short strong-lock steps (installing"
            " the guard, promoting the index), each bounded by the script's lock_timeout. The"
            " blocking form holds SHARE ROW EXCLUSIVE from the archive step to its COMMIT: its"
            " worst wait is the dedupe and the build of the whole table. From these runs the"
            " blocking stall is about"
            f" {info['stall_seconds_per_gb']:.1f} s per GB of table (with its indexes), the"
            " figure `python -m app.preflight` uses to estimate it for another table.",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=parse_size, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--fast", action="store_true", help="fsync off: quick, not for numbers")
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "bench")
    parser.add_argument(
        "--report-only", action="store_true", help=f"rewrite {SECTION} from OUT/{RESULTS}"
    )
    arguments = parser.parse_args(argv)
    if arguments.report_only:
        stored = json.loads((arguments.out / RESULTS).read_text())
        runs = [Run(**run) for run in stored["runs"]]
        (arguments.out / SECTION).write_text(section(stored["info"], runs) + "\n")
        return 0
    concurrent = offline_script("upgrade", "head", "--sql")
    blocking = offline_script("-x", "offline_build=blocking", "upgrade", "head", "--sql")
    paths = [("concurrent", "psql -f", concurrent, through_psql)]
    if supabase_cli.find() is not None:
        paths.append(("concurrent", "supabase db push", concurrent, through_db_push))
    paths += [
        ("blocking", "psql -f", blocking, through_psql),
        ("blocking", "one query (SQL editor)", blocking, as_one_query),
    ]
    with throwaway_postgres(server_settings(arguments.fast, {})) as server:
        with session(server, "postgres") as cursor:
            settings = effective_settings(cursor, REPORTED)
        shape = build_drifted(server, arguments.rows, MIXES["heavy"])
        size = table_bytes(server)
        runs = []
        for round_number in range(1, arguments.repeat + 1):
            for form, path, script, run in paths:
                result = measure(server, shape, form, path, script, run)
                print(f"round {round_number}: {form} via {path}: {asdict(result)}", flush=True)
                runs.append(result)
    blocking_worst = [r.worst_wait_ms for r in runs if r.form == "blocking"]
    info = {
        "rows_label": f"{arguments.rows:,}",
        "mode": "fast" if arguments.fast else "durable",
        "settings": settings,
        "repeat": arguments.repeat,
        "table_bytes": size,
        "stall_seconds_per_gb": statistics.median(blocking_worst) / 1000 / (size / 1e9),
    }
    arguments.out.mkdir(parents=True, exist_ok=True)
    (arguments.out / RESULTS).write_text(
        json.dumps({"info": info, "runs": [asdict(r) for r in runs]}, indent=2) + "\n"
    )
    (arguments.out / SECTION).write_text(section(info, runs) + "\n")
    print(section(info, runs))
    return 0 if all(r.converged and not r.failed_inserts for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
