"""A throwaway PostgreSQL server in a temporary directory, for the demo, tests and benchmark.

The server binaries are found by devtools.postgres_binaries: PG_BIN_DIR, an initdb on PATH,
Debian's /usr/lib/postgresql/*/bin, or the project's cache of npm releases; PG_MAJOR (15, 17 or
18) asks for a major (scripts/bootstrap.sh fetches it when missing). initdb and pg_ctl refuse to
run as root, so as root the server runs as the unprivileged `postgres` (or `nobody`) user. It
listens on 127.0.0.1 only, with a random password, and everything is removed on exit.
"""

import contextlib
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL

from devtools import postgres_binaries

SUPERUSER = "postgres"

# Durability off: the data is thrown away anyway, and the tests and benchmark run faster.
FAST_SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "60",
    # Long enough that tests can find a statement by text in pg_stat_activity.
    "track_activity_query_size": "8192",
    "shared_buffers": "256MB",
    "maintenance_work_mem": "256MB",
}


class ThrowawayPostgresError(RuntimeError):
    pass


@dataclass(frozen=True)
class ThrowawayServer:
    host: str
    port: int
    user: str
    password: str
    bin_dir: Path

    def url(self, database: str = "postgres") -> URL:
        return URL.create(
            "postgresql+psycopg2",
            username=self.user,
            password=self.password,
            host=self.host,
            port=self.port,
            database=database,
        )

    def url_string(self, database: str = "postgres") -> str:
        return self.url(database).render_as_string(hide_password=False)

    @property
    def major(self) -> int:
        """The PostgreSQL major of this server's binaries (15, 17, ...)."""
        return postgres_binaries.binary_major(self.bin_dir)


def find_bin_dir() -> Path:
    """The server binaries to use: PG_BIN_DIR, else the first install of PG_MAJOR (else any)."""
    try:
        major = postgres_binaries.requested_major()
        bin_dir = postgres_binaries.find_server_bin_dir(major)
    except postgres_binaries.BinariesError as error:
        raise ThrowawayPostgresError(str(error)) from error
    if bin_dir is None:
        wanted = f"PostgreSQL {major}" if major else "PostgreSQL"
        raise ThrowawayPostgresError(
            f"{wanted} server binaries not found: `python -m devtools.postgres_binaries`"
            " fetches them (scripts/bootstrap.sh runs it; PG_MAJOR=17 for 17), or set PG_BIN_DIR"
        )
    return bin_dir


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def server_os_user() -> str | None:
    """None when we may run the server ourselves; otherwise the unprivileged user to run it as.

    PgBouncer refuses root as well, and runs as the same user."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    raise ThrowawayPostgresError("running as root, and no unprivileged user to run PostgreSQL as")


def run_server_command(
    command: list[str], as_user: str | None, log_file: Path | None = None
) -> None:
    if as_user is not None:
        command = ["runuser", "-u", as_user, "--", *command]
    result = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        if log_file is not None and log_file.exists():
            detail += log_file.read_text(errors="replace").strip().splitlines()[-5:]
        raise ThrowawayPostgresError(f"{Path(command[-1]).name} failed: " + " | ".join(detail))


@contextlib.contextmanager
def throwaway_postgres(settings: dict[str, str] | None = None) -> Iterator[ThrowawayServer]:
    bin_dir = find_bin_dir()
    as_user = server_os_user()
    root = Path(tempfile.mkdtemp(prefix="throwaway-pg-"))
    data_dir, password_file, log_file = root / "data", root / "pwfile", root / "server.log"
    password = secrets.token_urlsafe(18)
    password_file.write_text(password + "\n")
    if as_user is not None:
        entry = pwd.getpwnam(as_user)
        os.chown(root, entry.pw_uid, entry.pw_gid)
        os.chown(password_file, entry.pw_uid, entry.pw_gid)
    os.chmod(root, 0o700)
    started = False
    try:
        run_server_command(
            [
                str(bin_dir / "initdb"),
                "--pgdata",
                str(data_dir),
                "--username",
                SUPERUSER,
                "--pwfile",
                str(password_file),
                "--auth-host",
                "scram-sha-256",
                "--auth-local",
                "trust",
                "--encoding",
                "UTF8",
                "--no-instructions",
            ],
            as_user,
        )
        port = free_port()
        options = {
            **FAST_SETTINGS,
            **(settings or {}),
            "listen_addresses": "127.0.0.1",
            "port": str(port),
            "unix_socket_directories": str(root),
        }
        start_server(bin_dir, data_dir, log_file, options, as_user)
        started = True
        yield ThrowawayServer("127.0.0.1", port, SUPERUSER, password, bin_dir)
    finally:
        if started:
            stop_server(bin_dir, data_dir, as_user)
        shutil.rmtree(root, ignore_errors=True)


def start_server(
    bin_dir: Path, data_dir: Path, log_file: Path, options: dict[str, str], as_user: str | None
) -> None:
    """Starts the server of data_dir with these settings, and waits until it takes connections."""
    option_text = " ".join(f"-c {name}={value}" for name, value in options.items())
    run_server_command(
        [
            str(bin_dir / "pg_ctl"),
            "--pgdata",
            str(data_dir),
            "--log",
            str(log_file),
            "--options",
            option_text,
            "--wait",
            "--timeout",
            "60",
            "start",
        ],
        as_user,
        log_file,
    )


def stop_server(bin_dir: Path, data_dir: Path, as_user: str | None) -> None:
    with contextlib.suppress(ThrowawayPostgresError):
        run_server_command(
            [str(bin_dir / "pg_ctl"), "--pgdata", str(data_dir), "-m", "immediate", "stop"],
            as_user,
        )


def sql_rows(server: ThrowawayServer, statement: str, database: str = "postgres", **params):
    """Run `statement` on `database` of `server` as its superuser, in autocommit; rows, if any."""
    engine = create_engine(server.url(database), isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            result = connection.execute(text(statement), params)
            return list(result) if result.returns_rows else []
    finally:
        engine.dispose()
