"""Timed steps and the one readable summary a deploy log shows."""

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger("alembic_lossless_unique")


class RunReport:
    def __init__(self, title: str) -> None:
        self.title = title
        self.facts: list[tuple[str, str]] = []
        self.timings: list[tuple[str, float]] = []
        self._started = time.monotonic()

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        log.info("%s ...", name)
        started = time.monotonic()
        try:
            yield
        finally:
            self.timings.append((name, time.monotonic() - started))

    def fact(self, label: str, value: object) -> None:
        self.facts.append((label, str(value)))

    def lines(self) -> list[str]:
        total = time.monotonic() - self._started
        width = max((len(label) for label, _ in self.facts), default=0)
        lines = [f"{self.title}: done in {total:.2f} s"]
        lines += [f"  {label.ljust(width)}  {value}" for label, value in self.facts]
        lines.append(
            "  seconds per step: "
            + ", ".join(f"{name} {seconds:.2f}" for name, seconds in self.timings)
        )
        return lines

    def log_summary(self) -> None:
        for line in self.lines():
            log.info("%s", line)
