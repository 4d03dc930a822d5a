"""The partitioned section: ours on the same table hash-partitioned and plain, both directions,
side by side, with partitioned / plain ratios for time, worst and p99 insert wait."""

from collections.abc import Iterator

from bench.runs import Result
from bench.starting_tables import HASH_PARTITIONS
from bench.targets import megabytes, ratio

# Each direction's plain and partitioned result.
DIRECTIONS = (
    ("upgrade", "ours_plain", "ours_partitioned"),
    ("downgrade", "ours_plain_rollback", "ours_partitioned_rollback"),
)
LAYOUT = (
    "both tables: PRIMARY KEY (id, workspace_id), not (id), so the comparison is fair: a table"
    " partitioned on workspace_id cannot have a primary key without it; the migration's"
    " row_identity is (id, workspace_id) for both. Partitioned: PARTITION BY HASH"
    f" (workspace_id), {HASH_PARTITIONS} partitions; the same rows, built by the same SQL"
)


# What is compared, partitioned against plain: (its name, the Result field, its unit, decimals).
MEASURES = (
    ("time", "seconds", "s", 2),
    ("worst insert wait", "worst_wait_ms", "ms", 1),
    ("p99 insert wait", "p99_wait_ms", "ms", 1),
)


def compared(
    results: dict[str, Result],
) -> Iterator[tuple[str, list[tuple[str, str, str, str, float]]]]:
    """Per direction, each measure: (its name, its unit, plain, partitioned, their ratio), the
    values formatted."""
    for direction, plain_key, partitioned_key in DIRECTIONS:
        plain, partitioned = results[plain_key], results[partitioned_key]
        measures = []
        for name, field, unit, decimals in MEASURES:
            before, after = getattr(plain, field), getattr(partitioned, field)
            measures.append(
                (
                    name,
                    unit,
                    f"{before:.{decimals}f}",
                    f"{after:.{decimals}f}",
                    ratio(after, before),
                )
            )
        yield direction, measures


def side_by_side_table(results: dict[str, Result]) -> str:
    lines = [
        "| direction | seconds, plain | seconds, partitioned | partitioned / plain"
        " | worst insert wait (ms), plain | partitioned | partitioned / plain"
        " | p99 insert wait (ms), plain | partitioned | partitioned / plain |",
        "|" + "---|" * 10,
    ]
    for direction, measures in compared(results):
        cells = "".join(
            f" | {plain} | {partitioned} | {r:.2f}" for _, _, plain, partitioned, r in measures
        )
        lines.append(f"| {direction}{cells} |")
    return "\n".join(lines)


def ratio_lines(results: dict[str, Result]) -> list[str]:
    return [
        f"{direction}, partitioned / plain: "
        + ", ".join(
            f"{name} {r:.2f}x ({partitioned} / {plain} {unit})"
            for name, unit, plain, partitioned, r in measures
        )
        for direction, measures in compared(results)
    ]


def outcome_table(results: dict[str, Result], outcome) -> str:
    """Each run's outcome, failed writes, rows lost and WAL: what the ratios must not hide."""
    lines = [
        "| contender | outcome | failed writes | rows deleted | rows lost overall"
        " | NULL-phone rows lost | WAL | most batches of one move |",
        "|" + "---|" * 8,
    ]
    lines += [
        f"| {result.label} | {outcome(result)} | {result.failed_writes:,}"
        f" | {result.rows_deleted:,} | {result.rows_lost:,} | {result.null_phone_lost:,}"
        f" | {megabytes(result.wal_bytes)} | {result.batches:,} |"
        for result in results.values()
    ]
    return "\n".join(lines)
