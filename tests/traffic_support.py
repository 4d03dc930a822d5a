"""The app's traffic against a test's database, and what every step must leave it serving.

devtools.app_traffic runs the clients; this module starts them against a harness, holds the
readers that widen a step's window (a pg_dump, a report), and judges the outcomes: which
errors the app may see in a step, given whether a unique served its upserts before and after.
"""

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from devtools.app_traffic import Mix, Outcome, Traffic, keyed_rows
from tests.online_support import Session, libpq_dsn, migrator_waiting_on_lock, wait_until

NO_UNIQUE_FOR_ON_CONFLICT = "42P10"
UNIQUE_VIOLATION = "23505"


def workspaces(harness) -> list[str]:
    return [row[0] for row in harness.rows("SELECT id::text FROM public.workspaces ORDER BY id")]


@contextmanager
def traffic(harness, mix: Mix, seed: int, label: str = "t") -> Iterator[Traffic]:
    """`mix` writing at full speed for the block's duration (flowing before it starts); its
    outcomes are on the Traffic once the block ends."""
    running = Traffic(
        libpq_dsn(harness.url), mix, keyed_rows(harness.rows), workspaces(harness), seed,
        label=label,
    ).start()  # fmt: skip
    try:
        running.wait_for_writes()
        yield running
    finally:
        running.stop()


@contextmanager
def long_reader(harness, seconds: float, *, until_waited_for: str) -> Iterator[None]:
    """A transaction that reads the table and stays open (a pg_dump, a report): it holds an
    ACCESS SHARE lock and an old snapshot, which a concurrent index build or drop waits for, and
    a strong lock queues behind. It stays open until the migrator has been seen waiting for it
    in a statement like `until_waited_for`, then `seconds` longer: the test then knows the step
    it is about really met the reader, however slowly the migrator started."""
    reader = Session(libpq_dsn(harness.url), autocommit=False)
    reader.run("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
    reader.run("SELECT count(*) FROM public.meta_assets_cache")

    failures: list[BaseException] = []

    def hold() -> None:
        try:
            wait_until(
                f"the migrator to wait for the reader ({until_waited_for})",
                lambda: migrator_waiting_on_lock(harness, until_waited_for),
            )
            time.sleep(seconds)
        except BaseException as failure:  # the test's, once it joins
            failures.append(failure)
        finally:
            reader.rollback()

    holder = threading.Thread(target=hold, name="long reader")
    holder.start()
    try:
        yield
    finally:
        holder.join()
        reader.close()
    if failures:
        raise failures[0]


def unexpected_errors(
    outcomes: list[Outcome], *, serves_before: bool, serves_after: bool
) -> list[str]:
    """The errors no client may see during a step from a state that does (or does not) serve
    ON CONFLICT upserts to one that does (or does not):

    - an insert that duplicates an existing key may fail with 23505 (the guard or a unique
      rejects it), and nothing else;
    - an upsert may fail only with 42P10 (no unique serves it), and only before serving starts
      (every such failure began before the first upsert that succeeded ended) or after it
      stops (every one ended after the last upsert that succeeded began);
    - nothing else fails, ever: no 23505 or 40P01 from an upsert, no timeout, no other write.
    """
    served = [o for o in outcomes if o.kind == "upsert" and not o.failed]
    first_served_ended = min((o.ended for o in served), default=float("inf"))
    last_served_started = max((o.started for o in served), default=float("-inf"))
    found = []
    for outcome in outcomes:
        if not outcome.failed:
            continue
        if outcome.kind == "insert_duplicate" and outcome.sqlstate == UNIQUE_VIOLATION:
            continue
        if outcome.kind == "upsert" and outcome.sqlstate == NO_UNIQUE_FOR_ON_CONFLICT:
            if not serves_before and outcome.started < first_served_ended:
                continue
            if not serves_after and outcome.ended > last_served_started:
                continue
        found.append(f"{outcome.client} {outcome.kind}: {outcome.sqlstate} {outcome.message}")
    return found


def upserts_served(outcomes: list[Outcome]) -> int:
    return sum(1 for o in outcomes if o.kind == "upsert" and not o.failed)
