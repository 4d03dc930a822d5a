"""What happens while a contender runs: its phases, read from its log as they start, and the
writers' wait events and the server's WAL position, sampled from the server.

The migration logs one INFO line when each phase starts, `LEVEL [logger] <phase name> ...`;
the logger's name and the exact phase names change between versions, so phases are read by that
shape and sorted into kinds by keyword.
"""

import re
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from bench.db import connect
from devtools.throwaway_postgres import ThrowawayServer

PHASE_LINE = re.compile(r"^INFO\s+\[[^\]]+\]\s+(?P<name>\S.*?)\s\.\.\.$")
# The summary the migration logs when its work is done (`...: done in 12.34 s`): what follows
# (the revision recorded, the commit, the process exiting) is not the last step's work.
DONE_LINE = re.compile(r"^INFO\s+\[[^\]]+\]\s+\S.*: done in \d+(?:\.\d+)? s$")
FINISH = "finish (version table, commit, exit)"

# A word of the phase name starting with the prefix gives the phase its kind; first match wins,
# so "install duplicate guard" is a guard, not a dedupe.
KIND_PREFIXES = (
    ("guard", "guard"),
    ("list", "dedupe"),
    ("mov", "dedupe"),
    ("archiv", "dedupe"),
    ("delet", "dedupe"),
    ("build", "build"),
    ("promot", "promote"),
    ("restor", "restore"),
)
SAMPLE_INTERVAL = 0.01


@dataclass(frozen=True)
class PhaseStart:
    name: str
    kind: str
    at: float  # seconds since the contender started


def phase_kind(name: str) -> str:
    words = name.lower().split()
    for prefix, kind in KIND_PREFIXES:
        if any(word.startswith(prefix) for word in words):
            return kind
    return "other"


def phase_name(line: str) -> str | None:
    """The phase a log line starts, if it is a phase line."""
    line = line.strip()
    match = PHASE_LINE.match(line)
    if match:
        return match.group("name")
    return FINISH if DONE_LINE.match(line) else None


class CommandRun:
    """A contender's command, with its stderr read line by line as it arrives: each phase line
    is timestamped when it is read. Before the first phase line the run is in `first`."""

    def __init__(self, command: list[str], cwd: Path, env: dict[str, str], first: PhaseStart):
        self.command, self.cwd, self.env = command, cwd, env
        self.phases: list[PhaseStart] = [first]
        self.stderr_lines: list[str] = []
        self.stdout = ""
        self.origin = 0.0

    def run(self, origin: float) -> int:
        self.origin = origin
        process = subprocess.Popen(
            self.command,
            cwd=self.cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        reader = threading.Thread(target=self._read_stderr, args=(process.stderr,), daemon=True)
        reader.start()
        # communicate() would read stderr too; stdout alone is drained here.
        self.stdout = process.stdout.read()
        reader.join()
        return process.wait()

    def _read_stderr(self, stream) -> None:
        for line in stream:
            at = time.perf_counter() - self.origin
            self.stderr_lines.append(line.rstrip("\n"))
            name = phase_name(line)
            if name is not None:
                self.phases.append(PhaseStart(name, phase_kind(name), at))

    def failure(self) -> str:
        """The last lines of both outputs, which say why a command failed."""
        stderr = [line for line in self.stderr_lines if line.strip()][-8:]
        stdout = self.stdout.strip().splitlines()[-4:]
        return "\n".join(stderr + stdout)


@dataclass(frozen=True)
class Sample:
    at: float  # seconds since the contender started
    wal_bytes: int  # the server's WAL position
    # Per writer: its wait event while inside an insert (CPU when running with none), or None
    # when idle between inserts.
    events: dict[str, str | None]
    # How far the slowest streaming standby has replayed, on the same scale; None without one.
    replayed_bytes: int | None = None


ACTIVITY_SQL = """
SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')::bigint,
       (SELECT pg_wal_lsn_diff(min(replay_lsn), '0/0')::bigint FROM pg_stat_replication),
       a.pid, a.state, a.wait_event_type, a.wait_event
  FROM (VALUES (1)) AS one(x)
  LEFT JOIN pg_stat_activity a ON a.pid = ANY (%s)
"""


def event_label(state: str | None, event_type: str | None, event: str | None) -> str | None:
    if state != "active":
        return None
    return f"{event_type}/{event}" if event_type else "CPU"


class ActivitySampler:
    """Every 10 ms, on its own connection: the WAL position and each writer's wait event in
    pg_stat_activity. The first and last samples are taken when it starts and stops."""

    def __init__(self, server: ThrowawayServer, pids: dict[str, int]) -> None:
        self.connection = connect(server, "postgres", "bench sampler")
        self.writers = {pid: name for name, pid in pids.items()}
        self.samples: list[Sample] = []
        self.origin = time.perf_counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def start(self, origin: float) -> None:
        self.origin = origin
        self._sample(self.connection.cursor())
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._sample(self.connection.cursor())
        self.connection.close()

    def _run(self) -> None:
        cursor = self.connection.cursor()
        while not self._stop.wait(SAMPLE_INTERVAL):
            self._sample(cursor)

    def _sample(self, cursor) -> None:
        at = time.perf_counter() - self.origin
        cursor.execute(ACTIVITY_SQL, (list(self.writers),))
        rows = cursor.fetchall()
        events: dict[str, str | None] = dict.fromkeys(self.writers.values())
        for _, _, pid, state, event_type, event in rows:
            if pid is not None:
                events[self.writers[pid]] = event_label(state, event_type, event)
        self.samples.append(Sample(at, rows[0][0], events, rows[0][1]))
