"""The app's real kinds of traffic on public.meta_assets_cache, at full speed, from many clients.

Each client is a thread with its own autocommit psycopg2 connection (the app's requests are
one transaction each, as PostgREST's are), under Supabase's 8 s statement_timeout for API
roles, and records every statement it ran: when it started and ended, and how it ended (the
SQLSTATE of its error, or its row count). The kinds:

- upsert: PostgREST's `INSERT ... ON CONFLICT (workspace_id, phone_number_id) DO UPDATE`, in
  groups whose clients meet at a barrier and upsert the same new key at the same instant (one
  inserts, the others update), now and then an existing key instead;
- insert: a new key, or a duplicate of an existing key (rejected once a unique or the
  migration's guard is in place);
- update: `SET last_error = ..., updated_at = now()` on rows the client owns;
- rekey: `SET phone_number_id = <a new key>` on rows the client owns;
- delete: rows the client owns.

Every existing row a client writes is its own (the caller hands each client its rows), so the
last successful write to a row says exactly what the row must hold afterwards. Used by the
tests (tests/test_upsert_races.py, tests/test_workload.py) and the benchmark
(bench/upsert_races.py).
"""

import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import psycopg2

KINDS = ("upsert", "insert", "update", "rekey", "delete")
# Supabase's statement_timeout for the API roles: a write stalled longer fails.
APP_OPTIONS = "-c statement_timeout=8s"
APPLICATION_NAME = "app traffic"

UPSERT = """
INSERT INTO public.meta_assets_cache (workspace_id, phone_number_id, waba_id,
                                      display_phone_number, verified_name, quality_rating)
VALUES (%s, %s, %s, %s, %s, 'GREEN')
ON CONFLICT (workspace_id, phone_number_id) DO UPDATE
   SET workspace_id = EXCLUDED.workspace_id, phone_number_id = EXCLUDED.phone_number_id,
       waba_id = EXCLUDED.waba_id, display_phone_number = EXCLUDED.display_phone_number,
       verified_name = EXCLUDED.verified_name, quality_rating = EXCLUDED.quality_rating,
       updated_at = now()
RETURNING id::text, (xmax = 0) AS inserted"""
INSERT = """
INSERT INTO public.meta_assets_cache (workspace_id, phone_number_id, waba_id, verified_name)
VALUES (%s, %s, 'waba-traffic', %s)
RETURNING id::text"""
UPDATE = """
UPDATE public.meta_assets_cache SET last_error = %s, updated_at = now() WHERE id = %s"""
REKEY = "UPDATE public.meta_assets_cache SET phone_number_id = %s WHERE id = %s"
DELETE = "DELETE FROM public.meta_assets_cache WHERE id = %s"


@dataclass(frozen=True)
class Row:
    id: str
    workspace_id: str
    phone_number_id: str


@dataclass
class Outcome:
    client: str
    kind: str  # one of KINDS, or "insert_duplicate"
    started: float  # time.monotonic()
    ended: float
    sqlstate: str | None  # None: it succeeded
    rowcount: int = 0
    row_id: str | None = None  # the row written (inserted or updated)
    value: str | None = None  # what it wrote: last_error, the new phone_number_id
    inserted: bool = False  # an upsert that inserted
    message: str = ""

    @property
    def failed(self) -> bool:
        return self.sqlstate is not None


@dataclass
class Mix:
    """How many clients of each kind; upserters come in groups of `upsert_group`."""

    upsert: int = 0
    insert: int = 0
    update: int = 0
    rekey: int = 0
    delete: int = 0
    upsert_group: int = 4
    # Of an upsert round, the share that upserts an existing key instead of a new one.
    existing_key_share: float = 0.2
    # Of an inserter's inserts, the share that duplicates an existing key.
    duplicate_share: float = 0.5

    @classmethod
    def random(cls, rng: random.Random) -> "Mix":
        """A random mix: every kind may be absent, at least one client writes."""
        while True:
            mix = cls(
                upsert=rng.choice((0, 4, 8)),
                insert=rng.randint(0, 2),
                update=rng.randint(0, 3),
                rekey=rng.randint(0, 1),
                delete=rng.randint(0, 1),
                existing_key_share=rng.choice((0.0, 0.2, 0.5)),
                duplicate_share=rng.choice((0.0, 0.5, 1.0)),
            )
            if mix.total:
                return mix

    @property
    def total(self) -> int:
        return self.upsert + self.insert + self.update + self.rekey + self.delete

    def describe(self) -> str:
        return ", ".join(f"{getattr(self, kind)} {kind}" for kind in KINDS if getattr(self, kind))


def sqlstate_of(error: Exception) -> str:
    return getattr(error, "pgcode", None) or type(error).__name__


@dataclass
class Client:
    name: str
    kind: str
    dsn: str
    rng: random.Random
    stop: threading.Event
    work: Callable[["Client"], None]
    outcomes: list[Outcome] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)  # the existing rows it owns or aims at
    workspaces: Sequence[str] = ()  # where its new keys go
    duplicate_share: float = 0.0  # inserters
    existing_key_share: float = 0.0  # upserters
    barrier: threading.Barrier | None = None  # upserters: the group meets here each round
    group: str = ""
    group_rng: random.Random | None = None  # the group's shared choice of keys
    counter: int = 0
    connection: object = None
    # How often a client backs off after a failure that repeats (no unique yet: 42P10).
    pause_after_failure: float = 0.002

    def run(self, sql: str, params: Sequence, kind: str | None = None, **noted) -> Outcome:
        started = time.monotonic()
        outcome = Outcome(self.name, kind or self.kind, started, started, None, **noted)
        try:
            with self.connection.cursor() as cursor:
                cursor.execute(sql, params)
                outcome.rowcount = cursor.rowcount
                if cursor.description:
                    row = cursor.fetchone()
                    outcome.row_id = row[0]
                    outcome.inserted = bool(row[1]) if len(row) > 1 else True
        except psycopg2.Error as error:
            outcome.sqlstate = sqlstate_of(error)
            outcome.message = (getattr(error, "pgerror", None) or str(error)).strip()
            self.connection.rollback()
        outcome.ended = time.monotonic()
        self.outcomes.append(outcome)
        if outcome.failed:
            time.sleep(self.pause_after_failure)
        return outcome


class Traffic:
    """Clients of `mix` writing to the table at full speed from start() until stop()."""

    def __init__(
        self,
        dsn: str,
        mix: Mix,
        rows: Iterable[Row],
        workspaces: Sequence[str],
        seed: int,
        *,
        label: str = "t",
    ) -> None:
        self.mix = mix
        self.stop_event = threading.Event()
        rng = random.Random(seed)
        rows = list(rows)
        rng.shuffle(rows)
        self.clients: list[Client] = []
        self.barriers: list[threading.Barrier] = []
        # Rows to write are dealt out: each belongs to one updater, rekeyer or deleter.
        owners = mix.update + mix.rekey + mix.delete
        dealt = [rows[i::owners] for i in range(owners)] if owners else []

        def add(kind: str, aimed_at: list[Row], name: str, **more) -> None:
            client = Client(
                name,
                kind,
                dsn,
                random.Random(rng.random()),
                self.stop_event,
                WORK[kind],
                rows=aimed_at,
                workspaces=workspaces,
                **more,
            )
            self.clients.append(client)

        for kind in ("update", "rekey", "delete"):
            for number in range(getattr(mix, kind)):
                add(kind, dealt.pop(), f"{label}-{kind}-{number}")
        for number in range(mix.insert):
            add("insert", rows, f"{label}-insert-{number}", duplicate_share=mix.duplicate_share)
        for group in range(mix.upsert // mix.upsert_group):
            barrier = threading.Barrier(mix.upsert_group)
            self.barriers.append(barrier)
            # One random stream per group: its clients pick the same key each round.
            group_seed = rng.random()
            for member in range(mix.upsert_group):
                add(
                    "upsert",
                    rows,
                    f"{label}-upsert-{group}-{member}",
                    barrier=barrier,
                    group=f"{label}-{group}",
                    group_rng=random.Random(group_seed),
                    existing_key_share=mix.existing_key_share,
                )
        self.threads = [
            threading.Thread(target=self._serve, args=(c,), name=c.name, daemon=True)
            for c in self.clients
        ]
        self.errors: list[str] = []

    def _serve(self, client: Client) -> None:
        try:
            client.connection = psycopg2.connect(
                client.dsn, application_name=APPLICATION_NAME, options=APP_OPTIONS
            )
            client.connection.autocommit = True
            self._ready.wait()
            while not self.stop_event.is_set():
                client.work(client)
        except threading.BrokenBarrierError:
            pass  # stopped while its group waited at the barrier
        except Exception as error:  # a client that breaks is a finding, not a hang
            self.errors.append(f"{client.name}: {type(error).__name__}: {error}")
            for barrier in self.barriers:
                barrier.abort()
        finally:
            if client.connection is not None:
                client.connection.close()

    def start(self) -> "Traffic":
        self._ready = threading.Event()
        for thread in self.threads:
            thread.start()
        self._ready.set()
        return self

    def wait_for_writes(self, count: int = 1, timeout: float = 30) -> None:
        """Until every client has finished `count` statements (the traffic is flowing)."""
        deadline = time.monotonic() + timeout
        working = [c for c in self.clients if c.rows or c.kind in ("insert", "upsert")]
        while any(len(c.outcomes) < count for c in working):
            if self.errors or time.monotonic() > deadline:
                raise RuntimeError("traffic did not start: " + "; ".join(self.errors))
            time.sleep(0.01)

    def stop(self) -> list[Outcome]:
        self.stop_event.set()
        for barrier in self.barriers:
            barrier.abort()
        for thread in self.threads:
            thread.join(timeout=30)
        if self.errors:
            raise RuntimeError("a traffic client broke: " + "; ".join(self.errors))
        return self.outcomes

    @property
    def outcomes(self) -> list[Outcome]:
        return sorted((o for c in self.clients for o in c.outcomes), key=lambda o: o.started)


def _next(client: Client) -> int:
    client.counter += 1
    return client.counter


def _changing(statement: str):
    """A client step that sets one of the client's rows' column to a value of its own."""

    def change(client: Client) -> None:
        if not client.rows:
            client.stop.wait(0.01)
            return
        row = client.rng.choice(client.rows)
        value = f"{client.name}/{_next(client)}"
        client.run(statement, (value, row.id), row_id=row.id, value=value)

    return change


_update = _changing(UPDATE)
_rekey = _changing(REKEY)


def _delete(client: Client) -> None:
    if not client.rows:
        client.stop.wait(0.01)
        return
    row = client.rows.pop(client.rng.randrange(len(client.rows)))
    client.run(DELETE, (row.id,), row_id=row.id)


def _insert(client: Client) -> None:
    if client.rows and client.rng.random() < client.duplicate_share:
        row = client.rng.choice(client.rows)
        client.run(
            INSERT,
            (row.workspace_id, row.phone_number_id, client.name),
            kind="insert_duplicate",
        )
        return
    workspace = client.rng.choice(client.workspaces)
    phone = f"{client.name}/{_next(client)}"
    client.run(INSERT, (workspace, phone, client.name), value=phone)


def _upsert(client: Client) -> None:
    """One round: the group meets at its barrier, then each upserts the round's key."""
    rng, barrier = client.group_rng, client.barrier
    assert rng is not None and barrier is not None
    if client.rows and rng.random() < client.existing_key_share:
        row = rng.choice(client.rows)
        workspace, phone = row.workspace_id, row.phone_number_id
    else:
        workspace = rng.choice(client.workspaces)
        phone = f"{client.group}/{_next(client)}"
    barrier.wait(timeout=30)
    client.run(
        UPSERT,
        (workspace, phone, f"waba-{client.name}", "+15550000000", client.name),
        value=phone,
    )


WORK = {
    "update": _update,
    "rekey": _rekey,
    "delete": _delete,
    "insert": _insert,
    "upsert": _upsert,
}


def keyed_rows(execute_rows: Callable[[str], list]) -> list[Row]:
    """The table's keyed rows, to aim the traffic at."""
    return [
        Row(*row)
        for row in execute_rows(
            "SELECT id::text, workspace_id::text, phone_number_id FROM public.meta_assets_cache"
            " WHERE phone_number_id IS NOT NULL ORDER BY id"
        )
    ]


def errors_by_sqlstate(outcomes: Iterable[Outcome], kinds: Iterable[str] = KINDS) -> Counter:
    wanted = set(kinds)
    return Counter(o.sqlstate for o in outcomes if o.failed and o.kind in wanted)
