"""Helpers for tests/test_hardened.py: roles that attack the migrator, what the package keeps in
its private schema, and who may reach it.

Everything here runs as the server's superuser (the harness's admin engine, or a psycopg2
session of its own) unless it says otherwise: while an attacker's search_path is set on the
migrating role, a session of that role would run the attacker's code itself.
"""

import contextlib
import secrets
from collections.abc import Iterator

import psycopg2
from sqlalchemy import text

from app.names import PRIVATE_SCHEMA, VERSION_TABLE
from tests.online_support import Session, libpq_dsn
from tests.support import MIGRATOR, MigrationHarness

INSUFFICIENT_PRIVILEGE = "42501"
TABLE_PRIVILEGES = "SELECT, INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER"


def admin_rows(harness: MigrationHarness, sql: str, **params) -> list:
    with harness.admin_engine.connect() as connection:
        return list(connection.execute(text(sql), params))


def admin_dsn(harness: MigrationHarness) -> str:
    return libpq_dsn(harness.server.url_string(harness.dbname))


def run_as(harness: MigrationHarness, role: str, sql: str) -> None:
    """`sql` (a whole script) as `role`, committed, on a superuser session of its own that
    SET ROLE and then closes: a pooled connection would keep the role for whoever came next."""
    connection = psycopg2.connect(admin_dsn(harness), application_name="test role")
    try:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(f"SET ROLE {role}")
            cursor.execute(sql)
    finally:
        connection.close()


class Roles:
    """Roles a test creates (cluster-wide, so named uniquely) and drops again."""

    def __init__(self, harness: MigrationHarness) -> None:
        self.harness = harness
        self.created: list[str] = []

    def create(self, prefix: str, options: str = "NOLOGIN") -> str:
        role = f"{prefix}_{secrets.token_hex(4)}"
        self.harness.admin(f"CREATE ROLE {role} {options}")
        self.created.append(role)
        return role

    def drop_all(self) -> None:
        for role in reversed(self.created):
            self.harness.admin(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                f" WHERE usename = '{role}' AND pid <> pg_backend_pid()"
            )
            self.harness.admin(f"DROP OWNED BY {role} CASCADE")
            self.harness.admin(f"DROP ROLE {role}")


@contextlib.contextmanager
def migrator_search_path(harness: MigrationHarness, path: str) -> Iterator[None]:
    """`ALTER ROLE app_migrator IN DATABASE ... SET search_path`: every new session of the
    migrating role in this database starts with `path`. Reset on the way out."""
    harness.admin(f"ALTER ROLE {MIGRATOR} IN DATABASE {harness.dbname} SET search_path = {path}")
    try:
        yield
    finally:
        harness.admin(f"ALTER ROLE {MIGRATOR} IN DATABASE {harness.dbname} RESET search_path")


# An attacker's schema on the migrator's search_path: every function the migration (or the
# driver, SQLAlchemy, Alembic) might call unqualified, catalog views, an operator, the tables
# Alembic and the migration name, each recording who ran it. SECURITY INVOKER, so a recorded row
# says which role's privileges the attacker's code had. `evil.hits` is a sequence: it counts
# calls even in a transaction that rolled back.

HIJACKED_FUNCTIONS = (
    # (name, argument types, return type)
    ("now", "", "timestamptz"),
    ("clock_timestamp", "", "timestamptz"),
    ("statement_timestamp", "", "timestamptz"),
    ("set_config", "text, text, boolean", "text"),
    ("current_setting", "text", "text"),
    ("current_setting", "text, boolean", "text"),
    ("current_schema", "", "name"),
    ("current_database", "", "name"),
    ("version", "", "text"),
    ("pg_backend_pid", "", "integer"),
    ("to_regclass", "text", "regclass"),
    ("to_regnamespace", "text", "regnamespace"),
    ("gen_random_uuid", "", "uuid"),
    ("pg_try_advisory_lock", "integer, integer", "boolean"),
    ("pg_advisory_lock", "integer, integer", "void"),
    ("pg_advisory_unlock", "integer, integer", "boolean"),
    ("pg_advisory_xact_lock", "integer, integer", "void"),
    ("quote_ident", "text", "text"),
    ("format", "text", "text"),
    ("pg_get_userbyid", "oid", "name"),
    ("pg_has_role", "name, oid, text", "boolean"),
    ("has_database_privilege", "text, text", "boolean"),
    ("has_schema_privilege", "text, text", "boolean"),
    ("has_table_privilege", "text, text", "boolean"),
    ("pg_table_is_visible", "oid", "boolean"),
    ("format_type", "oid, integer", "text"),
    ("pg_get_indexdef", "oid", "text"),
    ("pg_get_constraintdef", "oid", "text"),
    ("pg_get_constraintdef", "oid, boolean", "text"),
    ("pg_get_expr", "pg_node_tree, oid", "text"),
    ("obj_description", "oid, name", "text"),
    ("pg_relation_size", "regclass", "bigint"),
    ("pg_total_relation_size", "regclass", "bigint"),
    ("pg_size_bytes", "text", "bigint"),
    ("lower", "text", "text"),
    ("length", "text", "integer"),
    ("left", "text, integer", "text"),
    ("replace", "text, text, text", "text"),
    ("regexp_replace", "text, text, text, text", "text"),
    ("round", "numeric", "numeric"),
    ("jsonb_build_object", "", "jsonb"),
)
SHADOWED_CATALOGS = {
    "pg_class": "*",
    "pg_namespace": "*",
    "pg_index": "*",
    "pg_constraint": "*",
    # attmissingval is of a pseudo-type that a view cannot have
    "pg_attribute": "attrelid, attname, atttypid, attnum, attnotnull, attisdropped, atthasdef",
    "pg_trigger": "*",
    "pg_proc": "*",
    "pg_roles": "*",
    "pg_locks": "*",
    "pg_stat_activity": "*",
    "pg_settings": "*",
    "pg_inherits": "*",
    "pg_depend": "*",
}
# Tables a sloppy migration might name unqualified: Alembic's version table, the app's tables.
SHADOWED_TABLES = {
    "alembic_version": "version_num varchar(32) NOT NULL PRIMARY KEY",
    "meta_assets_cache": "id uuid, workspace_id uuid, phone_number_id text",
    "workspaces": "id uuid, name text",
}


def _hijacked_function_sql(name: str, arguments: str, returns: str) -> str:
    count = len([a for a in arguments.split(",") if a.strip()])
    call = f"pg_catalog.{name}({', '.join(f'${i}' for i in range(1, count + 1))})"
    body = f"PERFORM {call}; RETURN;" if returns == "void" else f"RETURN {call};"
    return (
        f"CREATE FUNCTION evil.{name}({arguments}) RETURNS {returns} LANGUAGE plpgsql AS $f$"
        f" BEGIN PERFORM evil.record('{name}({arguments})'); {body} END $f$;"
    )


def plant_attacker(harness: MigrationHarness, attacker: str) -> None:
    """Schema `evil`, owned by `attacker` (no superuser, no grant on anything of the app's) and
    usable by everyone, full of code that records who ran it. The trigger on its alembic_version
    also tries what an attacker is after: superuser for itself (works if the migrator is a
    superuser) and the app's table (works as its owner)."""
    harness.admin(f"CREATE SCHEMA evil AUTHORIZATION {attacker}")
    statements = [
        "GRANT USAGE ON SCHEMA evil TO PUBLIC",
        "CREATE TABLE evil.side_effects (who name NOT NULL, what text NOT NULL)",
        "GRANT INSERT ON evil.side_effects TO PUBLIC",
        "CREATE SEQUENCE evil.hits",
        "GRANT USAGE ON SEQUENCE evil.hits TO PUBLIC",
        "CREATE FUNCTION evil.record(what text) RETURNS void LANGUAGE plpgsql AS $f$ BEGIN"
        " PERFORM pg_catalog.nextval('evil.hits'::pg_catalog.regclass);"
        " INSERT INTO evil.side_effects (who, what) VALUES (CURRENT_USER, what); END $f$",
        "CREATE FUNCTION evil.recorded(what text) RETURNS boolean LANGUAGE plpgsql AS $f$"
        " BEGIN PERFORM evil.record(what); RETURN true; END $f$",
        *(_hijacked_function_sql(*function) for function in HIJACKED_FUNCTIONS),
        "CREATE FUNCTION evil.text_equals(text, text) RETURNS boolean LANGUAGE plpgsql AS $f$"
        " BEGIN PERFORM evil.record('= (text, text)'); RETURN pg_catalog.texteq($1, $2); END $f$",
        "CREATE OPERATOR evil.= (LEFTARG = text, RIGHTARG = text, FUNCTION = evil.text_equals)",
        *(
            f"CREATE VIEW evil.{catalog} AS SELECT {columns} FROM pg_catalog.{catalog}"
            f" WHERE evil.recorded('{catalog}')"
            for catalog, columns in SHADOWED_CATALOGS.items()
        ),
        f"""CREATE FUNCTION evil.take_over() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN
    PERFORM evil.record(TG_TABLE_NAME || ' ' || TG_OP);
    BEGIN
        EXECUTE 'ALTER ROLE {attacker} SUPERUSER';
    EXCEPTION WHEN OTHERS THEN NULL;
    END;
    BEGIN
        EXECUTE 'GRANT ALL ON public.meta_assets_cache TO {attacker}';
    EXCEPTION WHEN OTHERS THEN NULL;
    END;
    RETURN NULL;
END $f$""",
    ]
    for table, columns in SHADOWED_TABLES.items():
        statements += [
            f"CREATE TABLE evil.{table} ({columns})",
            f"GRANT ALL ON evil.{table} TO PUBLIC",
            f"CREATE TRIGGER take_over AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE"
            f" ON evil.{table} FOR EACH STATEMENT EXECUTE FUNCTION evil.take_over()",
        ]
    statements.append("GRANT SELECT ON ALL TABLES IN SCHEMA evil TO PUBLIC")
    run_as(harness, attacker, ";\n".join(statements))


# What the attacker planted, as the catalogs have it: definitions, owners and grants.
EVIL_SCHEMA = """
SELECT 'relation ' || c.relname || ' ' || c.relkind::text || ' ' || pg_get_userbyid(c.relowner)
       || ' ' || coalesce(c.relacl::text, '')
       || coalesce(' ' || pg_get_viewdef(c.oid), '')
  FROM pg_class c WHERE c.relnamespace = 'evil'::regnamespace
UNION ALL
SELECT 'function ' || p.oid::regprocedure::text || ' ' || pg_get_userbyid(p.proowner)
       || ' ' || coalesce(p.proacl::text, '') || ' ' || p.prosrc
  FROM pg_proc p WHERE p.pronamespace = 'evil'::regnamespace
UNION ALL
SELECT 'operator ' || o.oid::regoperator::text || ' ' || o.oprcode::text
  FROM pg_operator o WHERE o.oprnamespace = 'evil'::regnamespace
UNION ALL
SELECT 'trigger ' || t.tgrelid::regclass::text || ' ' || pg_get_triggerdef(t.oid)
  FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
 WHERE c.relnamespace = 'evil'::regnamespace
ORDER BY 1
"""


def evil_schema(harness: MigrationHarness) -> list[str]:
    return [row[0] for row in admin_rows(harness, EVIL_SCHEMA)]


def side_effects(harness: MigrationHarness) -> list[tuple[str, str]]:
    return [tuple(row) for row in admin_rows(harness, "SELECT who, what FROM evil.side_effects")]


def hits(harness: MigrationHarness) -> int:
    """How often any of the attacker's code ran, rolled back or not."""
    return harness.admin_scalar(
        "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM evil.hits"
    )


# The private schema, enumerated from the catalogs so that no new object escapes a check.

PRIVATE_RELATIONS = """
SELECT c.oid::regclass::text AS name, c.relkind,
       (SELECT pg_catalog.quote_ident(a.attname) FROM pg_attribute a
         WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
         ORDER BY a.attnum LIMIT 1) AS first_column
  FROM pg_class c
 WHERE c.relnamespace = (SELECT oid FROM pg_namespace WHERE nspname = :schema)
   AND c.relkind IN ('r', 'p', 'S', 'v', 'm', 'f')
 ORDER BY 1
"""
PRIVATE_FUNCTIONS = """
SELECT p.oid::regprocedure::text AS signature, p.prorettype = 'trigger'::regtype AS is_trigger
  FROM pg_proc p
 WHERE p.pronamespace = (SELECT oid FROM pg_namespace WHERE nspname = :schema)
 ORDER BY 1
"""


def private_relations(harness: MigrationHarness) -> list:
    return admin_rows(harness, PRIVATE_RELATIONS, schema=PRIVATE_SCHEMA)


def private_functions(harness: MigrationHarness) -> list:
    return admin_rows(harness, PRIVATE_FUNCTIONS, schema=PRIVATE_SCHEMA)


def privileges_held(harness: MigrationHarness, role: str) -> list[str]:
    """Every privilege `role` holds on the private schema or anything in it, by the catalogs'
    own reckoning (has_*_privilege: grants to the role, to PUBLIC, through membership), as
    'what on which'; [] when it holds none."""
    held = []
    schema_privileges = admin_rows(
        harness,
        "SELECT p FROM unnest(ARRAY['USAGE', 'CREATE']) AS p"
        " WHERE has_schema_privilege(:role, :schema, p)",
        role=role,
        schema=PRIVATE_SCHEMA,
    )
    held += [f"{row.p} on schema {PRIVATE_SCHEMA}" for row in schema_privileges]
    for relation in private_relations(harness):
        if relation.relkind == "S":
            privileges = ("USAGE", "SELECT", "UPDATE")
            check = "has_sequence_privilege"
        else:
            privileges = tuple(p.strip() for p in TABLE_PRIVILEGES.split(","))
            if harness.admin_scalar("SELECT current_setting('server_version_num')::int >= 170000"):
                privileges += ("MAINTAIN",)  # VACUUM, ANALYZE, LOCK TABLE, ... since 17
            check = "has_table_privilege"
        for privilege in privileges:
            if harness.admin_scalar(
                f"SELECT {check}(:role, CAST(:name AS regclass), :privilege)",
                role=role,
                name=relation.name,
                privilege=privilege,
            ):
                held.append(f"{privilege} on {relation.name}")
        if relation.relkind != "S" and harness.admin_scalar(
            "SELECT has_any_column_privilege(:role, CAST(:name AS regclass),"
            " 'SELECT, INSERT, UPDATE, REFERENCES')",
            role=role,
            name=relation.name,
        ):
            held.append(f"a column privilege on {relation.name}")
    for function in private_functions(harness):
        if harness.admin_scalar(
            "SELECT has_function_privilege(:role, CAST(:f AS regprocedure), 'EXECUTE')",
            role=role,
            f=function.signature,
        ):
            held.append(f"EXECUTE on {function.signature}")
    return held


def attempts_against_private_objects(harness: MigrationHarness) -> list[str]:
    """What an API client would try on everything in the private schema: read, write, empty,
    call."""
    statements = []
    for relation in private_relations(harness):
        name, column = relation.name, relation.first_column
        if relation.relkind == "S":
            statements += [f"SELECT pg_catalog.nextval('{name}')", f"SELECT * FROM {name}"]
            continue
        statements += [
            f"SELECT * FROM {name} LIMIT 1",
            f"INSERT INTO {name} DEFAULT VALUES",
            f"UPDATE {name} SET {column} = {column}",
            f"DELETE FROM {name}",
            f"TRUNCATE {name}",
            f"LOCK TABLE {name} IN ACCESS SHARE MODE",
        ]
    for function in private_functions(harness):
        arguments = function.signature[function.signature.index("(") + 1 : -1]
        nulls = ", ".join(f"NULL::{a.strip()}" for a in arguments.split(",") if a.strip())
        statements.append(f"SELECT {function.signature.split('(')[0]}({nulls})")
    return statements


def outcomes_as(harness: MigrationHarness, role: str, statements: list[str]) -> dict[str, str]:
    """Each statement run as `role` (SET LOCAL ROLE in a transaction that is rolled back, as
    PostgREST does per request): its SQLSTATE, or 'ran' when it succeeded."""
    outcomes = {}
    connection = psycopg2.connect(admin_dsn(harness), application_name="test api client")
    try:
        for statement in statements:
            try:
                with connection.cursor() as cursor:
                    cursor.execute("SET LOCAL statement_timeout = '5s'")
                    cursor.execute(f"SET LOCAL ROLE {role}")
                    cursor.execute(statement)
                outcomes[statement] = "ran"
            except psycopg2.Error as error:
                outcomes[statement] = error.pgcode or str(error)
            finally:
                connection.rollback()
    finally:
        connection.close()
    return outcomes


def version_tables(harness: MigrationHarness) -> list[str]:
    """Every relation called alembic_version, in any schema."""
    return [
        row[0]
        for row in admin_rows(
            harness,
            "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relname = 'alembic_version'"
            " ORDER BY 1",
        )
    ]


def private_schema_exists(harness: MigrationHarness) -> bool:
    return bool(harness.admin_scalar("SELECT to_regnamespace(:s) IS NOT NULL", s=PRIVATE_SCHEMA))


# A squatter: a role that got to the private schema's name first (CREATE on the database), or
# into the schema (CREATE on it), and left objects with the names the migration uses: tables
# (the version table, the baseline's ledger) whose triggers record who wrote them, and views
# (the archive, the unique pair's ledger) that fail, naming the role, when anyone reads them.
# A read-only session (preflight) leaves no trace a trigger could record; the error is its trace.

SQUATTED_TABLES = {
    "alembic_version": "version_num varchar(32) NOT NULL PRIMARY KEY",
    "baseline_created": "table_name text PRIMARY KEY",
}
SQUATTED_VIEWS = {
    "meta_assets_cache_archive": "NULL::uuid AS id, NULL::uuid AS kept_id",
    "unique_pair_steps": "1::bigint AS seq, 'found'::text AS action, '{}'::jsonb AS detail",
}
SQUATTERS_CODE_RAN = "squatter code ran as"


def plant_squatter(harness: MigrationHarness, squatter: str, *, create_schema: bool) -> None:
    schema = PRIVATE_SCHEMA
    statements = []
    if create_schema:
        statements += [
            f"CREATE SCHEMA {schema}",
            f"GRANT USAGE, CREATE ON SCHEMA {schema} TO PUBLIC",
        ]
    statements += [
        f"CREATE TABLE {schema}.squatter_loot (who name NOT NULL, what text NOT NULL)",
        f"GRANT INSERT, SELECT ON {schema}.squatter_loot TO PUBLIC",
        f"CREATE SEQUENCE {schema}.squatter_hits",
        f"GRANT USAGE ON SEQUENCE {schema}.squatter_hits TO PUBLIC",
        f"""CREATE FUNCTION {schema}.squatter_spy() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN
    PERFORM pg_catalog.nextval('{schema}.squatter_hits'::pg_catalog.regclass);
    INSERT INTO {schema}.squatter_loot (who, what)
    VALUES (CURRENT_USER, TG_TABLE_NAME || ' ' || TG_OP);
    RETURN NULL;
END $f$""",
        f"""CREATE FUNCTION {schema}.squatter_peek(what text) RETURNS boolean LANGUAGE plpgsql
AS $f$ BEGIN
    RAISE EXCEPTION '{SQUATTERS_CODE_RAN} % (reading %)', CURRENT_USER, what;
END $f$""",
    ]
    existing = {
        row[0]
        for row in admin_rows(
            harness,
            "SELECT relname FROM pg_class WHERE relnamespace ="
            " (SELECT oid FROM pg_namespace WHERE nspname = :schema)",
            schema=schema,
        )
    }
    for table, columns in SQUATTED_TABLES.items():
        if table in existing:
            continue
        statements += [
            f"CREATE TABLE {schema}.{table} ({columns})",
            f"GRANT ALL ON {schema}.{table} TO PUBLIC",
            f"CREATE TRIGGER squatter_spy AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE"
            f" ON {schema}.{table} FOR EACH STATEMENT EXECUTE FUNCTION {schema}.squatter_spy()",
        ]
    for view, columns in SQUATTED_VIEWS.items():
        statements += [
            f"CREATE VIEW {schema}.{view} AS SELECT {columns}"
            f" WHERE {schema}.squatter_peek('{view}')",
            f"GRANT ALL ON {schema}.{view} TO PUBLIC",
        ]
    run_as(harness, squatter, ";\n".join(statements))


def squatter_saw(harness: MigrationHarness) -> tuple[list, int]:
    """What the squatter's triggers recorded, and how often they ran (rolled back or not)."""
    loot = admin_rows(harness, f"SELECT who, what FROM {PRIVATE_SCHEMA}.squatter_loot")
    calls = harness.admin_scalar(
        f"SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM {PRIVATE_SCHEMA}.squatter_hits"
    )
    return [tuple(row) for row in loot], calls


def version_as_admin(harness) -> str | None:
    if not harness.admin_scalar("SELECT to_regclass(:t) IS NOT NULL", t=VERSION_TABLE):
        return None
    return harness.admin_scalar(f"SELECT string_agg(version_num, ',') FROM {VERSION_TABLE}")


def prove_the_attack_works(harness, path: str, attacker: str) -> None:
    """A plain session of the migrating role, with nothing of this package's, does run the
    attacker's code: the planted objects are a real threat, not a test that cannot fail."""
    plain = Session(libpq_dsn(harness.url), autocommit=False)
    try:
        assert plain.run("SHOW search_path") == [(path,)]
        assert plain.run(
            "SELECT to_regclass('alembic_version') = 'evil.alembic_version'::regclass"
        ) == [(True,)]
        plain.run("INSERT INTO alembic_version VALUES ('what alembic would write')")
        if "pg_catalog" in path:  # otherwise pg_catalog is searched first, implicitly
            plain.run("SELECT now(), current_setting('search_path')")
            plain.run("SELECT 'a'::text = 'b'::text")
        ran = plain.run("SELECT DISTINCT who::text, what FROM evil.side_effects ORDER BY 2")
        escalated = plain.run(
            f"SELECT has_table_privilege('{attacker}', 'public.meta_assets_cache', 'SELECT')"
        )
    finally:
        plain.rollback()
        plain.close()
    assert ("app_migrator", "alembic_version INSERT") in ran, ran
    if "pg_catalog" in path:
        assert {("app_migrator", "now()"), ("app_migrator", "= (text, text)")} <= set(ran), ran
    assert escalated == [(True,)]


def database_state(harness) -> tuple:
    exists = harness.admin_scalar("SELECT to_regclass('public.meta_assets_cache') IS NOT NULL")
    return harness.schema_dump(), harness.table_rows() if exists else {}


# Behind a pooler: what the pooled server connections' sessions carry.

DEFAULT_SESSION = {
    "search_path": '"$user", public',
    "statement_timeout": "0",
    "lock_timeout": "0",
    "idle_in_transaction_session_timeout": "0",
    "application_name": "test session",  # what the client asked for, and nothing else
}
SESSION_STATE = (
    "SELECT current_setting('search_path'), current_setting('statement_timeout'),"
    " current_setting('lock_timeout'), current_setting('idle_in_transaction_session_timeout'),"
    " current_setting('application_name'), pg_backend_pid(),"
    " (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid())"
)


def pooled_sessions_state(url: str, clients: int) -> tuple[list[dict], set[int]]:
    """`clients` clients of the pooler at once, each inside a transaction so that each holds a
    server connection of its own: what each server connection's session looks like, and their
    backends' pids."""
    sessions = [Session(libpq_dsn(url), autocommit=False) for _ in range(clients)]
    try:
        states = [each.run(SESSION_STATE)[0] for each in sessions]
    finally:
        for each in sessions:
            each.rollback()
            each.close()
    found = [
        {
            **dict(zip(DEFAULT_SESSION, state[:5], strict=True)),
            "advisory locks held": state[6],
        }
        for state in states
    ]
    return found, {state[5] for state in states}


def advisory_locks(harness) -> list:
    return admin_rows(
        harness,
        "SELECT l.pid, l.classid, l.objid, a.application_name FROM pg_locks l"
        " LEFT JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory'",
    )


def server_connections_of(harness, role: str, application_name: str = "%") -> set[int]:
    """The server backends of `role` in this database (whose application_name is LIKE
    `application_name`)."""
    return {
        row[0]
        for row in admin_rows(
            harness,
            "SELECT pid FROM pg_stat_activity WHERE usename = :role AND datname = :database"
            " AND application_name LIKE :application_name",
            role=role,
            database=harness.dbname,
            application_name=application_name,
        )
    }
