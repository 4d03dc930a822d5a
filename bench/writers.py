"""The app's writes while a contender runs: the insert probe and the live-duplicates stream.

Each writer inserts at a fixed rate on its own autocommit connection and records, for every
insert, when it started, how long it waited and how it ended.
"""

import random
import threading
import time
from collections import Counter
from dataclasses import dataclass

import psycopg2

from bench.db import connect
from bench.starting_tables import TableShape, workspace_uuid
from devtools.throwaway_postgres import ThrowawayServer

PROBE_INTERVAL = 0.005
# Duplicate inserts per second of the live-duplicates stream, unless --duplicate-rate says.
DUPLICATE_RATE = 50.0
PROBE_MARK = "bench-probe"
STREAM_MARK = "bench-duplicate"
UNIQUE_VIOLATION = "23505"

ACCEPTED = "accepted"
REJECTED = "rejected"
FAILED = "failed"


@dataclass(frozen=True)
class Attempt:
    began: float  # seconds since the contender started
    wait: float  # seconds
    outcome: str  # ACCEPTED, REJECTED or FAILED


class PacedWriter:
    """One insert every `interval` seconds; after a long wait the next goes at once, no burst."""

    name = "writer"

    def __init__(self, server: ThrowawayServer, database: str, interval: float) -> None:
        self.connection = connect(server, database, f"bench {self.name}")
        self.pid: int = self.connection.get_backend_pid()
        self.interval = interval
        self.attempts: list[Attempt] = []
        # Failed writes by SQLSTATE and message, to say why when there are any.
        self.failures: Counter[str] = Counter()
        self.origin = time.perf_counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)

    def start(self, origin: float) -> None:
        self.origin = origin
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.connection.close()

    def count(self, outcome: str) -> int:
        return sum(1 for attempt in self.attempts if attempt.outcome == outcome)

    def insert(self, cursor, number: int) -> None:
        raise NotImplementedError

    def outcome_of(self, error: psycopg2.Error) -> str:
        return FAILED

    def _run(self) -> None:
        cursor = self.connection.cursor()
        next_at = time.perf_counter()
        number = 0
        while not self._stop.is_set():
            number += 1
            began = time.perf_counter()
            try:
                self.insert(cursor, number)
                outcome = ACCEPTED
            except psycopg2.Error as error:
                outcome = self.outcome_of(error)
                if outcome == FAILED:
                    self.failures[describe(error)] += 1
            ended = time.perf_counter()
            self.attempts.append(Attempt(began - self.origin, ended - began, outcome))
            next_at = max(next_at + self.interval, time.perf_counter())
            self._stop.wait(max(0.0, next_at - time.perf_counter()))


def describe(error: psycopg2.Error) -> str:
    message = (str(error).strip().splitlines() or ["?"])[0]
    return f"{error.pgcode or 'no SQLSTATE'}: {message}"


class InsertProbe(PacedWriter):
    """A valid row every 5 ms: an existing workspace and a fresh phone_number_id, so it never
    creates a duplicate. Any error is a failed write.

    Each row goes to the next workspace in turn, as an app's inserts spread over its tenants.
    Were they all in one workspace, it would gain 200 rows a second, and the duplicate guard's
    check of every insert (an index scan of the row's workspace: there is no index on the pair
    yet) would read all of them: about 13 ms an insert once it holds 5,000, a cost of the probe,
    not of the migration."""

    name = "probe"

    def __init__(
        self, server: ThrowawayServer, database: str, contender: str, shape: TableShape
    ) -> None:
        super().__init__(server, database, PROBE_INTERVAL)
        self.workspaces = shape.workspaces
        self.contender = contender

    def insert(self, cursor, number: int) -> None:
        cursor.execute(
            "INSERT INTO public.meta_assets_cache"
            " (workspace_id, business_id, phone_number_id, updated_at)"
            " VALUES (%s, %s, %s, now())",
            (
                workspace_uuid(1 + number % self.workspaces),
                PROBE_MARK,
                f"probe-{self.contender}-{number}",
            ),
        )


class DuplicateStream(PacedWriter):
    """Copies of existing (workspace_id, phone_number_id) pairs, older than the kept row (every
    generated row is updated in 2026), with a plain INSERT as a buggy app path would write them.
    While the migration guards the table, and once the constraint exists, such an insert is
    rejected with unique_violation: expected, and not a failed write."""

    name = "duplicates"

    def __init__(
        self, server: ThrowawayServer, database: str, shape: TableShape, rate: float, seed: str
    ) -> None:
        super().__init__(server, database, 1 / rate)
        self.shape = shape
        self.keys = random.Random(seed)

    def insert(self, cursor, number: int) -> None:
        workspace, phone = self.shape.pair(self.keys.randint(1, self.shape.keys))
        cursor.execute(
            "INSERT INTO public.meta_assets_cache"
            " (workspace_id, business_id, phone_number_id, updated_at)"
            " VALUES (%s, %s, %s, timestamptz '2025-01-01 00:00:00+00')",
            (workspace, STREAM_MARK, phone),
        )

    def outcome_of(self, error: psycopg2.Error) -> str:
        return REJECTED if error.pgcode == UNIQUE_VIOLATION else FAILED
