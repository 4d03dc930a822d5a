"""`supabase db push` (the real CLI, npm's supabase at the version devtools/supabase_cli.py
pins) of the file `python -m app.supabase_migration` writes: it converges every starting state
to where `alembic upgrade head` ends; the same content as a second file changes nothing and is
recorded; after the SQL editor ran the blocking form, a push completes and is recorded; a lock
timeout stops a push, and the next push completes it."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from app.names import CANONICAL_UNIQUE_NAME
from devtools import supabase_cli
from devtools.starting_states import STATES
from tests.offline_support import (
    BLOCKING,
    offline_script,
    one_query,
    online_at_head,
    snapshot,
    without_guard_steps,
)
from tests.online_support import holding
from tests.support import BASELINE, HEAD, PROJECT_ROOT

FIRST = "20260125100000"
AGAIN = "20260125100001"
FILE_NAME = re.compile(r"^\d{14}_meta_assets_cache_unique_ws_phone\.sql$")


@pytest.fixture(scope="session")
def cli() -> Path:
    found = supabase_cli.find()
    if found is None:
        message = (
            f"the Supabase CLI {supabase_cli.VERSION} is not installed:"
            " python -m devtools.supabase_cli (scripts/test.sh runs it)"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


def write_migration(directory: Path, *arguments: str) -> subprocess.CompletedProcess:
    """`python -m app.supabase_migration`, as documented, from the project root."""
    return subprocess.run(
        [sys.executable, "-m", "app.supabase_migration", "--directory", str(directory), *arguments],
        cwd=PROJECT_ROOT,
        env={key: value for key, value in os.environ.items() if key != "DATABASE_URL"},
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture(scope="module")
def migration_file(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("written") / "supabase" / "migrations"
    result = write_migration(directory, "--timestamp", FIRST)
    assert result.returncode == 0, result.stderr
    (path,) = directory.iterdir()
    assert result.stdout.strip() == str(path)
    return path


class Project:
    """A Supabase project directory holding migration files, pushed with the CLI."""

    def __init__(self, root: Path, cli: Path) -> None:
        self.root, self.cli = root, cli
        self.migrations = root / "supabase" / "migrations"
        self.migrations.mkdir(parents=True)

    def add(self, version: str, content: str) -> None:
        (self.migrations / f"{version}_meta_assets_cache_unique_ws_phone.sql").write_text(content)

    def push(self, harness) -> subprocess.CompletedProcess:
        url = harness.url.replace("+psycopg2", "") + "?sslmode=disable"
        return subprocess.run(
            [str(self.cli), "db", "push", "--db-url", url, "--yes"],
            cwd=self.root,
            env=supabase_cli.quiet_env(self.root),
            capture_output=True,
            text=True,
            timeout=180,
            stdin=subprocess.DEVNULL,
        )


@pytest.fixture
def project(tmp_path, cli) -> Project:
    return Project(tmp_path / "project", cli)


def recorded(harness) -> list[str]:
    if not harness.scalar(
        "SELECT to_regclass('supabase_migrations.schema_migrations') IS NOT NULL"
    ):
        return []
    return [
        row[0]
        for row in harness.rows(
            "SELECT version FROM supabase_migrations.schema_migrations ORDER BY 1"
        )
    ]


def test_the_command_writes_a_supabase_migration_file_that_says_its_locks(migration_file, tmp_path):
    assert FILE_NAME.match(migration_file.name)
    text = migration_file.read_text()
    header = text.split("\n\n", 1)[0]
    for said in ("supabase db push", "SHARE ROW EXCLUSIVE", "ACCESS EXCLUSIVE", "writes wait"):
        assert said in header
    assert "CONCURRENT form" in text
    assert "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS" in text

    blocking = write_migration(tmp_path, "--blocking")
    assert blocking.returncode == 0, blocking.stderr
    (written,) = tmp_path.iterdir()
    assert FILE_NAME.match(written.name)
    assert "BLOCKING form" in written.read_text()
    assert "s per GB of table" in written.read_text().split("\n\n", 1)[0]

    again = write_migration(tmp_path, "--timestamp", written.name[:14])
    assert again.returncode == 1
    assert again.stderr.startswith("FAILED: ") and "exists already" in again.stderr


@pytest.mark.parametrize("state", STATES)
def test_db_push_converges_and_the_same_file_again_changes_nothing(
    state, harness, project, migration_file
):
    """Two files of the same content in one push: the first ends where `alembic upgrade head`
    ends, the second (after the CLI's RESET ALL) changes nothing; both are recorded."""
    harness.build_state(state)
    project.add(FIRST, migration_file.read_text())
    project.add(AGAIN, migration_file.read_text())

    pushed = project.push(harness)

    assert pushed.returncode == 0, pushed.stderr
    assert snapshot(harness) == online_at_head(harness, state)
    assert recorded(harness) == [FIRST, AGAIN]


@pytest.mark.parametrize("state", STATES)
def test_the_sql_editor_first_then_db_push(state, harness, project, migration_file):
    harness.build_state(state)
    error, _ = one_query(harness, offline_script(*BLOCKING, "upgrade", "head"))
    assert error is None
    project.add(FIRST, migration_file.read_text())

    pushed = project.push(harness)

    assert pushed.returncode == 0, pushed.stderr
    assert recorded(harness) == [FIRST]
    assert without_guard_steps(snapshot(harness)) == without_guard_steps(
        online_at_head(harness, state)
    )


def test_a_lock_timeout_in_the_second_revision_is_completed_by_the_next_push(
    harness, project, migration_file
):
    """An app transaction holds the table: the guard's lock times out, the baseline stays
    committed, the file is not recorded; once the app lets go, the next push completes it."""
    harness.build_state("drifted")
    project.add(FIRST, migration_file.read_text())
    app = holding(harness, "UPDATE public.meta_assets_cache SET last_error = last_error")
    try:
        stopped = project.push(harness)
    finally:
        app.close()

    assert stopped.returncode != 0
    assert "lock timeout" in stopped.stderr
    assert harness.version() == BASELINE
    assert recorded(harness) == []
    assert harness.guard_exists() is False

    pushed = project.push(harness)

    assert pushed.returncode == 0, pushed.stderr
    assert harness.version() == HEAD
    assert recorded(harness) == [FIRST]
    assert [u.index_name for u in harness.pair_uniques()] == [CANONICAL_UNIQUE_NAME]
    assert snapshot(harness) == online_at_head(harness, "drifted")
