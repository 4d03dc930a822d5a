"""The partitioned section: ours on the same table hash-partitioned and plain, both directions,
side by side, with partitioned / plain ratios for time, worst and p99 insert wait."""

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


def side_by_side_table(results: dict[str, Result]) -> str:
    lines = [
        "| direction | seconds, plain | seconds, partitioned | partitioned / plain"
        " | worst insert wait (ms), plain | partitioned | partitioned / plain"
        " | p99 insert wait (ms), plain | partitioned | partitioned / plain |",
        "|" + "---|" * 10,
    ]
    for direction, plain_key, partitioned_key in DIRECTIONS:
        plain, partitioned = results[plain_key], results[partitioned_key]
        lines.append(
            f"| {direction} | {plain.seconds:.2f} | {partitioned.seconds:.2f}"
            f" | {ratio(partitioned.seconds, plain.seconds):.2f}"
            f" | {plain.worst_wait_ms:.1f} | {partitioned.worst_wait_ms:.1f}"
            f" | {ratio(partitioned.worst_wait_ms, plain.worst_wait_ms):.2f}"
            f" | {plain.p99_wait_ms:.1f} | {partitioned.p99_wait_ms:.1f}"
            f" | {ratio(partitioned.p99_wait_ms, plain.p99_wait_ms):.2f} |"
        )
    return "\n".join(lines)


def ratio_lines(results: dict[str, Result]) -> list[str]:
    lines = []
    for direction, plain_key, partitioned_key in DIRECTIONS:
        plain, partitioned = results[plain_key], results[partitioned_key]
        lines.append(
            f"{direction}, partitioned / plain: time"
            f" {ratio(partitioned.seconds, plain.seconds):.2f}x"
            f" ({partitioned.seconds:.2f} / {plain.seconds:.2f} s), worst insert wait"
            f" {ratio(partitioned.worst_wait_ms, plain.worst_wait_ms):.2f}x"
            f" ({partitioned.worst_wait_ms:.1f} / {plain.worst_wait_ms:.1f} ms), p99 insert wait"
            f" {ratio(partitioned.p99_wait_ms, plain.p99_wait_ms):.2f}x"
            f" ({partitioned.p99_wait_ms:.1f} / {plain.p99_wait_ms:.1f} ms)"
        )
    return lines


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
