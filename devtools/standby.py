"""A streaming physical standby of a throwaway server, over a link as slow as one between zones.

    with throwaway_postgres() as primary, streaming_standby(primary, "zone_b") as standby:
        ...                       # write on the primary
        standby.wait_replayed()   # until the standby has replayed all the primary has written
        standby.sql("SELECT count(*) FROM t")

The standby is made with `pg_basebackup -R` (its own from the server's bin dir, else the one of
the server's major or newer that devtools.postgres_binaries fetches: it refuses a newer server)
and runs as a server of its own, as the unprivileged user when run as root. It streams through
CappedRelay, a TCP relay that passes the primary's WAL at `rate` bytes per second: a standby on
the same machine replays as fast as anything writes, so without the cap no test could see it
fall behind. The standby replies to the primary every second (wal_receiver_status_interval),
so the primary's view of it is fresh. `synchronous=True` names it in the primary's
synchronous_standby_names (put back on exit, before the standby stops, so that no commit on the
primary waits for a standby that is gone); `apply_delay` sets recovery_min_apply_delay once it
streams. Every wait is bounded; everything is removed on exit.
"""

import contextlib
import os
import pwd
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devtools.postgres_binaries import pg_basebackup
from devtools.throwaway_postgres import (
    FAST_SETTINGS,
    ThrowawayPostgresError,
    ThrowawayServer,
    free_port,
    run_server_command,
    server_os_user,
    sql_rows,
    start_server,
    stop_server,
)

# About what one stream gets between two zones of a cloud region.
ZONE_LINK_RATE = 20_000_000  # bytes per second
_CHUNK = 16 * 1024


class StandbyTimeout(AssertionError):
    pass


class CappedRelay:
    """Relays TCP connections to upstream; what upstream sends is passed at most `rate` bytes
    per second over all connections together (a token bucket with a burst of 50 ms)."""

    def __init__(self, upstream_host: str, upstream_port: int, rate: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.rate = rate
        self.burst = rate * 0.05
        self._tokens = self.burst
        self._refilled = time.monotonic()
        self._bucket = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._closed = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]

    def __enter__(self) -> "CappedRelay":
        self._spawn(self._accept)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._closed.set()
        for sock in [self._listener, *self._sockets]:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for thread in self._threads:
            thread.join(timeout=5)

    def _spawn(self, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
                upstream = socket.create_connection(self.upstream, timeout=10)
            except OSError:
                return
            upstream.settimeout(None)
            self._sockets += [client, upstream]
            self._spawn(self._pump, client, upstream, False)
            self._spawn(self._pump, upstream, client, True)

    def _pump(self, source: socket.socket, sink: socket.socket, capped: bool) -> None:
        try:
            while chunk := source.recv(_CHUNK):
                if capped:
                    self._take(len(chunk))
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)

    def _take(self, amount: int) -> None:
        with self._bucket:
            now = time.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._refilled) * self.rate)
            self._refilled = now
            self._tokens -= amount
            debt = -self._tokens / self.rate if self._tokens < 0 else 0.0
            # Sleeping under the lock makes every connection queue behind this one: one link.
            if debt:
                time.sleep(debt)


@dataclass
class Standby:
    name: str  # its application_name on the primary
    primary: ThrowawayServer
    server: ThrowawayServer  # the standby itself, read-only
    data_dir: Path
    relay: CappedRelay = field(repr=False)

    def sql(self, statement: str, database: str = "postgres", **params: Any) -> list[Any]:
        """Rows of `statement` on the standby."""
        return sql_rows(self.server, statement, database, **params)

    def delay_apply(self, delay: str) -> None:
        """recovery_min_apply_delay from now on. Set once the standby is consistent: a commit
        inside the base backup's WAL would otherwise hold its start (pg_ctl --wait) for that
        long."""
        with (self.data_dir / "postgresql.auto.conf").open("a") as conf:
            conf.write(f"recovery_min_apply_delay = '{delay}'\n")
        self.sql("SELECT pg_reload_conf()")
        _wait(
            f"standby {self.name} to take recovery_min_apply_delay",
            lambda: self.sql("SHOW recovery_min_apply_delay")[0][0] != "0",
            10,
        )

    def wait_streaming(self, timeout: float = 30) -> None:
        _wait(
            f"standby {self.name} to stream",
            lambda: sql_rows(
                self.primary,
                "SELECT 1 FROM pg_stat_replication WHERE application_name = :name"
                " AND state = 'streaming'",
                name=self.name,
            ),
            timeout,
        )

    def wait_replayed(self, timeout: float = 60, silent_for: float = 30) -> None:
        """Until the standby has replayed everything the primary has written so far: up to the
        insert position, since a commit with synchronous_commit off may not be written out yet
        (the WAL writer does within wal_writer_delay). On an idle primary whose WAL ends at a
        page boundary that position counts the next page's header, which nothing replays.
        A standby the primary has not seen streaming for `silent_for` seconds will not catch up:
        StandbyTimeout at once, rather than at the end of a long timeout."""
        target = sql_rows(self.primary, "SELECT pg_current_wal_insert_lsn()::text")[0][0]
        last_seen = time.monotonic()

        def replayed() -> bool:
            nonlocal last_seen
            if self.streams():
                last_seen = time.monotonic()
            elif time.monotonic() - last_seen > silent_for:
                raise StandbyTimeout(
                    f"standby {self.name} has not streamed for {silent_for:g} s"
                    f" (no row in the primary's pg_stat_replication); its log:"
                    f" {self.data_dir.parent / 'server.log'}"
                )
            return bool(
                self.sql(
                    "SELECT pg_wal_lsn_diff(CAST(:target AS pg_lsn), pg_last_wal_replay_lsn())"
                    " <= 40",
                    target=target,
                )[0][0]
            )

        _wait(f"standby {self.name} to replay up to {target}", replayed, timeout)

    def streams(self) -> bool:
        """Whether the primary sees this standby streaming (or catching up) now."""
        return bool(
            sql_rows(
                self.primary,
                "SELECT count(*) > 0 FROM pg_stat_replication"
                " WHERE application_name = :name AND state IN ('streaming', 'catchup')",
                name=self.name,
            )[0][0]
        )


@contextlib.contextmanager
def streaming_standby(
    primary: ThrowawayServer,
    name: str,
    *,
    rate: int = ZONE_LINK_RATE,
    synchronous: bool = False,
    apply_delay: str | None = None,
) -> Iterator[Standby]:
    as_user = server_os_user()
    # A physical slot keeps the WAL the standby still needs: a long write on a slow link would
    # otherwise outrun max_wal_size and leave the standby unable to go on.
    slot = "standby_" + "".join(c if c.isalnum() else "_" for c in name.lower())
    root = Path(tempfile.mkdtemp(prefix="standby-pg-"))
    data_dir, log_file = root / "data", root / "server.log"
    if as_user is not None:
        entry = pwd.getpwnam(as_user)
        os.chown(root, entry.pw_uid, entry.pw_gid)
    os.chmod(root, 0o700)
    started = made_synchronous = False
    try:
        with CappedRelay(primary.host, primary.port, rate) as relay:
            _base_backup(primary, data_dir, as_user, slot)
            # -R wrote the primary's own address; the standby streams through the relay instead
            # (the last setting in the file wins), and names itself.
            with (data_dir / "postgresql.auto.conf").open("a") as conf:
                conf.write(
                    f"primary_conninfo = 'host={primary.host} port={relay.port}"
                    f" user={primary.user} password={primary.password} application_name={name}'\n"
                )
            port = free_port()
            options = {
                **FAST_SETTINGS,
                "listen_addresses": "127.0.0.1",
                "port": str(port),
                "unix_socket_directories": str(root),
                "wal_receiver_status_interval": "1s",
            }
            start_server(primary.bin_dir, data_dir, log_file, options, as_user)
            started = True
            server = ThrowawayServer(
                "127.0.0.1", port, primary.user, primary.password, primary.bin_dir
            )
            standby = Standby(name, primary, server, data_dir, relay)
            if synchronous:
                made_synchronous = True
                _set_synchronous_standbys(primary, f'"{name}"')
            standby.wait_streaming()
            if apply_delay is not None:
                standby.delay_apply(apply_delay)
            yield standby
    finally:
        if made_synchronous:
            _set_synchronous_standbys(primary, None)
        if started:
            stop_server(primary.bin_dir, data_dir, as_user)
        sql_rows(
            primary,
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
            " WHERE slot_name = :slot",
            slot=slot,
        )
        shutil.rmtree(root, ignore_errors=True)


def _base_backup(primary: ThrowawayServer, data_dir: Path, as_user: str | None, slot: str) -> None:
    """pg_basebackup -R of the primary, straight (not through the relay: only the stream that
    follows is capped), as the user the standby runs as, creating the physical `slot` it
    streams from (-R names it in primary_slot_name)."""
    command = [
        "env",
        f"PGPASSWORD={primary.password}",
        str(pg_basebackup(primary.bin_dir)),
        "--pgdata",
        str(data_dir),
        "--host",
        primary.host,
        "--port",
        str(primary.port),
        "--username",
        primary.user,
        "--no-password",
        "--wal-method=stream",
        "--checkpoint=fast",
        "--write-recovery-conf",
        "--create-slot",
        f"--slot={slot}",
        "--no-sync",
    ]
    try:
        run_server_command(command, as_user)
    except ThrowawayPostgresError as error:
        raise ThrowawayPostgresError(f"pg_basebackup: {error}") from error


def _set_synchronous_standbys(primary: ThrowawayServer, names: str | None) -> None:
    if names is None:
        sql_rows(primary, "ALTER SYSTEM RESET synchronous_standby_names")
    else:
        sql_rows(primary, f"ALTER SYSTEM SET synchronous_standby_names = '{names}'")
    sql_rows(primary, "SELECT pg_reload_conf()")


def _wait(what: str, done: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise StandbyTimeout(f"gave up waiting for {what}")
        time.sleep(0.05)
