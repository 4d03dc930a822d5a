"""The migrator runs as a powerful role; nothing anyone else can write runs with its privileges,
and nothing it creates is open to anyone else.

- an attacker's schema on the migrating role's search_path (functions, catalog views, an
  operator, an alembic_version with a trigger) never sees its code run;
- a private schema someone else created first is refused, in one line, before anything changes;
- anon, authenticated and PUBLIC reach nothing in the private schema, during a run and after,
  even under default privileges that grant them every new table;
- a version table left in public by an earlier release is moved once, online and offline;
- ownership and privileges are checked first: a role that may not run the migration leaves no
  schema and no version table behind;
- behind a transaction-mode PgBouncer the run refuses and leaves nothing on the pooled
  connections; behind a session-mode PgBouncer two migrators converge.

Everything runs against a real PostgreSQL (and a real PgBouncer); the checks that must not be
fooled by the attacker run as the server's superuser.
"""

import json

import psycopg2
import pytest

from alembic_lossless_unique.runtime.locks import WAITING_SUFFIX
from app.names import ARCHIVE, PRIVATE_SCHEMA
from app.unique_pair import TARGET
from devtools.pgbouncer import PgBouncerUnavailable, pgbouncer, pgbouncer_binary
from tests.hardened_support import (
    DEFAULT_SESSION,
    INSUFFICIENT_PRIVILEGE,
    SQUATTERS_CODE_RAN,
    Roles,
    advisory_locks,
    attempts_against_private_objects,
    database_state,
    evil_schema,
    hits,
    migrator_search_path,
    outcomes_as,
    plant_attacker,
    plant_squatter,
    pooled_sessions_state,
    private_functions,
    private_relations,
    private_schema_exists,
    privileges_held,
    prove_the_attack_works,
    server_connections_of,
    side_effects,
    squatter_saw,
    version_as_admin,
    version_tables,
)
from tests.offline_support import apply_script, offline_script, run_psql
from tests.online_support import (
    A_LOSER,
    DEDUPE_QUERY,
    SURVIVORS,
    Session,
    assert_canonical,
    holding,
    ledger_actions,
    libpq_dsn,
    migrator_backends,
    migrator_waiting_on_lock,
    start_alembic,
    wait_until,
)
from tests.support import (
    BASELINE,
    HEAD,
    MIGRATOR,
    OTHER_DRIVERS,
    VERSION_TABLE,
    failed_lines,
    succeed,
    through,
)
from tests.test_bad_input import assert_failed_cleanly
from tests.test_preflight import preflight


@pytest.fixture
def roles(harness):
    created = Roles(harness)
    yield created
    created.drop_all()


# 1. Nothing on the migrating role's own search_path runs as the migrator.


# What differs between drivers and search_paths, not between servers: each on one major.
@pytest.mark.any_major
@pytest.mark.parametrize(
    ("path", "driver"),
    [
        pytest.param("evil, public", "psycopg2", id="before-pg_catalog-psycopg2"),
        *(
            pytest.param("evil, pg_catalog, public", driver, id=driver)
            for driver in ("psycopg2", *OTHER_DRIVERS)
        ),
    ],
)
def test_code_on_the_roles_search_path_never_runs_as_the_migrator(harness, roles, path, driver):
    """With the role's search_path starting at a schema the attacker owns, upgrade (every step
    of a drifted table: guard, dedupe, build, promote), check, preflight and downgrade all
    succeed through `driver`, and none of the attacker's functions, views, operator or triggers
    ever ran: not in a transaction that rolled back (a sequence counts every call), not in the
    queries the driver and SQLAlchemy send when they connect."""
    url = through(harness.url, driver)
    as_user = {"DATABASE_URL": url}
    harness.build_state("drifted")
    rows_before = harness.table_rows()
    survivors = {row[0] for row in harness.rows(SURVIVORS)}
    attacker = roles.create("attacker")
    plant_attacker(harness, attacker)
    planted = evil_schema(harness)

    with migrator_search_path(harness, path):
        prove_the_attack_works(harness, path, attacker)
        calls_before = hits(harness)
        assert calls_before > 0

        def nothing_of_the_attackers_ran(step: str) -> None:
            assert (side_effects(harness), hits(harness) - calls_before) == ([], 0), step

        succeed(harness.cli("upgrade", "head", env=as_user))
        nothing_of_the_attackers_ran("upgrade")
        assert version_as_admin(harness) == HEAD
        succeed(harness.cli("check", env=as_user))
        nothing_of_the_attackers_ran("check")
        for arguments in (["--json"], []):
            report = preflight(*arguments, url=url)
            assert report.returncode == 0, report.stderr
            nothing_of_the_attackers_ran(f"preflight {arguments}")
            if arguments:
                assert json.loads(report.stdout)["alembic_revision"] == HEAD

    assert_canonical(harness, rows_before, survivors)
    assert harness.count(ARCHIVE) > 0

    with migrator_search_path(harness, path):
        succeed(harness.cli("downgrade", "-1", env=as_user))
        nothing_of_the_attackers_ran("downgrade")
        assert version_as_admin(harness) == BASELINE

    assert harness.table_rows() == rows_before
    assert evil_schema(harness) == planted  # untouched, and nothing created in it
    assert harness.admin_scalar("SELECT count(*) FROM evil.alembic_version") == 0
    assert set(version_tables(harness)) == {"evil.alembic_version", VERSION_TABLE}
    assert not harness.admin_scalar(
        f"SELECT rolsuper OR has_table_privilege(oid, 'public.meta_assets_cache',"
        f" 'SELECT, INSERT, UPDATE, DELETE') FROM pg_roles WHERE rolname = '{attacker}'"
    )


# 2. A private schema someone else got to first is refused before anything changes.


@pytest.fixture(scope="module")
def offline_upgrade_script() -> str:
    return offline_script("upgrade", "head")


def the_problem(result) -> str:
    """The one FAILED line, without its prefix."""
    [failed] = failed_lines(result)
    return failed.removeprefix("FAILED: ")


def assert_preflight_reports(harness, problem: str, url: str | None = None) -> None:
    """Preflight (--json and text) names the same problem as the failed run, word for word."""
    report = preflight("--json", url=url or harness.url)
    assert report.returncode == 0, report.stderr
    assert problem in json.loads(report.stdout)["problems"], report.stdout
    report = preflight(url=url or harness.url)
    assert report.returncode == 0, report.stderr
    assert f"PROBLEM: {problem}" in [line.strip() for line in report.stdout.splitlines()]


def prove_the_squat_works(harness) -> int:
    """A plain session of the migrating role that writes the squatter's version table (where
    the squatter made one) runs the squatter's trigger as itself, and one that reads the
    archive the squatter left runs the squatter's code (all rolled back): the trap is real.
    Returns how often the squatter's triggers have run."""
    squatters_version_table = harness.admin_scalar(
        "SELECT pg_get_userbyid(relowner) <> :migrator FROM pg_class WHERE oid = to_regclass(:t)",
        migrator=MIGRATOR,
        t=VERSION_TABLE,
    )
    plain = Session(libpq_dsn(harness.url), autocommit=False)
    try:
        if squatters_version_table:
            plain.run(f"INSERT INTO {VERSION_TABLE} VALUES ('{HEAD}')")
            assert plain.run(f"SELECT who::text, what FROM {PRIVATE_SCHEMA}.squatter_loot") == [
                (MIGRATOR, "alembic_version INSERT")
            ]
            plain.rollback()
        with pytest.raises(psycopg2.Error, match=f"{SQUATTERS_CODE_RAN} {MIGRATOR}"):
            plain.run(f"SELECT count(*) FROM {ARCHIVE}")
    finally:
        plain.rollback()
        plain.close()
    loot, calls = squatter_saw(harness)
    assert loot == [] and calls == (1 if squatters_version_table else 0)
    return calls


@pytest.mark.parametrize(
    ("state", "squatted"),
    [("drifted", "schema"), ("empty", "schema"), ("drifted", "object in the schema")],
)
def test_a_squatted_private_schema_is_refused_before_anything_changes(
    harness, roles, offline_upgrade_script, state, squatted
):
    """A role that created meta_assets_migration first (CREATE on the database), or that put an
    object into the migrator's own schema, with tables named as the migration names them and
    triggers on them: upgrade and the offline script refuse in one line naming the schema, its
    owner and the migrating role; nothing changes, the squatter's code never runs."""
    harness.build_state(state)
    squatter = roles.create("squatter")
    if squatted == "schema":
        harness.admin(f"GRANT CREATE ON DATABASE {harness.dbname} TO {squatter}")
        plant_squatter(harness, squatter, create_schema=True)
        expected = [f"schema {PRIVATE_SCHEMA} is owned by {squatter}, not by the migrating role"]
        version_before = None
    else:
        harness.upgrade(BASELINE)
        harness.execute(f"GRANT USAGE, CREATE ON SCHEMA {PRIVATE_SCHEMA} TO {squatter}")
        plant_squatter(harness, squatter, create_schema=False)
        expected = [f"schema {PRIVATE_SCHEMA} holds ", f"owned by {squatter}, not by the migrating"]
        version_before = BASELINE
    expected.append(f"role {MIGRATOR}")
    calls_before = prove_the_squat_works(harness)
    before = database_state(harness)

    result = harness.cli("upgrade", "head")

    assert_failed_cleanly(result, *expected)
    offline = run_psql(harness, offline_upgrade_script)
    assert offline.returncode != 0
    assert all(fragment in offline.stderr for fragment in expected), offline.stderr
    assert database_state(harness) == before
    assert squatter_saw(harness) == ([], calls_before)
    assert version_as_admin(harness) == version_before
    if squatted == "schema":  # the squatter's own, never written
        assert version_tables(harness) == [VERSION_TABLE]
        assert harness.admin_scalar(f"SELECT count(*) FROM {VERSION_TABLE}") == 0


@pytest.mark.parametrize("squatted", ["schema", "object in the schema"])
def test_preflight_reports_a_squatted_private_schema_without_reading_it(harness, roles, squatted):
    """Preflight names the same problem as the refused upgrade, and reads nothing the squatter
    put there: its archive and ledger are views whose code fails, naming the role running it."""
    harness.build_state("drifted")
    squatter = roles.create("squatter")
    if squatted == "schema":
        harness.admin(f"GRANT CREATE ON DATABASE {harness.dbname} TO {squatter}")
    else:
        harness.upgrade(BASELINE)
        harness.execute(f"GRANT USAGE, CREATE ON SCHEMA {PRIVATE_SCHEMA} TO {squatter}")
    plant_squatter(harness, squatter, create_schema=squatted == "schema")
    before = database_state(harness)

    result = harness.cli("upgrade", "head")
    assert_failed_cleanly(result, f"owned by {squatter}")
    assert_preflight_reports(harness, the_problem(result))

    assert database_state(harness) == before
    assert squatter_saw(harness) == ([], 0)


def test_a_squatter_creating_the_schema_during_the_run_is_refused(harness, roles):
    """The squatter creates the schema in a transaction that commits while the migrator is
    already creating it: the migrator still refuses in one line, and nothing changes."""
    harness.build_state("drifted")
    squatter = roles.create("squatter", "LOGIN PASSWORD 'squat-pw-1'")
    harness.admin(f"GRANT CREATE ON DATABASE {harness.dbname} TO {squatter}")
    before = database_state(harness)
    racing = Session(libpq_dsn(harness.url_as(squatter, "squat-pw-1")), autocommit=False)
    try:
        racing.run(f"CREATE SCHEMA {PRIVATE_SCHEMA}")
        running = start_alembic("upgrade", "head", env={"DATABASE_URL": harness.url})
        wait_until(
            "the migrator to wait for the squatter's schema",
            lambda: migrator_backends(harness, "wait_event_type = 'Lock'"),
            migrator=running,
        )
        racing.commit()
    finally:
        racing.rollback()
        racing.close()
    result = running.wait()
    assert result.returncode != 0
    [failed] = failed_lines(result)
    harness.admin(f"DROP SCHEMA {PRIVATE_SCHEMA}")  # fails if the migrator put anything in it
    assert database_state(harness) == before
    assert PRIVATE_SCHEMA in failed and squatter in failed, failed


# 3. anon, authenticated and PUBLIC reach nothing the package creates, during a run and after.

GRANT_EVERYTHING_TO_API_ROLES = [
    f"ALTER DEFAULT PRIVILEGES FOR ROLE {MIGRATOR} GRANT ALL ON {kind} TO anon, authenticated"
    for kind in ("TABLES", "SEQUENCES", "FUNCTIONS", "SCHEMAS")
]


def what_api_clients_reach(harness, clients: tuple[str, ...]) -> list[str]:
    """Every privilege a client role holds on the private schema or anything in it, and every
    read, write or call of it that does not fail with permission denied; [] when none."""
    attempts = attempts_against_private_objects(harness)
    reached = []
    for role in clients:
        reached += [f"{role} holds {held}" for held in privileges_held(harness, role)]
        reached += [
            f"{role}: {statement} -> {outcome}"
            for statement, outcome in outcomes_as(harness, role, attempts).items()
            if outcome != INSUFFICIENT_PRIVILEGE
        ]
    return reached


@pytest.mark.parametrize("defaults", ["supabase", "supabase and global"])
def test_api_roles_reach_nothing_in_the_private_schema(harness, roles, defaults):
    """Under Supabase's default privileges (and, second case, defaults that give anon and
    authenticated every new schema, table, sequence and function the migrator creates anywhere):
    while the guard is in place (the dedupe held up by a row lock) and after the upgrade and
    the downgrade, anon, authenticated and a role with only PUBLIC's privileges hold no
    privilege on the private schema or anything in it (enumerated from the catalogs), and every
    SELECT, INSERT, UPDATE, DELETE, TRUNCATE and call fails with permission denied."""
    if defaults == "supabase and global":
        harness.admin(";".join(GRANT_EVERYTHING_TO_API_ROLES))
    harness.build_state("drifted")
    harness.upgrade(BASELINE)
    rows_before = harness.table_rows()
    survivors = {row[0] for row in harness.rows(SURVIVORS)}
    clients = ("anon", "authenticated", roles.create("only_public"))
    loser = harness.scalar(A_LOSER)
    row_lock = holding(
        harness, f"SELECT 1 FROM public.meta_assets_cache WHERE id = '{loser}' FOR UPDATE"
    )
    try:
        running = start_alembic("upgrade", "head", env={"DATABASE_URL": harness.url})
        wait_until(
            "the dedupe to wait for the locked row, the guard in place",
            lambda: migrator_waiting_on_lock(harness, DEDUPE_QUERY),
            migrator=running,
        )
        present = {row.name for row in private_relations(harness)}
        present |= {row.signature for row in private_functions(harness)}
        assert {TARGET.guard_claims, f"{TARGET.guard_function}()", ARCHIVE, VERSION_TABLE} <= (
            present
        ), present
        reached_during_the_run = what_api_clients_reach(harness, clients)
    finally:
        row_lock.rollback()
        row_lock.close()
    succeed(running.wait())
    assert_canonical(harness, rows_before, survivors)
    reached_after_the_upgrade = what_api_clients_reach(harness, clients)
    harness.downgrade("-1")
    reached_after_the_downgrade = what_api_clients_reach(harness, clients)

    assert {
        "during the run": reached_during_the_run,
        "after the upgrade": reached_after_the_upgrade,
        "after the downgrade": reached_after_the_downgrade,
    } == {"during the run": [], "after the upgrade": [], "after the downgrade": []}


# 4. A version table an earlier release left in public is moved to the private schema, once.

LEGACY_VERSION_TABLE = """
CREATE TABLE public.alembic_version (
    version_num varchar(32) NOT NULL,
    CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num));
INSERT INTO public.alembic_version (version_num) VALUES ('{revision}')
"""
MOVED = f"moved the version table from public.alembic_version to {VERSION_TABLE}"


def as_an_earlier_release_left_it(harness, legacy_revision: str) -> None:
    """The version table in public, as the migrator created it there (Supabase's default
    privileges gave it to anon and authenticated), under the revision's old id."""
    harness.execute(f"DROP TABLE {VERSION_TABLE}")
    harness.execute(LEGACY_VERSION_TABLE.format(revision=legacy_revision))
    assert harness.admin_scalar(
        "SELECT has_table_privilege('anon', 'public.alembic_version', 'UPDATE')"
    )


def moved_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if "moved the version table" in line]


@pytest.mark.parametrize(("legacy_revision", "at"), [("0001", BASELINE), ("0002", HEAD)])
def test_a_legacy_version_table_in_public_is_moved_once(harness, legacy_revision, at):
    """`alembic upgrade head` on a database an earlier release migrated (to '0001' or '0002')
    says once that it moved the version table, carries on from the new id of the same revision,
    and leaves no public.alembic_version; the next run says nothing about moving."""
    harness.build_state("drifted")
    harness.upgrade(at)
    as_an_earlier_release_left_it(harness, legacy_revision)

    first = harness.cli("upgrade", "head")
    second = harness.cli("upgrade", "head")

    succeed(first)
    [moved] = moved_lines(first.output)
    assert MOVED in moved
    assert harness.version() == HEAD
    assert version_tables(harness) == [VERSION_TABLE]
    if legacy_revision == "0002":  # carried on from 0002: nothing left to do
        assert f"nothing to do: the database is at {HEAD}" in first.output
    else:
        assert f"Running upgrade {BASELINE} -> {HEAD}" in first.output
    succeed(second)
    assert moved_lines(second.output) == []
    assert f"nothing to do: the database is at {HEAD}" in second.output
    assert privileges_held(harness, "anon") == []


@pytest.mark.parametrize("other_revision", ["a1b2c3d4e5f6", "0002"])
def test_another_projects_version_table_in_public_is_left_alone(harness, other_revision):
    """Another project's public.alembic_version, even one whose numbering collides with this
    package's old ids, is neither moved nor changed: not by the baseline (no ledger of this
    package's yet), nor by the next upgrade (this package's own version table holds its
    revision)."""
    harness.build_state("drifted")
    harness.execute(LEGACY_VERSION_TABLE.format(revision=other_revision))
    harness.upgrade(BASELINE)

    result = harness.cli("upgrade", "head")

    succeed(result)
    assert moved_lines(result.output) == []
    assert harness.rows("SELECT version_num FROM public.alembic_version") == [(other_revision,)]
    assert harness.version() == HEAD
    assert set(version_tables(harness)) == {"public.alembic_version", VERSION_TABLE}


def test_the_offline_script_moves_a_legacy_version_table(harness):
    """`alembic upgrade meta_assets_cache_0002:head --sql`, run with psql, moves an earlier
    release's public.alembic_version too, says so, and leaves the moved table closed to the API
    roles even under default privileges that grant them every new table."""
    harness.admin(";".join(GRANT_EVERYTHING_TO_API_ROLES))
    harness.build_state("drifted")
    harness.upgrade("head")
    as_an_earlier_release_left_it(harness, "0002")

    notices = apply_script(harness, offline_script("upgrade", f"{HEAD}:head"))

    assert MOVED in notices
    assert harness.version() == HEAD
    assert version_tables(harness) == [VERSION_TABLE]
    assert privileges_held(harness, "anon") == []
    assert privileges_held(harness, "authenticated") == []


# 5. Ownership and privileges are checked first, read-only: nothing is created for a role that
# may not run the migration.

NOT_OWNER_PASSWORD = "not-the-owner-pw-7"
NOT_OWNER_GRANTS = {
    "dml grants only": [
        "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}"
    ],
    "create on the database and on public": [
        "GRANT CREATE ON DATABASE {database} TO {role}",
        "GRANT CREATE ON SCHEMA public TO {role}",
    ],
    "nothing": [],
}


@pytest.mark.parametrize("grants", list(NOT_OWNER_GRANTS))
def test_a_role_that_does_not_own_the_table_is_refused_before_anything_is_created(
    harness, roles, grants
):
    """A role with only DML grants, one that may create schemas and tables but does not own the
    table, and one with nothing: `alembic upgrade head` on a database no revision has touched
    fails in one line naming the role, the owner and what is missing, before revision 0001:
    no private schema, no version table anywhere, the schema dump unchanged. Preflight, run as
    the same role, names the same problem."""
    harness.build_state("drifted")
    role = roles.create("not_owner", f"LOGIN PASSWORD '{NOT_OWNER_PASSWORD}'")
    for grant in NOT_OWNER_GRANTS[grants]:
        harness.admin(grant.format(role=role, database=harness.dbname))
    before = database_state(harness)
    url = harness.url_as(role, NOT_OWNER_PASSWORD)

    result = harness.cli("upgrade", "head", env={"DATABASE_URL": url})

    assert_failed_cleanly(
        result,
        f"role {role} cannot alter public.meta_assets_cache (owned by {MIGRATOR})",
        "run the migration as the table's owner or a member of its role",
        secrets=(NOT_OWNER_PASSWORD,),
    )
    assert not private_schema_exists(harness)
    assert version_tables(harness) == []
    assert database_state(harness) == before
    assert_preflight_reports(harness, the_problem(result), url=url)
    assert database_state(harness) == before


# 6. Behind a transaction-mode pooler: refused before anything changes, nothing left behind.

# The transaction-mode pooler's refusal, with every driver: tests/test_drivers.py.


# 7. Behind a session-mode pooler: two migrators converge, and leave the connections clean.

SESSION_POOL_SIZE = 4  # two migrators' connections (main, progress watcher, probe) fit


@pytest.fixture(scope="module")
def session_pooler_that_does_not_reset(pg_server):
    """PgBouncer in session mode that hands a server connection to the next client as the last
    client left it (server_reset_query empty, as poolers that do not reset): only the migrator's
    own reset keeps the next client's session clean."""
    try:
        pgbouncer_binary()
    except PgBouncerUnavailable as error:
        pytest.skip(str(error))
    settings = {"server_reset_query": "", "default_pool_size": str(SESSION_POOL_SIZE)}
    with pgbouncer(pg_server, "session", settings) as bouncer:
        yield bouncer


def test_session_pooler_two_migrators_converge_and_leave_clean_connections(
    harness, session_pooler_that_does_not_reset
):
    """Two `alembic upgrade head` started together through PgBouncer in session mode on a
    drifted table: both succeed, one does the work (one 'found', one 'built' in the ledger),
    every row is kept or archived once; afterwards every server connection the migrators used,
    handed to other clients by a pooler that does not reset them, carries PostgreSQL's defaults
    and no advisory lock."""
    harness.build_state("drifted")
    harness.upgrade(BASELINE)
    rows_before = harness.table_rows()
    survivors = {row[0] for row in harness.rows(SURVIVORS)}
    bouncer = session_pooler_that_does_not_reset
    url = bouncer.url_string(harness.dbname, MIGRATOR, harness.server.password)

    used: set[int] = set()

    def watching(condition):
        """condition(), noting every server connection a migrator has on the way."""
        used.update(server_connections_of(harness, MIGRATOR, application_name="alembic%"))
        return condition()

    # A row lock holds the first migrator's dedupe until the second is waiting for the migrator
    # lock: the two runs overlap, whichever starts first.
    loser = harness.scalar(A_LOSER)
    row_lock = holding(
        harness, f"SELECT 1 FROM public.meta_assets_cache WHERE id = '{loser}' FOR UPDATE"
    )
    try:
        both = [start_alembic("upgrade", "head", env={"DATABASE_URL": url}) for _ in range(2)]
        wait_until(
            "one migrator to dedupe while the other waits for the migrator lock",
            lambda: watching(
                lambda: (
                    migrator_waiting_on_lock(harness, DEDUPE_QUERY)
                    and server_connections_of(harness, MIGRATOR, f"%{WAITING_SUFFIX}")
                )
            ),
        )
    finally:
        row_lock.rollback()
        row_lock.close()
    wait_until(
        "both migrators to finish",
        lambda: watching(lambda: not any(migrator.running() for migrator in both)),
    )
    results = [migrator.wait() for migrator in both]

    for result in results:
        succeed(result)
    assert any("another migrator is running" in result.output for result in results)
    actions = ledger_actions(harness)
    assert actions.count("found") == 1 and actions.count("built") == 1, actions
    assert_canonical(harness, rows_before, survivors)
    assert advisory_locks(harness) == []
    states, backends = pooled_sessions_state(url, SESSION_POOL_SIZE)
    assert used and used <= backends, (used, backends)  # every connection a migrator used
    assert states == [{**DEFAULT_SESSION, "advisory locks held": 0}] * SESSION_POOL_SIZE
