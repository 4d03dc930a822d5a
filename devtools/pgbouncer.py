"""A real PgBouncer in front of a ThrowawayServer, for tests that must meet a connection pooler.

Supabase puts PgBouncer (or Supavisor) in front of PostgreSQL; in transaction mode a server
connection is handed to another client after every transaction, so whatever a client leaves on
it at session level (SET, advisory locks, prepared statements, temp tables) leaks to the next
client. This starts Debian's `pgbouncer` binary (see devtools.postgres_binaries for where it comes
from) on a free 127.0.0.1 port with a small pool, so tests can force that reuse.

Authentication: `auth_type = scram-sha-256`; the server's superuser is in the auth_file, and every
other role is looked up with `auth_query` through that superuser, so roles that tests create
after PgBouncer started can log in without a reload (PgBouncer then logs in to the server with
the SCRAM keys the client proved, as Supabase's pooler does).

Like the server, PgBouncer refuses to run as root: as root it runs as the server's unprivileged
user. Its configuration lives in a temporary directory that is removed on exit.
"""

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import URL

from devtools.postgres_binaries import find_pgbouncer
from devtools.throwaway_postgres import (
    ThrowawayPostgresError,
    ThrowawayServer,
    free_port,
    server_os_user,
)

POOL_MODES = ("session", "transaction")
STARTUP_TIMEOUT_SECONDS = 15.0

# Deliberately small: two clients that take turns share one server connection, and a third
# concurrent transaction waits for a free one (default_pool_size per database and user pair).
DEFAULT_POOL_SIZE = 2


class PgBouncerUnavailable(ThrowawayPostgresError):
    """No pgbouncer binary here; tests that need one skip with this reason."""


@dataclass(frozen=True)
class PgBouncer:
    host: str
    port: int
    pool_mode: str
    server: ThrowawayServer
    config_dir: Path

    def url(
        self, database: str = "postgres", user: str | None = None, password: str | None = None
    ) -> URL:
        """A SQLAlchemy URL through PgBouncer; the server's superuser unless a user is given.

        database="pgbouncer" is PgBouncer's admin console (SHOW POOLS, SHOW SERVERS, ...) for
        the superuser."""
        if user is None:
            user, password = self.server.user, self.server.password
        return URL.create(
            "postgresql+psycopg2",
            username=user,
            password=password,
            host=self.host,
            port=self.port,
            database=database,
        )

    def url_string(
        self, database: str = "postgres", user: str | None = None, password: str | None = None
    ) -> str:
        return self.url(database, user, password).render_as_string(hide_password=False)


def pgbouncer_binary() -> Path:
    binary = find_pgbouncer()
    if binary is None:
        raise PgBouncerUnavailable(
            "pgbouncer not found: as root `apt-get install pgbouncer`; without root"
            " `python -m devtools.postgres_binaries --pgbouncer` (scripts/test.sh runs it) unpacks"
            " Debian's package into .cache, which needs apt's package lists (apt-get update)"
        )
    return binary


def _config(
    server: ThrowawayServer, config_dir: Path, port: int, pool_mode: str, settings: dict[str, str]
) -> str:
    options = {
        "listen_addr": "127.0.0.1",
        "listen_port": str(port),
        "unix_socket_dir": "",  # TCP only: nothing to clash with in /tmp
        "pool_mode": pool_mode,
        "default_pool_size": str(DEFAULT_POOL_SIZE),
        "min_pool_size": "0",
        "reserve_pool_size": "0",
        "max_client_conn": "200",
        "auth_type": "scram-sha-256",
        "auth_file": str(config_dir / "userlist.txt"),
        "auth_user": server.user,
        "auth_query": "SELECT usename, passwd FROM pg_catalog.pg_shadow WHERE usename = $1",
        "admin_users": server.user,
        # PgBouncer's defaults, spelled out because the migration's safety depends on them:
        # server_reset_query = DISCARD ALL runs when a client gives its server connection back
        # in session mode (dropping SETs, advisory locks, prepared statements and temp tables);
        # in transaction mode it is NOT run (server_reset_query_always = 0), so session state
        # a client leaves behind is seen by the next client of that server connection.
        "server_reset_query": "DISCARD ALL",
        "server_reset_query_always": "0",
        # As in most deployments: drivers that send it are not turned away.
        "ignore_startup_parameters": "extra_float_digits",
        **settings,
    }
    lines = ["[databases]", f"* = host={server.host} port={server.port}", "", "[pgbouncer]"]
    lines += [f"{name} = {value}" for name, value in options.items()]
    return "\n".join(lines) + "\n"


def _userlist(server: ThrowawayServer) -> str:
    # The auth_user's own password must be here; everyone else comes from auth_query.
    return f'"{server.user}" "{server.password}"\n'


def _give_to(user: str | None, paths: list[Path]) -> tuple[int, int] | None:
    """Hands the files to the unprivileged user PgBouncer runs as; its uid and gid."""
    if user is None:
        return None
    entry = pwd.getpwnam(user)
    for path in paths:
        os.chown(path, entry.pw_uid, entry.pw_gid)
    return entry.pw_uid, entry.pw_gid


def _wait_until_listening(process: subprocess.Popen, port: int, log_file: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    tail = log_file.read_text(errors="replace").strip().splitlines()[-5:]
    raise ThrowawayPostgresError("pgbouncer did not start: " + " | ".join(tail))


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def pgbouncer(
    server: ThrowawayServer, pool_mode: str = "transaction", settings: dict[str, str] | None = None
) -> Iterator[PgBouncer]:
    """A running PgBouncer in front of `server`; `settings` override pgbouncer.ini's options."""
    if pool_mode not in POOL_MODES:
        raise ValueError(f"pool_mode must be one of {POOL_MODES}, not {pool_mode!r}")
    binary = pgbouncer_binary()
    config_dir = Path(tempfile.mkdtemp(prefix="throwaway-pgbouncer-"))
    config_file, userlist, log_file = (
        config_dir / "pgbouncer.ini",
        config_dir / "userlist.txt",
        config_dir / "pgbouncer.log",
    )
    port = free_port()
    config_file.write_text(_config(server, config_dir, port, pool_mode, settings or {}))
    userlist.write_text(_userlist(server))
    os.chmod(config_dir, 0o700)
    ids = _give_to(server_os_user(), [config_dir, config_file, userlist])
    process = None
    try:
        with log_file.open("w") as log:
            process = subprocess.Popen(
                [str(binary), str(config_file)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                **({"user": ids[0], "group": ids[1], "extra_groups": []} if ids else {}),
            )
        _wait_until_listening(process, port, log_file)
        yield PgBouncer("127.0.0.1", port, pool_mode, server, config_dir)
    finally:
        if process is not None:
            _stop(process)
        shutil.rmtree(config_dir, ignore_errors=True)
