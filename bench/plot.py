"""Insert waits over time, reference above ours: each dot an insert, coloured by the wait event
sampled during it, on the phases it fell in, with the WAL written so far."""

from pathlib import Path

from bench.attribution import NOT_SAMPLED, SLOW_MS
from bench.runs import Result, Trace
from bench.targets import WORST_WAIT_VS_REFERENCE
from bench.writers import ACCEPTED, REJECTED

# By wait_event_type: what kept an insert waiting.
EVENT_COLOURS = {
    "Lock": "tab:red",
    "IO": "tab:orange",
    "LWLock": "tab:purple",
    "CPU": "tab:green",
    NOT_SAMPLED: "tab:blue",
}
OTHER_EVENTS = "tab:olive"


def event_class(label: str) -> str:
    kind = label.split("/", 1)[0]
    return kind if kind in EVENT_COLOURS else "other"


def draw_phases(axes, trace: Trace) -> None:
    """Alternate shading per phase, its name along the top."""
    for number, span in enumerate(trace.spans):
        if number % 2:
            axes.axvspan(span.start, span.end, color="0.92", linewidth=0)
        axes.text(
            span.start,
            1.0,
            f" {span.name}",
            transform=axes.get_xaxis_transform(),
            rotation=90,
            fontsize=6,
            va="top",
            color="0.35",
        )


def draw_waits(axes, trace: Trace) -> None:
    by_class: dict[str, list[tuple[float, float]]] = {}
    for attempt in trace.probe:
        label = event_class(trace.timeline.insert_event("probe", attempt))
        by_class.setdefault(label, []).append((attempt.began, max(attempt.wait * 1000, 0.01)))
    for label, points in sorted(by_class.items()):
        axes.plot(
            [at for at, _ in points],
            [wait for _, wait in points],
            ".",
            markersize=2,
            color=EVENT_COLOURS.get(label, OTHER_EVENTS),
            label=f"probe insert: {label}",
        )
    for outcome, colour in ((ACCEPTED, "black"), (REJECTED, "0.6")):
        stream = [attempt for attempt in trace.stream if attempt.outcome == outcome]
        if stream:
            axes.plot(
                [attempt.began for attempt in stream],
                [max(attempt.wait * 1000, 0.01) for attempt in stream],
                "x",
                markersize=3,
                color=colour,
                label=f"duplicate insert, {outcome}",
            )


def draw_wal(axes, trace: Trace) -> None:
    samples = trace.timeline.samples
    wal = axes.twinx()
    start = samples[0].wal_bytes
    wal.plot(
        [sample.at for sample in samples],
        [(sample.wal_bytes - start) / 1024 / 1024 for sample in samples],
        color="tab:brown",
        linewidth=1,
        label="WAL written (MB)",
    )
    wal.set_ylabel("WAL written (MB)", fontsize=8)


def draw_panel(axes, result: Result, limits: list[tuple[float, str]]) -> None:
    trace = result.trace
    draw_phases(axes, trace)
    draw_waits(axes, trace)
    for value, label in limits:
        axes.axhline(value, color="grey", linestyle="--", linewidth=1, label=label)
    axes.set_yscale("log")
    axes.set_ylabel("insert wait (ms)")
    axes.set_title(result.label, fontsize=9, loc="left")
    draw_wal(axes, trace)


def write_plot(results: dict[str, Result], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    reference, ours = results["reference"], results["ours"]
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(9, 7), dpi=90)
    draw_panel(top, reference, [])
    wait_limit = reference.worst_wait_ms * WORST_WAIT_VS_REFERENCE
    limits = [
        (wait_limit, f"worst-wait target ({wait_limit:.1f} ms)"),
        (SLOW_MS, f"p99 target ({SLOW_MS:g} ms)"),
    ]
    draw_panel(bottom, ours, limits)
    bottom.set_xlabel("seconds since the command started")
    figure.suptitle(title, fontsize=10)
    # Below the axes: inside, the legend would hide the waits in the top corner.
    handles, labels = bottom.get_legend_handles_labels()
    top_handles, top_labels = top.get_legend_handles_labels()
    for handle, label in zip(top_handles, top_labels, strict=True):
        if label not in labels:
            handles.append(handle)
            labels.append(label)
    bottom.legend(
        handles,
        labels,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.18),
        ncol=3,
        fontsize=7,
        markerscale=3,
    )
    figure.tight_layout()
    figure.savefig(path, bbox_inches="tight")
    plt.close(figure)
