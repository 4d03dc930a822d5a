"""Growth: ours and the reference at several sizes, in seconds per million rows, and the target
that ours costs no more per row at 30M than at 10M (times 1.2)."""

from dataclasses import dataclass
from itertools import pairwise

from bench.runs import Result, result_from_json, result_to_json
from bench.targets import GROWTH_PER_ROW, ROLLBACK_VS_UPGRADE, Target, kinds_text, ratio


@dataclass
class GrowthPoint:
    size: str  # as asked for, e.g. 10M
    rows: int  # as counted in the drifted table
    results: dict[str, Result]

    def per_million(self, key: str) -> float:
        return self.results[key].seconds / (self.rows / 1e6)

    def kinds_per_million(self, key: str) -> dict[str, float]:
        millions = self.rows / 1e6
        return {kind: s / millions for kind, s in self.results[key].kind_seconds.items()}


def point_to_json(point: GrowthPoint) -> dict:
    results = {key: result_to_json(result) for key, result in point.results.items()}
    return {"size": point.size, "rows": point.rows, "results": results}


def point_from_json(values: dict) -> GrowthPoint:
    results = {key: result_from_json(result) for key, result in values["results"].items()}
    return GrowthPoint(values["size"], values["rows"], results)


# The rollback: timed since it joined the benchmark; older stored runs have no such result.
ROLLBACK = "ours_rollback"


def growth_table(points: list[GrowthPoint]) -> str:
    lines = [
        "| size | rows | reference (s) | ours (s) | ours rollback (s) | rollback / upgrade"
        " | reference (s per M rows) | ours (s per M rows) | ours per row vs previous size"
        " | rollback per row vs previous size | ours by phase kind (s per M rows) |",
        "|" + "---|" * 11,
    ]
    previous = None
    for point in points:
        reference, ours = point.results["reference"], point.results["ours"]
        rollback = point.results.get(ROLLBACK)
        growth = "" if previous is None else f"{per_row_growth(previous, point):.2f}x"
        rollback_growth = (
            f"{per_row_growth(previous, point, ROLLBACK):.2f}x"
            if previous is not None and rollback and ROLLBACK in previous.results
            else ""
        )
        lines.append(
            f"| {point.size} | {point.rows:,} | {reference.seconds:.2f} | {ours.seconds:.2f}"
            f" | {f'{rollback.seconds:.2f}' if rollback else '-'}"
            f" | {f'{ratio(rollback.seconds, ours.seconds):.2f}x' if rollback else '-'}"
            f" | {point.per_million('reference'):.2f} | {point.per_million('ours'):.2f}"
            f" | {growth} | {rollback_growth}"
            f" | {kinds_text(point.kinds_per_million('ours'), unit='')} |"
        )
        previous = point
    return "\n".join(lines)


def per_row_growth(smaller: GrowthPoint, larger: GrowthPoint, key: str = "ours") -> float:
    return ratio(larger.per_million(key), smaller.per_million(key))


def growth_targets(points: list[GrowthPoint]) -> list[Target]:
    """Each size against the one before it, for the upgrade and its rollback (the 30M-vs-10M
    lines are the targets proper); and the rollback against the upgrade at each size."""
    checked = []
    for key, what in (("ours", "ours"), (ROLLBACK, "ours rollback")):
        checked += [
            Target(
                f"{what} per row at {larger.size} / at {smaller.size}"
                f" (target ≤ {GROWTH_PER_ROW:g}x)",
                per_row_growth(smaller, larger, key),
                GROWTH_PER_ROW,
                f"{per_row_growth(smaller, larger, key):.2f}x"
                f" ({smaller.per_million(key):.2f} -> {larger.per_million(key):.2f} s per M rows)",
                f"s per M rows by phase kind at {smaller.size}:"
                f" {kinds_text(smaller.kinds_per_million(key))};"
                f" at {larger.size}: {kinds_text(larger.kinds_per_million(key))}",
            )
            for smaller, larger in pairwise(points)
            if key in smaller.results and key in larger.results
        ]
    return checked + [
        rollback_target(point.results, f" at {point.size}")
        for point in points
        if ROLLBACK in point.results
    ]


def rollback_target(results: dict[str, Result], where: str = "") -> Target:
    """The incident path takes no longer than the upgrade it undoes."""
    rollback, ours = results[ROLLBACK], results["ours"]
    value = ratio(rollback.seconds, ours.seconds)
    return Target(
        f"rollback / upgrade{where} (target ≤ {ROLLBACK_VS_UPGRADE:g}x)",
        value,
        ROLLBACK_VS_UPGRADE,
        f"{value:.2f}x ({rollback.seconds:.2f} s / {ours.seconds:.2f} s)",
        f"rollback by phase kind: {kinds_text(rollback.kind_seconds)};"
        f" upgrade: {kinds_text(ours.kind_seconds)}",
    )
