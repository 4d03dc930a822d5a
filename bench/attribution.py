"""Every insert wait explained: which phase it started in, which wait events the server showed
for the writer meanwhile, and how much WAL each phase wrote."""

import bisect
import statistics
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from bench.observe import SAMPLE_INTERVAL, PhaseStart, Sample
from bench.writers import REJECTED, Attempt

AFTER_EXIT = "(after the command exited)"
# An insert slower than this counts against the p99 target.
SLOW_MS = 10.0
NOT_SAMPLED = "not sampled"


@dataclass(frozen=True)
class Span:
    name: str
    kind: str
    start: float
    end: float

    def holds(self, at: float) -> bool:
        return self.start <= at < self.end


def phase_spans(starts: list[PhaseStart], ended: float, tail_end: float) -> list[Span]:
    """Each phase lasts until the next one starts, the last until the command exits; the
    writers' tail after that is a span of its own."""
    ends = [start.at for start in starts[1:]] + [ended]
    spans = [
        Span(start.name, start.kind, start.at, end) for start, end in zip(starts, ends, strict=True)
    ]
    return [*spans, Span(AFTER_EXIT, "after", ended, tail_end)]


def percentile(values: list[float], pct: float) -> float:
    if not values:
        return 0.0
    if len(values) < 2:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(pct) - 1]


def wait_ms(attempts: Iterable[Attempt]) -> list[float]:
    return [attempt.wait * 1000 for attempt in attempts]


class Timeline:
    """The samples of one run, searchable by time."""

    def __init__(self, samples: list[Sample]) -> None:
        self.samples = samples
        self.times = [sample.at for sample in samples]
        self.replay_lags = replay_lags(samples)

    def max_replay_lag(self, start: float, end: float) -> float | None:
        """The standby's worst replay lag in the samples between start and end; None without a
        standby."""
        first = bisect.bisect_left(self.times, start)
        last = bisect.bisect_right(self.times, end)
        lags = [lag for lag in self.replay_lags[first:last] if lag is not None]
        return max(lags, default=None)

    def wal_at(self, at: float) -> float:
        """The WAL position at `at`, interpolated between the samples around it."""
        after = bisect.bisect_left(self.times, at)
        if after == 0:
            return self.samples[0].wal_bytes
        if after == len(self.samples):
            return self.samples[-1].wal_bytes
        before, later = self.samples[after - 1], self.samples[after]
        share = (at - before.at) / max(later.at - before.at, 1e-9)
        return before.wal_bytes + share * (later.wal_bytes - before.wal_bytes)

    def wal_between(self, start: float, end: float) -> int:
        return round(self.wal_at(end) - self.wal_at(start))

    def events(self, writer: str, start: float, end: float) -> Counter[str]:
        """The writer's wait events in the samples taken between start and end while it was
        inside an insert."""
        first = bisect.bisect_left(self.times, start)
        last = bisect.bisect_right(self.times, end)
        labels = (sample.events.get(writer) for sample in self.samples[first:last])
        return Counter(label for label in labels if label is not None)

    def insert_event(self, writer: str, attempt: Attempt) -> str:
        """What one insert mostly waited on, or NOT_SAMPLED when it was too short to catch."""
        found = self.events(writer, attempt.began, attempt.began + attempt.wait)
        return found.most_common(1)[0][0] if found else NOT_SAMPLED


# An idle primary's insert position counts the next page's header, which no standby replays.
PAGE_HEADER_BYTES = 40


def replay_lags(samples: list[Sample]) -> list[float | None]:
    """Per sample, how old the oldest WAL the standby had not replayed was: the time since the
    first sample whose WAL position lies past its replay position (0 when it had replayed all).
    From the primary's own positions over time, not pg_stat_replication's replay_lag, which
    only moves when the standby replies."""
    lags: list[float | None] = []
    oldest = 0  # the first sample whose WAL the standby may not have replayed
    for sample in samples:
        if sample.replayed_bytes is None:
            lags.append(None)
            continue
        while (
            oldest < len(samples)
            and samples[oldest].wal_bytes <= sample.replayed_bytes + PAGE_HEADER_BYTES
        ):
            oldest += 1
        lags.append(max(0.0, sample.at - samples[oldest].at) if oldest < len(samples) else 0.0)
    return lags


@dataclass
class PhaseSummary:
    name: str
    kind: str
    start: float
    seconds: float
    wal_bytes: int
    probe_inserts: int
    probe_worst_ms: float
    probe_p99_ms: float
    probe_slow: int  # inserts slower than SLOW_MS
    # Samples of the probe inside an insert, by wait event: where its time went.
    probe_events: dict[str, int] = field(default_factory=dict)
    stream_inserts: int = 0
    stream_rejected: int = 0
    stream_worst_ms: float = 0.0
    # The streaming standby's worst replay lag in the phase (seconds); None without one.
    max_replay_lag: float | None = None


def summarise_phase(
    span: Span, probe: list[Attempt], stream: list[Attempt], timeline: Timeline
) -> PhaseSummary:
    probe_ms = wait_ms(attempt for attempt in probe if span.holds(attempt.began))
    stream_here = [attempt for attempt in stream if span.holds(attempt.began)]
    return PhaseSummary(
        name=span.name,
        kind=span.kind,
        start=span.start,
        seconds=span.end - span.start,
        wal_bytes=timeline.wal_between(span.start, span.end),
        probe_inserts=len(probe_ms),
        probe_worst_ms=max(probe_ms, default=0.0),
        probe_p99_ms=percentile(probe_ms, 99),
        probe_slow=sum(1 for wait in probe_ms if wait > SLOW_MS),
        probe_events=dict(timeline.events("probe", span.start, span.end).most_common()),
        stream_inserts=len(stream_here),
        stream_rejected=sum(1 for attempt in stream_here if attempt.outcome == REJECTED),
        stream_worst_ms=max(wait_ms(stream_here), default=0.0),
        max_replay_lag=timeline.max_replay_lag(span.start, span.end),
    )


def summarise_phases(
    spans: list[Span], probe: list[Attempt], stream: list[Attempt], timeline: Timeline
) -> list[PhaseSummary]:
    return [summarise_phase(span, probe, stream, timeline) for span in spans]


# The order the per-kind breakdowns are printed in.
KINDS = ("start-up", "guard", "dedupe", "build", "promote", "other", "reference SQL")


def seconds_by_kind(phases: list[PhaseSummary]) -> dict[str, float]:
    """The command's time per phase kind (the writers' tail after it exits is not counted)."""
    totals: dict[str, float] = {}
    for phase in phases:
        if phase.kind != "after":
            totals[phase.kind] = totals.get(phase.kind, 0.0) + phase.seconds
    return dict(sorted(totals.items(), key=lambda item: kind_order(item[0])))


def kind_order(kind: str) -> int:
    return KINDS.index(kind) if kind in KINDS else len(KINDS)


@dataclass(frozen=True)
class SlowInsert:
    at: float
    wait_ms: float
    phase: str
    events: dict[str, int]

    def line(self) -> str:
        caught = format_events(self.events)
        events = caught or f"none caught by sampling every {SAMPLE_INTERVAL * 1000:g} ms"
        return (
            f"{self.wait_ms:.1f} ms at {self.at:.2f} s in {self.phase};"
            f" wait events sampled during it: {events}"
        )


def slowest_inserts(
    attempts: list[Attempt], spans: list[Span], timeline: Timeline, writer: str, count: int = 5
) -> list[SlowInsert]:
    slowest = sorted(attempts, key=lambda attempt: attempt.wait, reverse=True)[:count]
    return [
        SlowInsert(
            at=attempt.began,
            wait_ms=attempt.wait * 1000,
            phase=next((span.name for span in spans if span.holds(attempt.began)), "?"),
            events=dict(
                timeline.events(writer, attempt.began, attempt.began + attempt.wait).most_common()
            ),
        )
        for attempt in slowest
    ]


def format_events(events: dict[str, int], limit: int = 4) -> str:
    """{'IO/WALSync': 12, 'CPU': 3} -> 'IO/WALSync 12, CPU 3' (sample counts)."""
    top = sorted(events.items(), key=lambda item: -item[1])[:limit]
    return ", ".join(f"{event} {samples}" for event, samples in top)
