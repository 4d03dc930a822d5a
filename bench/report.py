"""What a run prints, saves as JSON and writes into BENCHMARKS.md.

A report is a list of blocks: tables, and lines read as a log (fenced in markdown), so the
terminal and BENCHMARKS.md show the same things.
"""

import json
import os
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench.attribution import SLOW_MS, format_events
from bench.db import scalar, session
from bench.growth import (
    ROLLBACK,
    GrowthPoint,
    growth_table,
    growth_targets,
    point_from_json,
    point_to_json,
    rollback_target,
)
from bench.observe import SAMPLE_INTERVAL
from bench.partitioned import LAYOUT, outcome_table, ratio_lines, side_by_side_table
from bench.runs import Result, result_from_json, result_to_json
from bench.server_settings import memory_total_mb, settings_line
from bench.starting_tables import TableFacts
from bench.targets import (
    comparison_targets,
    kinds_text,
    megabytes,
    race_targets,
    ratio,
    target_lines,
)
from bench.writers import DUPLICATE_RATE, PROBE_INTERVAL
from devtools.throwaway_postgres import ThrowawayServer

# Results files of this shape; older ones (fast server, no phases) are skipped.
FORMAT = 2


@dataclass(frozen=True)
class Block:
    title: str
    body: str
    fenced: bool = False  # read as a log: a code block in markdown


@dataclass
class RunInfo:
    """What a run measured on: the same for every contender and size of one invocation."""

    mode: str  # durable or fast
    mix: str
    settings: dict[str, str]
    overrides: dict[str, str]
    duplicate_rate: float
    machine: dict[str, str]
    tables: list[TableFacts] = field(default_factory=list)

    def header_lines(self) -> list[str]:
        stream = (
            f"duplicate stream {self.duplicate_rate:g} inserts/s (reference and ours, not the"
            " limit): copies of existing pairs, older than the kept row, plain INSERT"
            if self.duplicate_rate > 0
            else "duplicate stream off"
        )
        machine = self.machine
        return [
            settings_line(self.mode, self.settings),
            *(facts.line() for facts in self.tables),
            f"writers: probe 1 insert every {PROBE_INTERVAL * 1000:g} ms; {stream}",
            f"machine: {machine['nproc']} CPUs ({machine['cpu']}), {machine['memory']} memory,"
            f" PostgreSQL {machine['postgresql']}, Python {machine['python']}",
        ]


def machine(server: ThrowawayServer) -> dict[str, str]:
    with session(server, "postgres") as cursor:
        version = scalar(cursor, "SHOW server_version")
    return {
        "nproc": str(os.cpu_count()),
        "memory": f"{memory_total_mb() / 1024:.1f} GiB",
        "postgresql": version,
        "cpu": cpu_model(),
        "python": platform.python_version(),
    }


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def run_label(rows_label: str, info: RunInfo) -> str:
    """results_<label>.json and insert_wait_<label>.png: one file per size, mix, mode, duplicate
    rate and setting override, so runs meant to be compared side by side do not overwrite each
    other."""
    parts = [rows_label, info.mix]
    if info.mode == "fast":
        parts.append("fast")
    if info.duplicate_rate != DUPLICATE_RATE:
        parts.append(f"duplicates-{info.duplicate_rate:g}")
    parts += [f"{name}-{value}" for name, value in info.overrides.items()]
    return "_".join(parts)


# Tables.


def outcome(result: Result) -> str:
    if result.exit_code == 0:
        if result.unique_on_pair == result.leaves_unique:
            return "ok"
        return "no unique on the pair" if result.leaves_unique else "a unique on the pair is left"
    if result.stream_broke_reference:
        return "failed: a duplicate arrived after its DELETE"
    return f"failed (exit {result.exit_code})"


def result_table(results: dict[str, Result]) -> str:
    lines = [
        "| contender | outcome | seconds | x reference | x limit | worst insert wait (ms)"
        " | p99 insert wait (ms) | failed writes | rows deleted | NULL-phone rows lost"
        " | rows lost overall | WAL | standby's worst replay lag (s) |",
        "|" + "---|" * 13,
    ]
    limit = results.get("limit")  # growth runs only ours and the reference
    for key, result in results.items():
        reference = results["reference_rerun" if key.endswith("_rerun") else "reference"]
        of_limit = f"{ratio(result.seconds, limit.seconds):.2f}" if limit else "-"
        lines.append(
            f"| {result.label} | {outcome(result)} | {result.seconds:.2f}"
            f" | {ratio(result.seconds, reference.seconds):.2f} | {of_limit}"
            f" | {result.worst_wait_ms:.1f} | {result.p99_wait_ms:.1f} | {result.failed_writes:,}"
            f" | {result.rows_deleted:,} | {result.null_phone_lost:,} | {result.rows_lost:,}"
            f" | {megabytes(result.wal_bytes)} | {seconds_or_dash(result.max_replay_lag)} |"
        )
    return "\n".join(lines)


def seconds_or_dash(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def stream_table(results: dict[str, Result]) -> str:
    lines = [
        "| contender | duplicate inserts | accepted | rejected as duplicates (expected)"
        " | failed | worst wait (ms) | p99 wait (ms) |",
        "|" + "---|" * 7,
    ]
    for result in results.values():
        if result.stream_inserts:
            lines.append(
                f"| {result.label} | {result.stream_inserts:,} | {result.stream_accepted:,}"
                f" | {result.stream_rejected:,} | {result.stream_errors:,}"
                f" | {result.stream_worst_wait_ms:.1f} | {result.stream_p99_wait_ms:.1f} |"
            )
    return "\n".join(lines)


def phase_table(result: Result) -> str:
    lines = [
        "| phase | kind | starts at (s) | seconds | WAL | probe inserts | worst wait (ms)"
        f" | p99 wait (ms) | inserts over {SLOW_MS:g} ms | probe wait events (samples)"
        " | duplicates rejected | duplicate worst wait (ms) | standby's worst replay lag (s) |",
        "|" + "---|" * 13,
    ]
    lines += [
        f"| {phase.name} | {phase.kind} | {phase.start:.2f} | {phase.seconds:.2f}"
        f" | {megabytes(phase.wal_bytes)} | {phase.probe_inserts:,} | {phase.probe_worst_ms:.1f}"
        f" | {phase.probe_p99_ms:.1f} | {phase.probe_slow:,}"
        f" | {format_events(phase.probe_events) or '-'} | {phase.stream_rejected:,}"
        f" | {phase.stream_worst_ms:.1f} | {seconds_or_dash(phase.max_replay_lag)} |"
        for phase in result.phases
    ]
    return "\n".join(lines)


# Lines.


def insight_lines(result: Result) -> list[str]:
    """Where one contender's probe waited: its wait events overall and its slowest inserts."""
    events = format_events(result.probe_wait_events, limit=6) or "none sampled"
    every = f"samples every {SAMPLE_INTERVAL * 1000:g} ms inside an insert"
    lines = [f"{result.key}: probe wait events ({every}): {events}"]
    lines += [f"  slowest: {insert.line()}" for insert in result.slowest_inserts]
    lines += [f"  failed write: {count}x {text}" for text, count in result.write_failures.items()]
    if result.failure:
        lines += [
            f"  {result.key} failed:",
            *(f"    {line}" for line in result.failure.splitlines()),
        ]
    return lines


def breakdown_lines(results: dict[str, Result]) -> list[str]:
    """Ours split by phase kind; start-up plus build is what no dedupe speed-up removes."""
    ours, limit = results["ours"], results["limit"]
    kinds = ours.kind_seconds
    floor = kinds.get("start-up", 0.0) + kinds.get("build", 0.0)
    return [
        f"ours by phase kind: {kinds_text(kinds)}",
        f"start-up plus the concurrent build alone: {floor:.2f} s"
        f" = {ratio(floor, limit.seconds):.2f}x the limit",
    ]


def round_lines(results: dict[str, Result]) -> list[str]:
    if all(len(result.runs) < 2 for result in results.values()):
        return []
    return ["seconds per round:"] + [
        f"  {result.key:<16} " + "  ".join(f"{seconds:.2f}" for seconds in result.runs)
        for result in results.values()
    ]


def targets_title(rows: int, info: RunInfo) -> str:
    return (
        f"targets (set for 10M rows on a durable server; this run: {rows:,} rows,"
        f" {info.mode}, {info.mix} mix)"
    )


# Reports.


def phase_table_keys(results: dict[str, Result]) -> list[str]:
    """The contenders whose phases the report shows: ours, its rollback, the reference."""
    return [key for key in ("ours", ROLLBACK, "reference") if key in results]


def comparison_report(info: RunInfo, results: dict[str, Result], rows: int) -> list[Block]:
    blocks = [
        Block("run", "\n".join(info.header_lines()), fenced=True),
        Block(
            "all contenders (waits, errors and rows lost: the worst round)", result_table(results)
        ),
    ]
    if any(result.stream_inserts for result in results.values()):
        blocks.append(Block("duplicate stream", stream_table(results)))
    for key in phase_table_keys(results):
        title = f"{results[key].label}, per phase (the round with the worst insert wait)"
        blocks.append(Block(title, phase_table(results[key])))
    insights = [line for key in ("ours", "reference") for line in insight_lines(results[key])]
    blocks.append(Block("where the probe waited", "\n".join(insights), fenced=True))
    checked = target_lines(comparison_targets(results))
    if ROLLBACK in results:
        checked += rollback_target(results).lines()
    verdicts = [*checked, *breakdown_lines(results), *round_lines(results)]
    blocks.append(Block(targets_title(rows, info), "\n".join(verdicts), fenced=True))
    return blocks


def race_report(
    info: RunInfo,
    without: dict[str, Result],
    beside: dict[str, Result],
    rows: int,
    link_rate: float,
) -> list[Block]:
    standby = f"a streaming standby (pg_basebackup -R) behind a {link_rate:g} MB/s link"
    blocks = [
        Block("run", "\n".join([*info.header_lines(), f"standby: {standby}"]), fenced=True),
        Block("without a standby", result_table(without)),
        Block(f"beside {standby}", result_table(beside)),
        Block(
            f"{without['ours'].label}, without a standby, per phase", phase_table(without["ours"])
        ),
        *(
            Block(f"{beside[key].label}, beside the standby, per phase", phase_table(beside[key]))
            for key in ("ours", "ours_unpaced", "by_hand")
        ),
    ]
    checked = target_lines(race_targets(without, beside, link_rate * 1e6))
    blocks.append(Block(f"targets at {rows:,} rows", "\n".join(checked), fenced=True))
    return blocks


def partitioned_report(info: RunInfo, results: dict[str, Result], rows: int) -> list[Block]:
    blocks = [
        Block("run", "\n".join([*info.header_lines(), LAYOUT]), fenced=True),
        Block("partitioned and plain, side by side", side_by_side_table(results)),
        Block(
            "outcomes (waits, errors and rows lost: the worst round)",
            outcome_table(results, outcome),
        ),
        Block("duplicate stream", stream_table(results)),
        *(
            Block(
                f"{result.label}, per phase (the round with the worst insert wait)",
                phase_table(result),
            )
            for result in results.values()
        ),
        Block(
            "where the probe waited",
            "\n".join(line for result in results.values() for line in insight_lines(result)),
            fenced=True,
        ),
        Block(
            f"partitioned / plain at {rows:,} rows",
            "\n".join([*ratio_lines(results), *round_lines(results)]),
            fenced=True,
        ),
    ]
    return blocks


def growth_report(info: RunInfo, points: list[GrowthPoint]) -> list[Block]:
    blocks = [
        Block("run", "\n".join(info.header_lines()), fenced=True),
        Block("growth, ours and the reference", growth_table(points)),
    ]
    for point in points:
        results = point.results
        blocks += [
            Block(f"at {point.size}: waits, errors, rows lost and WAL", result_table(results)),
            Block(f"at {point.size}: duplicate stream", stream_table(results)),
            *(
                Block(f"at {point.size}: {result.label}, per phase", phase_table(result))
                for key, result in results.items()
                if key in ("ours", ROLLBACK)
            ),
            Block(
                f"at {point.size}: where the probe waited",
                "\n".join(
                    line for key in ("ours", "reference") for line in insight_lines(results[key])
                ),
                fenced=True,
            ),
        ]
    checked = target_lines(growth_targets(points))
    blocks.append(Block("growth target (30M vs 10M is the one set)", "\n".join(checked), True))
    return blocks


def print_blocks(blocks: list[Block]) -> None:
    for block in blocks:
        print(f"\n{block.title}:\n{block.body}", flush=True)


def markdown_blocks(blocks: list[Block]) -> list[str]:
    parts: list[str] = []
    for block in blocks:
        body = f"```\n{block.body}\n```" if block.fenced else block.body
        parts += ["", f"**{block.title[0].upper()}{block.title[1:]}**", "", body]
    return parts


# Saved results.


def save_comparison(
    info: RunInfo, results: dict[str, Result], rows: int, label: str, path: Path
) -> None:
    payload = {
        "format": FORMAT,
        "kind": "comparison",
        "label": label,
        "rows": rows,
        "info": asdict(info),
        "results": {key: result_to_json(result) for key, result in results.items()},
        "targets": target_lines(comparison_targets(results)),
    }
    path.write_text(json.dumps(payload, indent=2) + "\n")


def save_race(
    info: RunInfo,
    without: dict[str, Result],
    beside: dict[str, Result],
    rows: int,
    link_rate: float,
    path: Path,
) -> None:
    payload = {
        "format": FORMAT,
        "kind": "race",
        "rows": rows,
        "link_rate": link_rate,
        "info": asdict(info),
        "results": {key: result_to_json(result) for key, result in without.items()},
        "beside_standby": {key: result_to_json(result) for key, result in beside.items()},
        "targets": target_lines(race_targets(without, beside, link_rate * 1e6)),
    }
    path.write_text(json.dumps(payload, indent=2) + "\n")


def save_partitioned(info: RunInfo, results: dict[str, Result], rows: int, path: Path) -> None:
    payload = {
        "format": FORMAT,
        "kind": "partitioned",
        "rows": rows,
        "info": asdict(info),
        "results": {key: result_to_json(result) for key, result in results.items()},
        "ratios": ratio_lines(results),
    }
    path.write_text(json.dumps(payload, indent=2) + "\n")


def save_growth(info: RunInfo, points: list[GrowthPoint], path: Path) -> None:
    payload = {
        "format": FORMAT,
        "kind": "growth",
        "info": asdict(info),
        "points": [point_to_json(point) for point in points],
        "targets": target_lines(growth_targets(points)),
    }
    path.write_text(json.dumps(payload, indent=2) + "\n")


def stored_info(values: dict) -> RunInfo:
    tables = [TableFacts(**facts) for facts in values.pop("tables")]
    return RunInfo(**values, tables=tables)


def stored_report(run: dict) -> tuple[str, list[Block]]:
    """A saved run's heading and blocks, formatted afresh from its JSON."""
    info = stored_info(dict(run["info"]))
    if run["kind"] == "growth":
        points = [point_from_json(point) for point in run["points"]]
        sizes = ", ".join(point.size for point in points)
        return f"Growth ({sizes}), {info.mix} mix, {info.mode}", growth_report(info, points)
    results = {key: result_from_json(values) for key, values in run["results"].items()}
    if run["kind"] == "partitioned":
        heading = f"Partitioned and plain at {run['rows']:,} rows, {info.mix} mix, {info.mode}"
        return heading, partitioned_report(info, results, run["rows"])
    if run["kind"] == "race":
        beside = {key: result_from_json(values) for key, values in run["beside_standby"].items()}
        heading = f"The race at {run['rows']:,} rows, {info.mix} mix, {info.mode}"
        return heading, race_report(info, results, beside, run["rows"], run["link_rate"])
    heading = f"{run['rows']:,} rows, {info.mix} mix, {info.mode}"
    if info.duplicate_rate != DUPLICATE_RATE:
        heading += (
            f", duplicate stream {info.duplicate_rate:g}/s"
            if info.duplicate_rate
            else ", no duplicate stream"
        )
    if info.overrides:
        heading += ", " + ", ".join(f"{name}={value}" for name, value in info.overrides.items())
    return heading, comparison_report(info, results, run["rows"])


INTRO = """# Benchmarks

`python bench/benchmark.py --rows N [--mix heavy|realistic] [--fast]` builds a drifted
`meta_assets_cache` (duplicate pairs with ties, NULL `last_synced_at`, NULL-phone rows) on a
throwaway PostgreSQL, clones it once per contender with `CREATE DATABASE ... TEMPLATE`, and runs
each contender right after a `CHECKPOINT` while the app writes: a probe inserts one new row every
5 ms on its own autocommit connection, and a second writer inserts duplicates of existing pairs
(a plain `INSERT`, older than the kept row) about 50 times a second. A duplicate rejected with
SQLSTATE 23505 is expected (the migration guards the table as the finished constraint will); any
other error is a failed write. `--growth 1M,10M,30M` runs ours, its rollback (`alembic downgrade
-1` of ours' upgrade) and the reference at each size. `--race` runs the reference, ours and the
recipe a DBA runs by hand (`DELETE ... USING`, `CREATE UNIQUE INDEX CONCURRENTLY`, `ADD CONSTRAINT
... USING INDEX`) at 10M rows, then again beside a streaming standby (`pg_basebackup -R`) behind a
relay capped at `--link-rate` MB/s, with ours unpaced (`-x max_replica_lag=off`) too.
`--partitioned` runs ours' upgrade and downgrade (`bench/partitioned_migration`) on the same
rows twice, the table hash-partitioned 16 ways on `workspace_id` and unpartitioned, both with
the primary key `(id, workspace_id)` a table partitioned on `workspace_id` needs.

The server is durable unless a section says `fast`: fsync, full_page_writes and
synchronous_commit on, a quarter of memory as shared_buffers, PostgreSQL's default work_mem and
maintenance_work_mem; each section prints the settings it ran with.

- *seconds*: wall time of the whole command (for ours, `alembic upgrade head` including Python
  start-up); the median of the rounds, each on a fresh clone. Waits, failed writes and rows lost
  are the worst of the rounds; the per-phase tables are the round with the worst insert wait.
- *phases*: read from the migration's log as each starts (`INFO [logger] <phase> ...`); the
  reference SQL is one phase. Each insert counts in the phase it started in. Ours' *start-up* is
  everything before its first phase line (Python, Alembic, connecting): all of a run with
  nothing to do.
- *probe wait events*: the probe's `wait_event_type/wait_event` in `pg_stat_activity`, sampled
  every 10 ms while it is inside an insert (`CPU`: running, no wait event).
- *WAL*: `pg_current_wal_lsn()` sampled every 10 ms, interpolated at phase boundaries.
- *rows lost overall*: rows before + accepted inserts of both writers - (table + archive).
- *standby's replay lag*: sampled every 10 ms with the WAL position: how old the oldest WAL the
  standby had not replayed was (from the primary's own WAL positions over time, not
  `pg_stat_replication.replay_lag`, which only moves when the standby replies)."""


# What the saved runs found, written by hand from them: read after the introduction.
FINDINGS = "findings.md"
OFFLINE_FORMS = "offline_forms.md"


def load_runs(out: Path) -> list[dict]:
    runs = []
    for path in (
        sorted(out.glob("results_*.json"))
        + sorted(out.glob("race_*.json"))
        + sorted(out.glob("growth_*.json"))
        + sorted(out.glob("partitioned_*.json"))
    ):
        run = json.loads(path.read_text())
        if run.get("format") != FORMAT:
            print(f"skipping {path.name}: written by an older benchmark, run it again")
            continue
        runs.append(run)
    return sorted(runs, key=run_order)


def run_order(run: dict) -> tuple:
    info = run["info"]
    kinds = ("comparison", "race", "growth", "partitioned")
    return (kinds.index(run["kind"]), info["mode"], info["mix"], run.get("rows", 0))


def write_benchmarks_md(out: Path, destination: Path) -> None:
    """BENCHMARKS.md from every results_, race_, growth_ and partitioned_*.json in `out`."""
    runs = load_runs(out)
    if not runs:
        return
    parts = [INTRO]
    findings = out / FINDINGS
    if findings.exists():
        parts += ["", findings.read_text().strip()]
    for run in runs:
        heading, blocks = stored_report(run)
        parts += ["", f"## {heading}", *markdown_blocks(blocks)]
        plot = out / f"insert_wait_{run.get('label')}.png"
        if run["kind"] == "comparison" and plot.exists():
            relative = os.path.relpath(plot, destination.parent)
            parts += ["", f"![Insert wait over time, {heading}]({relative})"]
    offline_forms = out / OFFLINE_FORMS
    if offline_forms.exists():  # bench/offline_forms.py's section
        parts += ["", offline_forms.read_text().strip()]
    destination.write_text("\n".join(parts) + "\n")
