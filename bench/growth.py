"""Growth: ours and the reference at several sizes, in seconds per million rows, and the target
that ours costs no more per row at 30M than at 10M (times 1.2)."""

from dataclasses import dataclass
from itertools import pairwise

from bench.runs import Result, result_from_json, result_to_json
from bench.targets import GROWTH_PER_ROW, Target, kinds_text, ratio


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


def growth_table(points: list[GrowthPoint]) -> str:
    lines = [
        "| size | rows | reference (s) | ours (s) | reference (s per M rows)"
        " | ours (s per M rows) | ours per row vs previous size"
        " | ours by phase kind (s per M rows) |",
        "|" + "---|" * 8,
    ]
    previous = None
    for point in points:
        reference, ours = point.results["reference"], point.results["ours"]
        growth = "" if previous is None else f"{per_row_growth(previous, point):.2f}x"
        lines.append(
            f"| {point.size} | {point.rows:,} | {reference.seconds:.2f} | {ours.seconds:.2f}"
            f" | {point.per_million('reference'):.2f} | {point.per_million('ours'):.2f}"
            f" | {growth} | {kinds_text(point.kinds_per_million('ours'), unit='')} |"
        )
        previous = point
    return "\n".join(lines)


def per_row_growth(smaller: GrowthPoint, larger: GrowthPoint) -> float:
    return ratio(larger.per_million("ours"), smaller.per_million("ours"))


def growth_targets(points: list[GrowthPoint]) -> list[Target]:
    """Each size against the one before it; the 30M-vs-10M line is the target proper."""
    return [
        Target(
            f"ours per row at {larger.size} / at {smaller.size} (target ≤ {GROWTH_PER_ROW:g}x)",
            per_row_growth(smaller, larger),
            GROWTH_PER_ROW,
            f"{per_row_growth(smaller, larger):.2f}x ({smaller.per_million('ours'):.2f} ->"
            f" {larger.per_million('ours'):.2f} s per M rows)",
            f"s per M rows by phase kind at {smaller.size}:"
            f" {kinds_text(smaller.kinds_per_million('ours'))};"
            f" at {larger.size}: {kinds_text(larger.kinds_per_million('ours'))}",
        )
        for smaller, larger in pairwise(points)
    ]
