"""Side-by-side benchmark: the reference seed migration, `alembic upgrade head`, and the limit.

    python bench/benchmark.py [--rows N] [--mix heavy|realistic] [--fast] [--repeat R]
                              [--server-setting NAME=VALUE ...] [--duplicate-rate PER_SECOND]
                              [--out DIR] [--write-benchmarks-md]
    python bench/benchmark.py --growth 1M,10M,30M [--mix ...] [--fast] ...
    python bench/benchmark.py --race [--rows 10M] [--link-rate MB_PER_S] [--mix ...] ...
    python bench/benchmark.py --partitioned [ROWS] [--mix ...] [--repeat R] ...

A drifted meta_assets_cache (duplicates, ties, NULL last_synced_at, NULL-phone rows) is built
once on a throwaway PostgreSQL, durable unless --fast, then cloned with CREATE DATABASE ...
TEMPLATE so every contender starts from the same bytes. While each contender runs, a probe
inserts a row every 5 ms and a second writer inserts duplicates of existing pairs; the
contender's log gives its phases, and pg_stat_activity and pg_current_wal_lsn() are sampled to
say what each insert waited on and how much WAL each phase wrote.
"""

import argparse
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))

from bench.db import session  # noqa: E402
from bench.growth import GrowthPoint  # noqa: E402
from bench.plot import write_plot  # noqa: E402
from bench.report import (  # noqa: E402
    RunInfo,
    comparison_report,
    growth_report,
    machine,
    partitioned_report,
    print_blocks,
    race_report,
    run_label,
    save_comparison,
    save_growth,
    save_partitioned,
    save_race,
    write_benchmarks_md,
)
from bench.runs import (  # noqa: E402
    COMPARISON_CONTENDERS,
    GROWTH_CONTENDERS,
    KEYED_MIGRATION,
    PARTITIONED_CONTENDERS,
    RACE_CONTENDERS,
    RACE_WITHOUT_STANDBY,
    Contender,
    Result,
    Workload,
    combine,
    run_contender,
)
from bench.server_settings import (  # noqa: E402
    REPORTED,
    effective_settings,
    parse_setting,
    server_settings,
)
from bench.starting_tables import (  # noqa: E402
    HASH_PARTITIONS,
    MIXES,
    TEMPLATE_KEYED_PARTITIONED,
    TEMPLATE_KEYED_PARTITIONED_UPGRADED,
    TEMPLATE_KEYED_PLAIN,
    TEMPLATE_KEYED_PLAIN_UPGRADED,
    Census,
    Mix,
    build_deduped_and_constrained,
    build_drifted,
    build_upgraded,
    census,
    keyed_schema_sql,
    table_facts,
)
from bench.writers import DUPLICATE_RATE  # noqa: E402
from devtools.standby import StandbyTimeout, streaming_standby  # noqa: E402
from devtools.throwaway_postgres import ThrowawayServer, throwaway_postgres  # noqa: E402

DEFAULT_ROWS = 1_000_000
MIN_ROWS = 1_000
MAX_ROWS = 50_000_000
SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmM]?)\s*$")
SIZE_FACTORS = {"": 1, "k": 1_000, "m": 1_000_000}


# Arguments.


def parse_size(text: str) -> int:
    """'200k', '10M', '1000000' -> rows."""
    match = SIZE.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size: use e.g. 200k, 10M or 50000")
    rows = round(float(match.group(1)) * SIZE_FACTORS[match.group(2).lower()])
    if not MIN_ROWS <= rows <= MAX_ROWS:
        raise argparse.ArgumentTypeError(f"{text}: sizes go from {MIN_ROWS:,} to {MAX_ROWS:,}")
    return rows


def parse_sizes(text: str) -> list[int]:
    sizes = [parse_size(part) for part in text.split(",")]
    if len(sizes) < 2 or sizes != sorted(set(sizes)):
        raise argparse.ArgumentTypeError("--growth takes two or more increasing sizes")
    return sizes


def size_label(rows: int) -> str:
    if rows >= 1_000_000 and rows % 1_000_000 == 0:
        return f"{rows // 1_000_000}m"
    if rows >= 1000 and rows % 1000 == 0:
        return f"{rows // 1000}k"
    return str(rows)


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sizes = parser.add_mutually_exclusive_group()
    sizes.add_argument(
        "--rows", type=parse_size, default=DEFAULT_ROWS, help="rows in the drifted table"
    )
    sizes.add_argument(
        "--growth",
        type=parse_sizes,
        metavar="SIZES",
        help="ours and the reference at each size, e.g. 1M,10M,30M: seconds per million rows",
    )
    sizes.add_argument(
        "--race",
        type=parse_size,
        nargs="?",
        const=10_000_000,
        metavar="ROWS",
        help="the race (default 10M rows): the reference, ours and the recipe by hand, then"
        " beside a streaming standby on a capped link ours paced and unpaced too",
    )
    sizes.add_argument(
        "--partitioned",
        type=parse_size,
        nargs="?",
        const=10_000_000,
        metavar="ROWS",
        help=f"ours, both directions, on the table (default 10M rows) hash-partitioned"
        f" {HASH_PARTITIONS} ways on workspace_id and on it unpartitioned, side by side",
    )
    parser.add_argument(
        "--link-rate",
        type=float,
        default=20.0,
        metavar="MB_PER_S",
        help="the race's standby link, in MB/s (as between zones)",
    )
    parser.add_argument("--mix", choices=sorted(MIXES), default="heavy", help="duplicate mix")
    parser.add_argument(
        "--fast",
        action="store_true",
        help="the throwaway server's fast settings (fsync off...): quick runs, not for numbers",
    )
    parser.add_argument(
        "--server-setting",
        "-c",
        dest="server_settings",
        type=parse_setting,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a server setting over the mode's, e.g. wal_compression=on (repeatable)",
    )
    parser.add_argument(
        "--duplicate-rate",
        type=float,
        default=DUPLICATE_RATE,
        help="duplicate inserts per second while the reference and ours run; 0 turns them off",
    )
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "bench", help="results dir")
    parser.add_argument(
        "--logs", type=Path, help="the race: a folder for each contender's stderr (its log)"
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="rounds; each result is its contender's median"
    )
    parser.add_argument(
        "--write-benchmarks-md",
        action="store_true",
        help="regenerate BENCHMARKS.md (project root) from the results in --out",
    )
    arguments = parser.parse_args(argv)
    if arguments.repeat < 1:
        parser.error("--repeat must be at least 1")
    if arguments.duplicate_rate < 0:
        parser.error("--duplicate-rate must be 0 or more")
    return arguments


# Running.


@contextmanager
def benchmark_server(arguments: argparse.Namespace) -> Iterator[tuple[ThrowawayServer, RunInfo]]:
    overrides = dict(arguments.server_settings)
    with throwaway_postgres(server_settings(arguments.fast, overrides)) as server:
        names = REPORTED + tuple(name for name in overrides if name not in REPORTED)
        with session(server, "postgres") as cursor:
            settings = effective_settings(cursor, names)
        info = RunInfo(
            mode="fast" if arguments.fast else "durable",
            mix=arguments.mix,
            settings=settings,
            overrides=overrides,
            duplicate_rate=arguments.duplicate_rate,
            machine=machine(server),
        )
        yield server, info


def templates_census(
    server: ThrowawayServer, contenders: tuple[Contender, ...]
) -> dict[str, Census]:
    """Each template's rows before any contender runs; templates never change."""
    templates = {contender.template for contender in contenders}
    return {template: census(server, template) for template in templates}


def phases_text(result: Result) -> str:
    phases = [phase for phase in result.phases if phase.kind != "after"]
    if len(phases) < 2:
        return ""
    return " (" + ", ".join(f"{phase.name} {phase.seconds:.2f}" for phase in phases) + ")"


def run_rounds(
    server: ThrowawayServer,
    contenders: tuple[Contender, ...],
    workload: Workload,
    before: dict[str, Census],
    repeat: int,
    settle: Callable[[], None] = lambda: None,
    logs: Path | None = None,
) -> dict[str, Result]:
    """Every contender once per round, in the same order, so a slow spell of the machine hits
    them all alike; each contender's median round is its result. `settle` runs before each
    starts, once its database is cloned. `logs`: a folder for each run's stderr."""
    repeats: dict[str, list[Result]] = {contender.key: [] for contender in contenders}
    for round_number in range(1, repeat + 1):
        for contender in contenders:
            print(f"round {round_number}/{repeat}: {contender.label} ...", end=" ", flush=True)
            log_file = logs / f"{contender.key}_{round_number}.log" if logs else None
            result = run_contender(
                server, contender, workload, before[contender.template], settle, log_file
            )
            repeats[contender.key].append(result)
            verdict = "" if result.exit_code == 0 else f" exit {result.exit_code}"
            print(f"{result.seconds:.2f} s{verdict}{phases_text(result)}", flush=True)
    return {key: combine(runs) for key, runs in repeats.items()}


def run_comparison(
    server: ThrowawayServer, info: RunInfo, rows: int, mix: Mix, repeat: int
) -> dict[str, Result]:
    shape = build_drifted(server, rows, mix)
    info.tables.append(table_facts(server, mix, shape))
    build_deduped_and_constrained(server)
    build_upgraded(server, PROJECT_ROOT)
    workload = Workload(shape, info.duplicate_rate)
    contenders = COMPARISON_CONTENDERS
    return run_rounds(server, contenders, workload, templates_census(server, contenders), repeat)


def run_growth(
    server: ThrowawayServer, info: RunInfo, sizes: list[int], mix: Mix, repeat: int
) -> list[GrowthPoint]:
    """Ours, its rollback and the reference at each size, on one server: each size's table
    replaces the last."""
    points = []
    for rows in sizes:
        print(f"\ngrowth: {rows:,} rows", flush=True)
        shape = build_drifted(server, rows, mix)
        facts = table_facts(server, mix, shape)
        info.tables.append(facts)
        build_upgraded(server, PROJECT_ROOT)
        workload = Workload(shape, info.duplicate_rate)
        before = templates_census(server, GROWTH_CONTENDERS)
        results = run_rounds(server, GROWTH_CONTENDERS, workload, before, repeat)
        points.append(GrowthPoint(size_label(rows).upper(), facts.rows, results))
    return points


# The longest a contender waits for the standby to replay the one before it (a 10M move's WAL
# at 20 MB/s takes about two minutes); a standby that stops streaming fails at once.
SETTLE_TIMEOUT = 1800


def run_race(
    server: ThrowawayServer,
    info: RunInfo,
    rows: int,
    mix: Mix,
    repeat: int,
    link_rate: float,
    logs: Path | None = None,
) -> tuple[dict[str, Result], dict[str, Result]]:
    """The race without a standby, then beside one streaming through a capped link (each
    contender starts once it has replayed everything before)."""
    shape = build_drifted(server, rows, mix)
    info.tables.append(table_facts(server, mix, shape))
    workload = Workload(shape, info.duplicate_rate)
    before = templates_census(server, RACE_CONTENDERS)
    without = run_rounds(
        server,
        RACE_WITHOUT_STANDBY,
        workload,
        before,
        repeat,
        logs=logs / "without_standby" if logs else None,
    )
    print(f"\na streaming standby behind a {link_rate:g} MB/s link ...", flush=True)
    with streaming_standby(server, "zone_b", rate=int(link_rate * 1e6)) as standby:
        beside = run_rounds(
            server,
            RACE_CONTENDERS,
            workload,
            before,
            repeat,
            settle=lambda: standby.wait_replayed(timeout=SETTLE_TIMEOUT),
            logs=logs / "beside_standby" if logs else None,
        )
    return without, beside


def run_partitioned(
    server: ThrowawayServer, info: RunInfo, rows: int, mix: Mix, repeat: int
) -> dict[str, Result]:
    """The same drifted rows in a plain and in a hash-partitioned table, both with the primary
    key (id, workspace_id) a table partitioned on workspace_id needs; each upgraded once with
    nothing writing, for the downgrades."""
    layouts = (
        (0, TEMPLATE_KEYED_PLAIN, TEMPLATE_KEYED_PLAIN_UPGRADED),
        (HASH_PARTITIONS, TEMPLATE_KEYED_PARTITIONED, TEMPLATE_KEYED_PARTITIONED_UPGRADED),
    )
    facts = []
    for partitions, template, upgraded in layouts:
        shape = build_drifted(server, rows, mix, template, keyed_schema_sql(partitions))
        facts.append(table_facts(server, mix, shape, template))
        build_upgraded(server, PROJECT_ROOT, template, upgraded, KEYED_MIGRATION)
    if facts[0] != facts[1]:  # built by the same deterministic SQL: a difference is a bug
        raise RuntimeError(f"the plain and partitioned tables differ: {facts}")
    info.tables.append(facts[0])
    workload = Workload(shape, info.duplicate_rate)
    contenders = PARTITIONED_CONTENDERS
    return run_rounds(server, contenders, workload, templates_census(server, contenders), repeat)


def partitioned_main(arguments: argparse.Namespace, out: Path) -> list[str]:
    with benchmark_server(arguments) as (server, info):
        results = run_partitioned(
            server, info, arguments.partitioned, MIXES[arguments.mix], arguments.repeat
        )
    print_blocks(partitioned_report(info, results, arguments.partitioned))
    label = run_label(size_label(arguments.partitioned), info)
    save_partitioned(info, results, arguments.partitioned, out / f"partitioned_{label}.json")
    return failed_contenders(results)


def race_main(arguments: argparse.Namespace, out: Path) -> list[str]:
    with benchmark_server(arguments) as (server, info):
        without, beside = run_race(
            server,
            info,
            arguments.race,
            MIXES[arguments.mix],
            arguments.repeat,
            arguments.link_rate,
            arguments.logs,
        )
    print_blocks(race_report(info, without, beside, arguments.race, arguments.link_rate))
    label = run_label(size_label(arguments.race), info)
    save_race(
        info, without, beside, arguments.race, arguments.link_rate, out / f"race_{label}.json"
    )
    return failed_contenders(without) + failed_contenders(beside)


def failed_contenders(results: dict[str, Result]) -> list[str]:
    return [result.label for result in results.values() if result.failed]


def comparison_main(arguments: argparse.Namespace, out: Path) -> list[str]:
    with benchmark_server(arguments) as (server, info):
        results = run_comparison(
            server, info, arguments.rows, MIXES[arguments.mix], arguments.repeat
        )
    label = run_label(size_label(arguments.rows), info)
    print_blocks(comparison_report(info, results, arguments.rows))
    write_plot(
        results,
        f"{arguments.rows:,} rows, {info.mix} mix, {info.mode}",
        out / f"insert_wait_{label}.png",
    )
    save_comparison(info, results, arguments.rows, label, out / f"results_{label}.json")
    return failed_contenders(results)


def growth_main(arguments: argparse.Namespace, out: Path) -> list[str]:
    with benchmark_server(arguments) as (server, info):
        points = run_growth(server, info, arguments.growth, MIXES[arguments.mix], arguments.repeat)
    print_blocks(growth_report(info, points))
    sizes = "-".join(size_label(rows) for rows in arguments.growth)
    save_growth(info, points, out / f"growth_{run_label(sizes, info)}.json")
    return [label for point in points for label in failed_contenders(point.results)]


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    out: Path = arguments.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    if arguments.race:
        try:
            failed = race_main(arguments, out)
        except StandbyTimeout as error:
            print(f"FAILED: {error}", file=sys.stderr)
            return 1
    elif arguments.growth:
        failed = growth_main(arguments, out)
    elif arguments.partitioned:
        failed = partitioned_main(arguments, out)
    else:
        failed = comparison_main(arguments, out)
    if arguments.write_benchmarks_md:
        write_benchmarks_md(out, PROJECT_ROOT / "BENCHMARKS.md")
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
