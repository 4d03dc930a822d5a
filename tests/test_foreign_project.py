"""The library used by another project, installed from its wheel into a fresh virtual
environment.

The shop (tests/projects/shop, copied into a temporary directory) is a separate Alembic
project: its own env.py (Alembic's usual template plus the one run_migrations call, opted in to
safe autogenerate), Alembic's async template beside it (migrations/env_async.py), its own
top-level `app/` package and its own revisions 0001 (orders and their lines) and 0002
(op.ensure_unique_constraint on orders); one test autogenerates a 0003. The wheel is built from
this repository once per session and installed, with its psycopg2, asyncpg and psycopg-async
extras and the shop's test tools, into a new virtual environment; every command runs with that
environment's Python, in the shop's directory, as its developers would run it.
"""

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import zipfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

import alembic_lossless_unique
from alembic_lossless_unique.operations.ops import target_from_arguments
from alembic_lossless_unique.runtime.locks import MIGRATOR_LOCK_KEY
from tests.offline_support import run_psql
from tests.online_support import (
    Migrator,
    Session,
    build_phase,
    holding,
    libpq_dsn,
    wait_until,
)
from tests.support import (
    MIGRATOR,
    PROJECT_ROOT,
    AlembicResult,
    MigrationHarness,
    failed_lines,
    run_child,
    through,
)
from tests.test_bad_input import assert_failed_cleanly

# What these prove does not depend on the server's major (scripts/test.sh: one major only).
pytestmark = pytest.mark.any_major

TEMPLATE = Path(__file__).resolve().parent / "projects" / "shop"
# What the shop's revision 0002 passes to ensure_unique_constraint (the default private schema).
ORDERS_UNIQUE = target_from_arguments(
    "orders_customer_id_number_key",
    "orders",
    ["customer_id", "number"],
    keep_newest_by=["updated_at"],
)
SHOP_HEAD, SHOP_BASE = "0002", "0001"
# Not copied into the wheel's build: caches, environments, and what an earlier build left.
NOT_SOURCE = shutil.ignore_patterns(
    ".git",
    ".venv",
    ".venv-*",
    ".cache",
    ".ruff_cache",
    ".mypy_cache",
    ".pytest_cache",
    "__pycache__",
    "*.egg-info",
    "build",
)
# What the shop installs beside the wheel: its driver (as an extra) and its own test tools.
SHOP_TOOLS = ("pytest>=8,<9.1", "pytest-alembic>=0.12")
# The drivers it installs, as the library's extras: psycopg2 for its env.py, the async ones for
# Alembic's async template (migrations/env_async.py).
SHOP_DRIVERS = ("psycopg2", "asyncpg", "psycopg-async")


@dataclass(frozen=True)
class InstalledPackage:
    wheel: Path
    python: Path  # the fresh virtual environment's interpreter


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, **kwargs)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.fixture(scope="session")
def installed_package(tmp_path_factory) -> InstalledPackage:
    """`pip wheel --no-deps` of this repository, then a new virtual environment with the wheel
    and its psycopg2 extra installed from it. The wheel is built from a copy of the working
    tree, so the build leaves nothing (build/, *.egg-info) in the repository."""
    root = tmp_path_factory.mktemp("installed_package")
    source = root / "source"
    shutil.copytree(PROJECT_ROOT, source, ignore=NOT_SOURCE)
    pip = ["-m", "pip", "--disable-pip-version-check", "--no-input", "-q"]
    run(
        [sys.executable, *pip, "wheel", "--no-deps", "--wheel-dir", str(root / "dist"), str(source)]
    )
    [wheel] = (root / "dist").glob("*.whl")
    run([sys.executable, "-m", "venv", str(root / "venv")])
    python = root / "venv" / "bin" / "python"
    run([str(python), *pip, "install", f"{wheel}[{','.join(SHOP_DRIVERS)}]", *SHOP_TOOLS])
    return InstalledPackage(wheel=wheel, python=python)


@dataclass
class Shop:
    directory: Path
    python_path: Path
    harness: MigrationHarness
    database_url: str = ""  # the harness's (psycopg2) unless set

    def environment(self, *, database: bool = True) -> dict[str, str]:
        """The test's environment without this repository on the path and without the test
        run's own pytest settings."""
        env = {
            key: value
            for key, value in os.environ.items()
            if key not in ("DATABASE_URL", "PYTHONPATH", "VIRTUAL_ENV")
            and not key.startswith("PYTEST_")
        }
        if database:
            env["DATABASE_URL"] = self.database_url or self.harness.url
        return env

    def python(self, *args: str, database: bool = True) -> AlembicResult:
        return run_child(
            [str(self.python_path), *args],
            cwd=self.directory,
            env=self.environment(database=database),
            timeout=300,
        )

    def alembic(self, *args: str, database: bool = True) -> AlembicResult:
        return self.python("-m", "alembic", *args, database=database)

    def start(self, *args: str) -> Migrator:
        """`alembic ARGS` in the shop, in a child process that runs on while the test acts."""
        process = subprocess.Popen(
            [str(self.python_path), "-m", "alembic", *args],
            cwd=self.directory,
            env=self.environment(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        return Migrator(process)

    def succeed(self, *args: str) -> AlembicResult:
        result = self.alembic(*args)
        assert result.returncode == 0, result.output
        return result

    def versions(self) -> set[str]:
        if not self.harness.scalar("SELECT to_regclass('public.alembic_version') IS NOT NULL"):
            return set()
        return {row[0] for row in self.harness.rows("SELECT version_num FROM alembic_version")}


@pytest.fixture
def shop(tmp_path, installed_package, harness) -> Shop:
    directory = tmp_path / "shop"
    shutil.copytree(TEMPLATE, directory, ignore=shutil.ignore_patterns("__pycache__"))
    return Shop(directory, installed_package.python, harness)


# 1. The wheel, and what the shop imports from it.


def wheel_metadata(wheel: Path) -> tuple[list[str], str]:
    archive = zipfile.ZipFile(wheel)
    [metadata] = [name for name in archive.namelist() if name.endswith(".dist-info/METADATA")]
    return archive.namelist(), archive.read(metadata).decode()


def test_the_wheel_is_the_library_alone_typed_versioned_and_licensed(installed_package):
    """One distribution, alembic_lossless_unique alone: no app, no tests, no dev tools, no
    migrations of this repository; typed (py.typed); its version is the package's own; it
    requires alembic and SQLAlchemy only, and each driver is an extra; MIT, with the
    repository's LICENSE in its dist-info and the project's URLs."""
    names, metadata = wheel_metadata(installed_package.wheel)
    top_level = {
        name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")
    }
    assert top_level == {"alembic_lossless_unique"}
    assert "alembic_lossless_unique/py.typed" in names
    headers = [line for line in metadata.splitlines() if ": " in line]
    assert "Name: alembic-lossless-unique" in headers
    assert f"Version: {alembic_lossless_unique.__version__}" in headers
    requires = sorted(
        line.split(": ", 1)[1] for line in headers if line.startswith("Requires-Dist")
    )
    unconditional = [r for r in requires if "extra ==" not in r]
    assert [r.split(">")[0].split("<")[0].lower() for r in unconditional] == [
        "alembic",
        "sqlalchemy",
    ]
    extras = {r.split('extra == "')[1].rstrip('"') for r in requires if "extra ==" in r}
    assert extras == {"psycopg2", "psycopg", "psycopg-async", "asyncpg"}
    assert "License-Expression: MIT" in headers
    assert "License-File: LICENSE" in headers
    dist_info = f"alembic_lossless_unique-{alembic_lossless_unique.__version__}.dist-info"
    with zipfile.ZipFile(installed_package.wheel) as archive:
        shipped_license = archive.read(f"{dist_info}/licenses/LICENSE").decode()
    assert shipped_license == (PROJECT_ROOT / "LICENSE").read_text()
    assert shipped_license.startswith("MIT License\n")
    urls = dict(
        line.split(": ", 1)[1].split(", ", 1) for line in headers if line.startswith("Project-URL")
    )
    assert set(urls) == {"Homepage", "Documentation", "Changelog", "Issues"}
    assert all(
        url.startswith(urls["Homepage"] + "/") for name, url in urls.items() if name != "Homepage"
    )


WHERE_THINGS_COME_FROM = """
import json, sys
import alembic_lossless_unique, app
print(json.dumps({
    "alembic_lossless_unique": alembic_lossless_unique.__file__,
    "app": app.__file__,
    "drivers_imported": sorted(
        name for name in ("psycopg2", "psycopg", "asyncpg") if name in sys.modules
    ),
}))
"""


def test_shop_imports_the_installed_library_and_its_own_app(shop, installed_package):
    """In the shop's environment the library comes from the installed wheel, `app` is the
    shop's own package, and importing the library imports no driver."""
    result = shop.python("-c", WHERE_THINGS_COME_FROM, database=False)
    assert result.returncode == 0, result.output
    found = json.loads(result.stdout)
    environment = installed_package.python.parent.parent.resolve()
    assert Path(found["alembic_lossless_unique"]).resolve().is_relative_to(environment)
    assert not Path(found["alembic_lossless_unique"]).resolve().is_relative_to(PROJECT_ROOT)
    assert Path(found["app"]).resolve() == (shop.directory / "app" / "__init__.py").resolve()
    assert found["drivers_imported"] == []


# 2. Upgrade, check, the summary, and the downgrade.


def orders(harness: MigrationHarness) -> dict[int, str]:
    return {row[0]: row[1] for row in harness.rows("SELECT o.id, o::text FROM orders o")}


def order_lines(harness: MigrationHarness) -> dict[int, str]:
    return {row[0]: row[1] for row in harness.rows("SELECT l.id, l::text FROM order_lines l")}


ORDERS = """
INSERT INTO orders (customer_id, number, status, updated_at) VALUES
    (1, 'A-1', 'new',     '2026-01-01'),  -- 1: older
    (1, 'A-1', 'paid',    '2026-02-01'),  -- 2: kept (newest)
    (1, 'A-1', 'new',     '2026-01-15'),  -- 3
    (1, 'A-2', 'new',     '2026-01-01'),  -- 4: tie on updated_at
    (1, 'A-2', 'shipped', '2026-01-01'),  -- 5: kept (greatest id of the tie)
    (2, 'A-1', 'new',     '2026-01-01'),  -- 6: alone
    (1, NULL,  'draft',   '2026-01-01'),  -- 7: drafts have no number and never conflict
    (1, NULL,  'draft',   '2026-01-01')   -- 8
"""
ORDER_LINES = """
INSERT INTO order_lines (order_id, product, quantity) VALUES
    (1, 'tea', 1), (2, 'cups', 2), (3, 'tray', 1), (4, 'milk', 3), (7, 'sugar', 1)
"""


def newest_of_each_number(harness: MigrationHarness) -> set[int]:
    """Of each (customer_id, number), the greatest by updated_at then id, computed here."""
    groups = defaultdict(list)
    for row in harness.rows("SELECT id, customer_id, number, updated_at FROM orders"):
        if row.number is not None:
            groups[(row.customer_id, row.number)].append(row)
    return {max(group, key=lambda r: (r.updated_at, r.id)).id for group in groups.values()}


def shop_plan(shop: Shop) -> dict:
    """`python -m alembic_lossless_unique plan --json` in the shop, with no argument of its own."""
    result = shop.python("-m", "alembic_lossless_unique", "plan", "--json")
    assert result.returncode == 0 and not failed_lines(result), result.output
    return json.loads(result.stdout)


def test_upgrade_check_and_downgrade(shop, harness):
    """The plan of `upgrade head` names what it will archive and re-point, and wrote nothing;
    `alembic upgrade head` with its fingerprint runs the shop's revisions: its duplicate orders
    are archived (the
    newest of each number kept, drafts untouched, lines re-pointed to the kept order), the
    summary reaches stderr, `alembic check` is clean against the shop's models, a second run
    says "nothing to do" in one line; the downgrade brings the shop's orders and lines back
    byte for byte, and the schema is as pg_dump saw it before."""
    shop.succeed("upgrade", SHOP_BASE)
    harness.execute(ORDERS)
    harness.execute(ORDER_LINES)
    orders_before, lines_before = orders(harness), order_lines(harness)
    schema_before = harness.schema_dump()
    kept = newest_of_each_number(harness)
    assert kept == {2, 5, 6}

    planned = shop_plan(shop)
    assert harness.schema_dump() == schema_before  # the plan wrote nothing
    [operation] = planned["operations"]
    assert (operation["revision"], operation["operation"], operation["table"]) == (
        SHOP_HEAD,
        "ensure_unique_constraint",
        "public.orders",
    )
    assert operation["hazards"] == [
        "ARCHIVES_ROWS",
        "REPOINTS_CHILD_ROWS",
        "BUILDS_INDEX_CONCURRENTLY",
        "TAKES_STRONG_LOCKS",
    ]
    assert operation["preflight"]["rows_to_archive"] == 3
    assert [fk["rows_to_repoint"] for fk in operation["preflight"]["foreign_keys"]] == [3]

    upgraded = shop.succeed("-x", f"expect_plan={planned['fingerprint']}", "upgrade", "head")

    assert shop.versions() == {SHOP_HEAD}
    assert (
        "unique constraint orders_customer_id_number_key on public.orders (customer_id, number):"
        " done in" in upgraded.stderr
    )
    assert f"rows archived     3 (moved to {ORDERS_UNIQUE.archive})" in upgraded.stderr
    assert set(orders(harness)) == kept | {7, 8}
    assert all(orders(harness)[i] == orders_before[i] for i in kept | {7, 8})
    archived = {
        row.id: row.kept_id for row in harness.rows(f"SELECT * FROM {ORDERS_UNIQUE.archive}")
    }
    assert archived == {1: 2, 3: 2, 4: 5}
    lines = {row.product: row.order_id for row in harness.rows("SELECT * FROM order_lines")}
    assert lines == {"tea": 2, "cups": 2, "tray": 2, "milk": 5, "sugar": 7}

    checked = shop.succeed("check")
    assert "No new upgrade operations detected." in checked.output

    again = shop.succeed("upgrade", "head")
    assert [line for line in again.stderr.splitlines() if "nothing to do" in line] == [
        f"INFO  [alembic_lossless_unique] nothing to do: the database is at {SHOP_HEAD}"
    ]
    assert "Running upgrade" not in again.output

    shop.succeed("downgrade", "-1")
    assert shop.versions() == {SHOP_BASE}
    assert orders(harness) == orders_before
    assert order_lines(harness) == lines_before
    assert harness.schema_dump() == schema_before

    shop.succeed("downgrade", "base")
    assert shop.versions() == set()
    assert harness.scalar("SELECT to_regclass('public.orders') IS NULL")


SMALLEST_ENV = """
from alembic import context

from alembic_lossless_unique import run_migrations
from app.models import Base

run_migrations(context, target_metadata=Base.metadata)
"""


def test_check_with_the_smallest_env_is_clean(shop):
    """The shop with the smallest env.py (the one call and its own models, no autogenerate
    filters): its plan from an empty database finds the table its first revision creates
    missing; after `upgrade head`, `alembic check` finds nothing; in particular it does not
    propose dropping the version table."""
    (shop.directory / "migrations" / "env.py").write_text(SMALLEST_ENV)
    planned = shop_plan(shop)
    assert planned["pending_revisions"] == [SHOP_BASE, SHOP_HEAD]
    assert [operation["hazards"] for operation in planned["operations"]] == [["TABLE_MISSING"]]
    shop.succeed("upgrade", "head")

    checked = shop.alembic("check")

    assert checked.returncode == 0, checked.output
    assert "No new upgrade operations detected." in checked.output


# 3. The migrator's session from the one call: one-line failures, the migrator lock.


def test_a_bad_setting_fails_in_one_line_before_anything_changes(shop, harness):
    """A bad -x setting stops `upgrade head` with exactly one FAILED: line naming it, no
    traceback, and nothing created."""
    result = shop.alembic("-x", "lock_timeout=soon", "upgrade", "head")

    assert result.returncode != 0
    assert failed_lines(result) == [
        "FAILED: lock_timeout='soon' is not a duration: use e.g. 500ms, 2s or 10min"
    ]
    assert "Traceback" not in result.output
    assert shop.versions() == set()
    assert harness.scalar("SELECT to_regclass('public.orders') IS NULL")


def test_the_migrator_lock_holds_off_a_second_migrator(shop, harness):
    """While another session holds the migrator lock, the shop's `upgrade head` waits for it
    (up to -x migrator_wait), then gives up in one FAILED: line, having changed nothing."""
    other = Session(libpq_dsn(harness.url))
    try:
        other.run("SELECT pg_advisory_lock(%s, %s)", *MIGRATOR_LOCK_KEY)
        result = shop.alembic("-x", "migrator_wait=1s", "upgrade", "head")
    finally:
        other.close()

    assert result.returncode != 0
    [failed] = failed_lines(result)
    assert "another migrator has held the migrator lock of this database for over 1 s" in failed
    assert shop.versions() == set()


# 4. Offline: the same revisions as one script for psql.


def test_offline_upgrade_applies_with_psql(shop, harness):
    """`alembic upgrade head --sql`, written without a database and run with psql on an empty
    one, reaches the head: the shop's tables with their unique constraint. Run again, its own
    revisions' plain Alembic operations (op.create_table) are skipped as the library's are."""
    script = shop.alembic("upgrade", "head", "--sql", database=False)
    assert script.returncode == 0, script.stderr

    applied = run_psql(harness, script.stdout)

    assert applied.returncode == 0, applied.stderr
    assert shop.versions() == {SHOP_HEAD}
    assert harness.scalar(
        "SELECT count(*) FROM pg_constraint WHERE conname = 'orders_customer_id_number_key'"
    )
    schema = harness.schema_dump()
    again = run_psql(harness, script.stdout)
    assert again.returncode == 0, again.stderr
    assert again.stderr.count("skipped upgrade") == 2
    assert harness.schema_dump() == schema


# 5. pytest-alembic's standard tests, run in the shop by its own pytest.


def test_pytest_alembic_checks_pass_in_the_shop(shop):
    """The shop's own `pytest` (its conftest.py gives pytest-alembic its alembic.ini and the
    database) passes pytest-alembic's standard tests."""
    result = shop.python("-m", "pytest", "-v", "--tb=short")
    print(result.output)  # the shop's own test report, shown with this test's outcome

    shop_pytest_exit_code = result.returncode
    assert shop_pytest_exit_code == 0, "the shop's own pytest failed: its report is above"
    for test in SHOP_PYTEST_ALEMBIC_TESTS:
        assert f"conftest.py::pytest-alembic::{test} PASSED" in result.stdout


SHOP_PYTEST_ALEMBIC_TESTS = (
    "test_single_head_revision",
    "test_upgrade",
    "test_model_definitions_match_ddl",
    "test_up_down_consistency",
    "test_downgrade_leaves_no_trace",
)


# 6. Autogenerate writes the safe operation (the shop's env.py opts in with one argument).

# A unique constraint added to a model of an existing table, and a new table with its own.
ORDER_LINE_UNIQUE = """    __tablename__ = "order_lines"
    __table_args__ = (
        UniqueConstraint("order_id", "product", name="order_lines_order_id_product_key"),
    )
"""
NEW_TABLE = """

class Coupon(Base):
    __tablename__ = "coupons"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    code: Mapped[str] = mapped_column(Text, unique=True)
"""
UNIQUE_ORDERS = """
INSERT INTO orders (customer_id, number) VALUES (1, 'B-1'), (1, 'B-2'), (2, 'B-1')
"""
DUPLICATE_LINES = """
INSERT INTO order_lines (order_id, product, quantity)
SELECT o.id, p.product, p.quantity FROM orders o, (VALUES
    ('tea', 1), ('tea', 2), ('tea', 3),  -- the same product three times on every order
    ('cups', 1), ('cups', 4),
    ('tray', 1)
) AS p (product, quantity)
"""


def order_lines_call(operation: str) -> str:
    """The call autogenerate writes for the order lines' unique constraint."""
    return f"""\
    op.{operation}(
        'order_lines_order_id_product_key',
        'order_lines',
        ['order_id', 'product'],
        keep_newest_by=[],
        row_identity=['id'],
        private_schema='lossless_unique',
    )
"""


ENSURE_ORDER_LINES = """\
    # Duplicates of (order_id, product): the row kept is the greatest by keep_newest_by, then by
    # row_identity (here: the greatest id); the others move to an archive in private_schema, and
    # undo_unique_constraint brings them back.
""" + order_lines_call("ensure_unique_constraint")
UNDO_ORDER_LINES = order_lines_call("undo_unique_constraint")


def add_to_models(shop: Shop) -> None:
    models = shop.directory / "app" / "models.py"
    source = models.read_text()
    assert '    __tablename__ = "order_lines"\n' in source
    models.write_text(
        source.replace('    __tablename__ = "order_lines"\n', ORDER_LINE_UNIQUE) + NEW_TABLE
    )


def body_of(source: str, function: str) -> str:
    """The text of `def function():` in a revision file, up to the next top-level line."""
    start = source.index(f"def {function}()")
    rest = source[start:].split("\n", 1)[1]
    lines = []
    for line in rest.splitlines():
        if line and not line.startswith(" "):
            break
        lines.append(line)
    return "\n".join(lines) + "\n"


def lines_of_each_product(harness: MigrationHarness) -> dict[int, str]:
    return {
        row[0]: row[1]
        for row in harness.rows("SELECT l.id, l::text FROM order_lines l ORDER BY l.id")
    }


def test_autogenerate_writes_the_safe_operation_and_it_runs_online(shop, harness):
    """A UniqueConstraint added to the model of an existing table: `alembic revision
    --autogenerate` writes ensure_unique_constraint (spelling out the row kept) in upgrade() and
    undo_unique_constraint in downgrade(), imports the library, and keeps the plain form for a
    table created in the same revision. `alembic check` lists the pending constraint; the
    revision then runs on a table with duplicates while a writer inserts, every write passes,
    the greatest id of each duplicate group stays, `alembic check` is clean, and the downgrade
    gives back every row and the schema exactly."""
    shop.succeed("upgrade", "head")
    harness.execute(UNIQUE_ORDERS)
    harness.execute(DUPLICATE_LINES)
    add_to_models(shop)
    pending = shop.alembic("check")
    assert pending.returncode != 0
    assert "('add_constraint', UniqueConstraint(" in pending.output
    assert "('add_table', Table('coupons'" in pending.output

    shop.succeed("revision", "--autogenerate", "--rev-id", "0003", "-m", "one line per product")

    [revision] = (shop.directory / "migrations" / "versions").glob("0003_*.py")
    source = revision.read_text()
    print(f"--- {revision.name}, as autogenerate wrote it\n{source}")
    assert "\nimport alembic_lossless_unique\n" in source
    assert "create_unique_constraint" not in source
    upgrade, downgrade = body_of(source, "upgrade"), body_of(source, "downgrade")
    assert ENSURE_ORDER_LINES in upgrade
    assert "op.create_table('coupons'" in upgrade and "sa.UniqueConstraint('code')" in upgrade
    assert UNDO_ORDER_LINES in downgrade
    assert "op.drop_table('coupons')" in downgrade
    assert "drop_constraint" not in downgrade

    lines_before, schema_before = lines_of_each_product(harness), harness.schema_dump()
    kept = {
        row[0] for row in harness.rows("SELECT max(id) FROM order_lines GROUP BY order_id, product")
    }
    written, errors, stop = [], [], threading.Event()

    def write() -> None:
        app = Session(libpq_dsn(harness.url), options="-c statement_timeout=8s")
        try:
            while not stop.is_set():
                try:
                    written.extend(
                        row[0]
                        for row in app.run(
                            "INSERT INTO order_lines (order_id, product, quantity)"
                            " SELECT min(id), 'writer ' || clock_timestamp(), 1 FROM orders"
                            " RETURNING id"
                        )
                    )
                except Exception as error:  # any failed write fails the test
                    errors.append(f"{type(error).__name__}: {error}")
                time.sleep(0.005)
        finally:
            app.close()

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    try:
        wait_until("the writer to start", lambda: written)
        before_upgrade = len(written)
        upgraded = shop.alembic("upgrade", "head")
        during = len(written) - before_upgrade
    finally:
        stop.set()
        writer.join(timeout=30)

    assert upgraded.returncode == 0, upgraded.output
    assert errors == []
    assert during > 0, "the writer wrote nothing while the upgrade ran"
    assert shop.versions() == {"0003"}
    lines_after = lines_of_each_product(harness)
    assert set(lines_after) == kept | set(written)
    assert all(lines_after[i] == lines_before[i] for i in kept)
    archive = "lossless_unique.order_lines_order_id_product_key_archive"
    assert {row[0] for row in harness.rows(f"SELECT id FROM {archive}")} == set(lines_before) - kept
    checked = shop.succeed("check")
    assert "No new upgrade operations detected." in checked.output

    shop.succeed("downgrade", "-1")
    assert shop.versions() == {SHOP_HEAD}
    assert lines_of_each_product(harness) == {
        **lines_before,
        **{i: lines_after[i] for i in written},
    }
    assert harness.schema_dump() == schema_before


def test_autogenerate_passes_the_constraints_options_through(shop, harness):
    """The model's UniqueConstraint with deferrable, initially, postgresql_include and
    postgresql_nulls_not_distinct: autogenerate writes them into both operations, the upgrade
    ends with the constraint those options make, `alembic check` is clean, and the downgrade
    gives back the schema exactly."""
    shop.succeed("upgrade", "head")
    harness.execute(UNIQUE_ORDERS)
    harness.execute(DUPLICATE_LINES)
    models = shop.directory / "app" / "models.py"
    models.write_text(
        models.read_text().replace(
            '    __tablename__ = "order_lines"\n',
            ORDER_LINE_UNIQUE.replace(
                'name="order_lines_order_id_product_key"',
                'name="order_lines_order_id_product_key", deferrable=True, initially="DEFERRED",'
                ' postgresql_include=["quantity"], postgresql_nulls_not_distinct=True',
            ),
        )
    )
    shop.succeed("revision", "--autogenerate", "--rev-id", "0003", "-m", "options")
    [revision] = (shop.directory / "migrations" / "versions").glob("0003_*.py")
    upgrade, downgrade = (body_of(revision.read_text(), name) for name in ("upgrade", "downgrade"))
    options = (
        "        deferrable=True,\n        initially='DEFERRED',\n"
        "        postgresql_include=['quantity'],\n        postgresql_nulls_not_distinct=True,\n"
    )
    assert options in upgrade and options in downgrade
    schema_before = harness.schema_dump()

    shop.succeed("upgrade", "head")

    assert harness.scalar(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint"
        " WHERE conname = 'order_lines_order_id_product_key'"
    ) == (
        "UNIQUE NULLS NOT DISTINCT (order_id, product) INCLUDE (quantity)"
        " DEFERRABLE INITIALLY DEFERRED"
    )
    assert "No new upgrade operations detected." in shop.succeed("check").output

    shop.succeed("downgrade", "-1")

    assert harness.schema_dump() == schema_before


# A functional unique index and a partial one, added to the model of the existing orders.
UNIQUE_INDEXES = """

from sqlalchemy import Index, func

Index("orders_number_lower_key", func.lower(Order.number), unique=True)
# One order in the making per customer.
Index(
    "orders_one_new_per_customer_key",
    Order.customer_id,
    unique=True,
    postgresql_where=Order.status == "new",
)
"""
ORDERS_FOR_INDEXES = """
INSERT INTO orders (customer_id, number, status) VALUES
    (1, 'C-1', 'paid'),   -- 1: archived: the same number as 2 in lower case
    (2, 'c-1', 'paid'),   -- 2: kept (the greatest id of lower(number) 'c-1')
    (3, 'C-2', 'new'),    -- 3: archived: customer 3's second new order is 4
    (3, 'C-3', 'new'),    -- 4: kept
    (3, 'C-4', 'paid'),   -- 5: outside the predicate, untouched
    (4, NULL,  'draft'),  -- 6, 7: a NULL number never conflicts, and drafts are not new
    (4, NULL,  'draft');
INSERT INTO order_lines (order_id, product, quantity) VALUES (1, 'tea', 1), (3, 'cups', 2);
"""


def orders_index_call(operation: str, name: str, columns: str, *options: str) -> str:
    """The call autogenerate writes for one of the orders' unique indexes."""
    arguments = [
        repr(name),
        "'orders'",
        columns,
        "keep_newest_by=[]",
        "row_identity=['id']",
        "private_schema='lossless_unique'",
        *options,
    ]
    return f"    op.{operation}(\n" + "".join(f"        {a},\n" for a in arguments) + "    )\n"


def test_autogenerate_writes_the_index_form_for_unique_indexes(shop, harness):
    """A functional unique Index and a partial one added to the model of the existing orders:
    `alembic check` lists them, `alembic revision --autogenerate` writes ensure_unique_index
    (the expression and the predicate as sa.text, the row kept spelled out) and
    undo_unique_index in downgrade(); the upgrade archives the duplicates as each index judges
    them (rows outside the predicate and NULL numbers untouched, lines re-pointed) and ends with
    the indexes op.create_index would make, `alembic check` is clean, and the downgrade gives
    back every row and the schema exactly."""
    shop.succeed("upgrade", "head")
    harness.execute(ORDERS_FOR_INDEXES)
    models = shop.directory / "app" / "models.py"
    models.write_text(models.read_text() + UNIQUE_INDEXES)
    pending = shop.alembic("check")
    assert pending.returncode != 0
    assert "('add_index', Index('orders_number_lower_key'" in pending.output
    assert "('add_index', Index('orders_one_new_per_customer_key'" in pending.output

    shop.succeed("revision", "--autogenerate", "--rev-id", "0003", "-m", "unique indexes")

    [revision] = (shop.directory / "migrations" / "versions").glob("0003_*.py")
    source = revision.read_text()
    print(f"--- {revision.name}, as autogenerate wrote it\n{source}")
    assert "\nimport sqlalchemy as sa\nimport alembic_lossless_unique\n" in source
    upgrade, downgrade = body_of(source, "upgrade"), body_of(source, "downgrade")
    lower = ("orders_number_lower_key", "[sa.text('lower(number)')]")
    one_new = (
        "orders_one_new_per_customer_key",
        "['customer_id']",
        "postgresql_where=sa.text(\"status = 'new'\")",
    )
    assert (
        "    # Duplicates of (lower(number)): the row kept is the greatest by keep_newest_by, then"
        in upgrade
    )
    assert (
        "    # Duplicates of (customer_id) among the rows where status = 'new': the row" in upgrade
    )
    assert orders_index_call("ensure_unique_index", *lower) in upgrade
    assert orders_index_call("ensure_unique_index", *one_new) in upgrade
    assert orders_index_call("undo_unique_index", *lower) in downgrade
    assert orders_index_call("undo_unique_index", *one_new) in downgrade
    assert "create_index" not in upgrade and "drop_index" not in downgrade
    orders_before, lines_before = orders(harness), order_lines(harness)
    schema_before = harness.schema_dump()

    shop.succeed("upgrade", "head")

    assert set(orders(harness)) == {2, 4, 5, 6, 7}
    assert all(orders(harness)[i] == orders_before[i] for i in (2, 4, 5, 6, 7))
    for index, archived in (("orders_number_lower_key", 1), ("orders_one_new_per_customer_key", 3)):
        archive = f"lossless_unique.{index}_archive"
        assert [row.id for row in harness.rows(f"SELECT id FROM {archive}")] == [archived]
    lines = {row.product: row.order_id for row in harness.rows("SELECT * FROM order_lines")}
    assert lines == {"tea": 2, "cups": 4}
    indexes = dict(
        harness.rows(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'orders'"
            " AND indexname NOT IN ('orders_pkey', 'orders_customer_id_number_key')"
        )
    )
    assert indexes == {
        "orders_number_lower_key": (
            "CREATE UNIQUE INDEX orders_number_lower_key ON public.orders USING btree"
            " (lower(number))"
        ),
        "orders_one_new_per_customer_key": (
            "CREATE UNIQUE INDEX orders_one_new_per_customer_key ON public.orders USING btree"
            " (customer_id) WHERE (status = 'new'::text)"
        ),
    }
    assert "No new upgrade operations detected." in shop.succeed("check").output

    shop.succeed("downgrade", "-1")

    assert shop.versions() == {SHOP_HEAD}
    assert orders(harness) == orders_before
    assert order_lines(harness) == lines_before
    assert harness.schema_dump() == schema_before


# 7. Alembic's async template (migrations/env_async.py), with asyncpg and psycopg's async mode.

ASYNC_DRIVERS = ("asyncpg", "psycopg_async")


@pytest.fixture(params=ASYNC_DRIVERS)
def async_shop(request, shop) -> Shop:
    """The shop with Alembic's async template as its env.py, DATABASE_URL naming `driver`."""
    migrations = shop.directory / "migrations"
    shutil.copy(migrations / "env_async.py", migrations / "env.py")
    shop.database_url = through(shop.harness.url, request.param)
    return shop


def test_async_template_upgrades_online_and_downgrades_exactly(async_shop, harness):
    """The plan through the template, then run_migrations inside its run_sync, with the plan's
    fingerprint: the concurrent build reports whom it waits for (the watcher runs on its own
    event loop), the duplicates are archived, `alembic check` is clean, and the downgrade gives
    back the orders, their lines and the schema."""
    shop = async_shop
    shop.succeed("upgrade", SHOP_BASE)
    harness.execute(ORDERS)
    harness.execute(ORDER_LINES)
    orders_before, lines_before = orders(harness), order_lines(harness)
    schema_before = harness.schema_dump()
    planned = shop_plan(shop)  # through the template's offline branch, on the async driver
    assert [operation["hazards"][:2] for operation in planned["operations"]] == [
        ["ARCHIVES_ROWS", "REPOINTS_CHILD_ROWS"]
    ]
    assert harness.schema_dump() == schema_before
    snapshot = holding(
        harness,
        "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ",
        "SELECT count(*) FROM orders",
    )
    blocker = snapshot.pid()
    try:
        running = shop.start(
            "-x",
            "progress_interval=0.2",
            "-x",
            f"expect_plan={planned['fingerprint']}",
            "upgrade",
            "head",
        )
        [build] = wait_until(
            "the build to wait for the old snapshot",
            lambda: build_phase(harness, "waiting for old snapshots", "alembic shop"),
            migrator=running,
        )
        command = harness.scalar(
            "SELECT command FROM pg_stat_progress_create_index WHERE pid = :pid", pid=build.pid
        )
        time.sleep(0.6)  # a few progress intervals: the report is periodic by design
    finally:
        snapshot.rollback()
        snapshot.close()
    upgraded = running.wait()

    assert upgraded.returncode == 0, upgraded.output
    assert command == "CREATE INDEX CONCURRENTLY"
    assert f"waiting for pid {blocker} (idle in transaction for " in upgraded.stderr
    assert f"rows archived     3 (moved to {ORDERS_UNIQUE.archive})" in upgraded.stderr
    assert set(orders(harness)) == {2, 5, 6, 7, 8}
    assert "No new upgrade operations detected." in shop.succeed("check").output

    shop.succeed("downgrade", "-1")
    assert shop.versions() == {SHOP_BASE}
    assert orders(harness) == orders_before
    assert order_lines(harness) == lines_before
    assert harness.schema_dump() == schema_before


def test_async_template_refuses_a_transaction_pooler(async_shop, harness, pgbouncer_transaction):
    """Through PgBouncer in transaction mode the template's connection is refused by
    run_migrations in one line, before anything is created, with no password printed."""
    shop = async_shop
    pooled = pgbouncer_transaction.url_string(harness.dbname, MIGRATOR, harness.server.password)
    shop.database_url = through(pooled, make_url(shop.database_url).get_driver_name())

    result = shop.alembic("upgrade", "head")

    assert_failed_cleanly(
        result, "transaction-mode connection pooler", secrets=(harness.server.password,)
    )
    assert shop.versions() == set()
    assert harness.scalar("SELECT to_regclass('public.orders') IS NULL")
    assert harness.scalar("SELECT to_regnamespace('lossless_unique') IS NULL")
