"""The targets ours must meet at 10M rows on a durable server, and, for each one missed, the
measurements that say why."""

from dataclasses import dataclass

from bench.attribution import SLOW_MS, PhaseSummary, format_events
from bench.runs import Result

TIME_VS_REFERENCE = 0.5
WORST_WAIT_VS_REFERENCE = 1 / 20
P99_WAIT_MS = SLOW_MS
RERUN_VS_REFERENCE = 0.3
GROWTH_PER_ROW = 1.2
ROLLBACK_VS_UPGRADE = 1.0
TIME_VS_BY_HAND = 1.0
PACED_VS_UNPACED = 1.25
WORST_WAIT_MS = 200.0
# The pacing's default limit (max_replica_lag), which the race runs with.
MAX_REPLICA_LAG = 1.0


@dataclass(frozen=True)
class Target:
    name: str
    value: float
    limit: float
    measured: str  # the value in words, with what it was computed from
    why: str = ""  # printed when the target is missed

    @property
    def met(self) -> bool:
        return self.value <= self.limit

    def lines(self) -> list[str]:
        verdict = "PASS" if self.met else "MISS"
        lines = [f"{verdict}  {self.name}: {self.measured}"]
        if not self.met and self.why:
            lines.append(f"      why: {self.why}")
        return lines


def target_lines(checked: list[Target]) -> list[str]:
    return [line for target in checked for line in target.lines()]


def megabytes(size: float) -> str:
    return f"{size / 1024 / 1024:,.1f} MB"


def kinds_text(seconds: dict[str, float], unit: str = " s") -> str:
    return ", ".join(f"{kind} {value:.2f}{unit}" for kind, value in seconds.items())


def ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 else float("inf")


def phase_at(result: Result, at: float) -> PhaseSummary | None:
    return next((p for p in result.phases if p.start <= at < p.start + p.seconds), None)


# Why a target was missed.


def why_time(ours: Result, reference: Result) -> str:
    return (
        f"ours by phase kind: {kinds_text(ours.kind_seconds)};"
        f" reference {reference.seconds:.2f} s in all"
    )


def why_worst_wait(ours: Result) -> str:
    if not ours.slowest_inserts:
        return "no probe insert was recorded"
    worst = ours.slowest_inserts[0]
    phase = phase_at(ours, worst.at)
    if phase is None:
        return f"worst insert: {worst.line()}"
    rate = phase.wal_bytes / max(phase.seconds, 1e-9)
    return (
        f"worst insert: {worst.line()};"
        f" that phase ran {phase.seconds:.2f} s, wrote {megabytes(phase.wal_bytes)} of WAL"
        f" ({megabytes(rate)}/s); the probe's wait events in it:"
        f" {format_events(phase.probe_events) or 'none sampled'}"
    )


def why_p99(ours: Result) -> str:
    slow = sorted(
        (phase for phase in ours.phases if phase.probe_slow),
        key=lambda phase: -phase.probe_slow,
    )[:4]
    if not slow:
        return f"no insert over {SLOW_MS:g} ms in any phase"
    return f"inserts over {SLOW_MS:g} ms, in the phases with most: " + "; ".join(
        f"{phase.name} {phase.probe_slow} (p99 {phase.probe_p99_ms:.1f} ms,"
        f" {megabytes(phase.wal_bytes)} WAL; {format_events(phase.probe_events) or 'no events'})"
        for phase in slow
    )


def why_failed_writes(ours: Result) -> str:
    return "; ".join(f"{count}x {message}" for message, count in ours.write_failures.items())


def why_rows_lost(ours: Result) -> str:
    return (
        f"{ours.rows_lost:,} rows in neither the table nor the archive,"
        f" {ours.null_phone_lost:,} NULL-phone rows gone, {ours.rows_deleted:,} rows left the table"
    )


def why_failed(ours: Result) -> str:
    return (
        ours.failure.strip().splitlines()[-1]
        if ours.failure.strip()
        else f"exit code {ours.exit_code}"
    )


# The targets.


def comparison_targets(results: dict[str, Result]) -> list[Target]:
    ours, reference = results["ours"], results["reference"]
    rerun, reference_rerun = results["ours_rerun"], results["reference_rerun"]
    time_ratio = ratio(ours.seconds, reference.seconds)
    wait_ratio = ratio(ours.worst_wait_ms, reference.worst_wait_ms)
    rerun_ratio = ratio(rerun.seconds, reference_rerun.seconds)
    checked = [
        Target(
            "ours completes"
            + (
                " while duplicates keep arriving"
                if ours.stream_inserts
                else " (no duplicate stream)"
            ),
            float(ours.failed),
            0,
            "completed" if not ours.failed else f"failed (exit {ours.exit_code})",
            why_failed(ours),
        ),
        Target(
            f"total time, ours / reference (target ≤ {TIME_VS_REFERENCE:g}x)",
            time_ratio,
            TIME_VS_REFERENCE,
            f"{time_ratio:.2f}x ({ours.seconds:.2f} s / {reference.seconds:.2f} s)",
            why_time(ours, reference),
        ),
        Target(
            "worst insert wait, ours / reference (target ≤ 1/20)",
            wait_ratio,
            WORST_WAIT_VS_REFERENCE,
            f"{wait_ratio:.3f}x ({ours.worst_wait_ms:.1f} ms / {reference.worst_wait_ms:.1f} ms)",
            why_worst_wait(ours),
        ),
        Target(
            f"p99 insert wait, ours (target ≤ {P99_WAIT_MS:g} ms)",
            ours.p99_wait_ms,
            P99_WAIT_MS,
            f"{ours.p99_wait_ms:.1f} ms",
            why_p99(ours),
        ),
        Target(
            "failed writes, ours (probe and duplicate stream; 23505 rejections are expected)",
            ours.failed_writes,
            0,
            f"{ours.failed_writes:,}",
            why_failed_writes(ours),
        ),
        Target(
            "rows lost, ours (table + archive vs before + accepted inserts; NULL-phone rows)",
            ours.rows_lost + ours.null_phone_lost,
            0,
            f"{ours.rows_lost:,} overall, {ours.null_phone_lost:,} NULL-phone",
            why_rows_lost(ours),
        ),
        Target(
            f"re-run on a constrained table, ours / reference (target ≤ {RERUN_VS_REFERENCE:g}x)",
            rerun_ratio,
            RERUN_VS_REFERENCE,
            f"{rerun_ratio:.2f}x ({rerun.seconds:.2f} s / {reference_rerun.seconds:.2f} s)",
            why_time(rerun, reference_rerun),
        ),
    ]
    if "by_hand" in results:
        checked.append(by_hand_target(ours, results["by_hand"]))
    return checked


def by_hand_target(ours: Result, by_hand: Result) -> Target:
    """Ours, which archives what it removes and guards the table, against the recipe a DBA
    runs by hand, which deletes."""
    value = ratio(ours.seconds, by_hand.seconds)
    return Target(
        f"total time, ours / by hand (target ≤ {TIME_VS_BY_HAND:g}x)",
        value,
        TIME_VS_BY_HAND,
        f"{value:.2f}x ({ours.seconds:.2f} s / {by_hand.seconds:.2f} s)"
        + (", by hand failed on a late duplicate" if by_hand.stream_broke_reference else ""),
        f"ours by phase kind: {kinds_text(ours.kind_seconds)};"
        f" by hand: {kinds_text(by_hand.kind_seconds)}",
    )


def race_targets(
    without: dict[str, Result], with_standby: dict[str, Result], link_rate: float
) -> list[Target]:
    """The race at 10M: ours against the recipe by hand, with and without a standby; what the
    pacing costs; how far the standby falls behind during the move; the app's insert waits."""
    paced, unpaced = with_standby["ours"], with_standby["ours_unpaced"]
    checked = [by_hand_target(without["ours"], without["by_hand"])]
    named = by_hand_target(paced, with_standby["by_hand"])
    checked.append(
        Target(named.name + ", with a standby", named.value, named.limit, named.measured, named.why)
    )
    value = ratio(paced.seconds, unpaced.seconds)
    checked.append(
        Target(
            f"ours paced / ours unpaced, with a standby (target ≤ {PACED_VS_UNPACED:g}x)",
            value,
            PACED_VS_UNPACED,
            f"{value:.2f}x ({paced.seconds:.2f} s / {unpaced.seconds:.2f} s)",
            f"paced by phase kind: {kinds_text(paced.kind_seconds)};"
            f" unpaced: {kinds_text(unpaced.kind_seconds)}",
        )
    )
    moving = [phase for phase in paced.phases if phase.kind == "dedupe"]
    lag = move_replay_lag(paced)
    move_wal = sum(phase.wal_bytes for phase in moving if phase.name.startswith("move"))
    one_batch = move_wal / max(paced.batches, 1) / link_rate
    checked.append(
        Target(
            "standby's replay lag during the move, ours paced"
            f" (target ≤ max_replica_lag {MAX_REPLICA_LAG:g} s + one batch on the link)",
            lag,
            MAX_REPLICA_LAG + one_batch,
            f"{lag:.2f} s (one batch: {megabytes(move_wal / max(paced.batches, 1))} of WAL,"
            f" {one_batch:.2f} s on the link; {paced.batches} batches);"
            f" unpaced {move_replay_lag(unpaced):.2f} s",
        )
    )
    for where, ours in (("without a standby", without["ours"]), ("with a standby", paced)):
        checked += [
            Target(
                f"p99 insert wait, ours, {where} (target ≤ {P99_WAIT_MS:g} ms)",
                ours.p99_wait_ms,
                P99_WAIT_MS,
                f"{ours.p99_wait_ms:.1f} ms",
                why_p99(ours),
            ),
            Target(
                f"worst insert wait, ours, {where} (target ≤ {WORST_WAIT_MS:g} ms)",
                ours.worst_wait_ms,
                WORST_WAIT_MS,
                f"{ours.worst_wait_ms:.1f} ms",
                why_worst_wait(ours),
            ),
        ]
    return checked


def move_replay_lag(ours: Result) -> float:
    """The standby's worst replay lag while ours listed and moved duplicates."""
    return max(
        (phase.max_replay_lag or 0.0 for phase in ours.phases if phase.kind == "dedupe"),
        default=0.0,
    )
