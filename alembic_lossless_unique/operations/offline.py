"""The offline script: what `alembic upgrade head --sql` writes for psql, `supabase db push` or
the Supabase SQL editor to run.

Offline there is no connection, so every decision that depends on what the database holds is
made by the database itself, in plpgsql DO blocks, from the same text the online path runs: the
plan query (plan.py), the checks (checks.py), the guard, the archive, the dedupe and the restore.
The script ends where the online path ends, in every starting state: it creates what the online
path creates and nothing more (a table already converged gets no ledger, no archive), and writes
the same archive and ledger, so either path's downgrade undoes the other's upgrade. The index
form's key, which online is read by a probe before any statement is written, is read by the
script's own probe as it runs (offline_key.py).

It can always be run again, whole: each revision's part runs only where the version table says
it is due (rerunnable.py; each block here checks that first, see `gated`), and each part picks
up what a run that stopped midway left, as the online path does.

Two forms of the upgrade's index build (`-x offline_build`, settings.py):

- concurrent (the default), for psql -f and supabase db push, which send each statement on its
  own. Like the online path, in four parts: a transaction that checks, plans, adopts or drops
  what is there and installs the duplicate guard; a transaction that archives the duplicates;
  CREATE UNIQUE INDEX CONCURRENTLY outside any transaction; a transaction that promotes the index
  to the constraint and removes the guard. Writes wait only for the short strong-lock steps,
  each at most LOCK_TIMEOUT. A session advisory lock keeps other migrators out from the first
  part to the last. The index statement finds its table through a search_path the second part
  sets: the real table where this run builds, otherwise a temporary stand-in of the same name,
  so that a run with nothing to build builds nothing. Sent as one query (the SQL editor does
  that, and CONCURRENTLY cannot run there), the script refuses at its first statement.
- blocking, for the SQL editor: one transaction per revision. Where an index must be built, the
  table's writes wait from the dedupe to the COMMIT (SHARE ROW EXCLUSIVE), so that no duplicate
  can arrive meanwhile and no guard is needed.
"""

from typing import Any

from sqlalchemy import text

from alembic_lossless_unique.ddl import (
    checks,
    dedupe,
    guard,
    indexes,
    ledger,
    private_schema,
    restore,
)
from alembic_lossless_unique.ddl.comparisons import escape_format
from alembic_lossless_unique.ddl.plan import plan_sql
from alembic_lossless_unique.ddl.sqltext import (
    dollar_quoted,
    executed_when,
    ident,
    literal,
    literal_array,
)
from alembic_lossless_unique.operations import offline_key
from alembic_lossless_unique.operations.target import UniqueTarget
from alembic_lossless_unique.runtime.locks import MIGRATOR_LOCK_KEY
from alembic_lossless_unique.runtime.rerunnable import DUE
from alembic_lossless_unique.runtime.settings import OFFLINE_BUILDS, MigrationSettings
from alembic_lossless_unique.runtime.surroundings import (
    SUBSCRIBER_DDL,
    project_ddl_command,
    refusal_format,
    subscriber_ddl_command,
    surroundings_sql,
    table_exists_sql,
    unready_publications_sql,
)

CONCURRENT, BLOCKING = OFFLINE_BUILDS

# How long one statement may queue for a table lock; the app's queries queue behind it. There
# are no retries offline: a timeout stops the script, and running it again completes the work.
LOCK_TIMEOUT = "5s"

# The offline script does not read -x for this: it uses the default.
DEDUPE_WORK_MEM = MigrationSettings.dedupe_work_mem

_LOCK_KEY = f"{MIGRATOR_LOCK_KEY[0]}, {MIGRATOR_LOCK_KEY[1]}"


def session_sql(lock_timeout: str = LOCK_TIMEOUT) -> str:
    """pg_dump's rule: nothing the role's search_path holds runs in the migration; one migrator
    at a time; strong locks queue at most `lock_timeout`; the role's statement_timeout (Supabase
    cuts statements off at about two minutes) does not cut a long step short. SET LOCAL: the
    transaction's end undoes them."""
    return f"""\
SET LOCAL search_path = pg_catalog, pg_temp;

SELECT pg_catalog.pg_advisory_xact_lock({_LOCK_KEY});

SET LOCAL lock_timeout = '{lock_timeout}';

SET LOCAL statement_timeout = 0"""


SESSION = session_sql()

# The one statement of a concurrent script that cannot run inside a transaction block.
CONCURRENT_BUILD = "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS"
# Written into a blocking script where it builds an index with the table's writes waiting.
BLOCKING_BUILD = "-- Writes to the table wait from here to COMMIT"


def form_of(context: Any) -> str:
    """The form `-x offline_build` (or MIGRATION_OFFLINE_BUILD) asks for."""
    return MigrationSettings.from_context(context).offline_build


# The top of a script: which form it is, what it locks, and the refusal that keeps a concurrent
# script out of the SQL editor.


def script_header(body: str, refusal: str = "") -> str:
    """Comments saying which form `body` (the rest of the script) is, and for one that builds
    concurrently, the refusal of a single query, to write above it; then `refusal` (a statement
    that refuses before anything is changed: unready_subscribers_sql), if any."""
    return _form_header(body) + (f"{refusal};\n\n" if refusal else "")


def _form_header(body: str) -> str:
    run_again = (
        "-- Run it again at will: each revision runs only where the version table says it is\n"
        "-- due, and a run that stopped midway (a lock timeout, an error, a lost connection) is\n"
        "-- completed. A run with nothing left to do changes nothing and says so.\n"
        "-- A partitioned table is refused, before anything changes: its unique is built\n"
        "-- partition by partition, each partition's build a transaction of its own, which\n"
        "-- only the online command (alembic upgrade, without --sql) does.\n"
    )
    if CONCURRENT_BUILD in body:
        return (
            f"""\
-- CONCURRENT form, for psql -X -v ON_ERROR_STOP=1 -f THIS_FILE and for supabase db push, which
-- send each statement on its own. The unique index is built CONCURRENTLY, outside any
-- transaction: the table's reads and writes go on. Writes wait only for the short steps that
-- take a strong lock, each at most lock_timeout ({LOCK_TIMEOUT}): installing the duplicate guard
-- (SHARE ROW EXCLUSIVE) and promoting the index to the constraint (ACCESS EXCLUSIVE, a catalog
-- change); writes to a duplicate row wait while it is archived.
-- Not for the Supabase SQL editor, which sends the whole script as one query: there the first
-- statement refuses, before anything is changed. For the SQL editor, generate the blocking form
-- (alembic -x offline_build=blocking upgrade head --sql).
{run_again}"""
            + single_query_refusal()
            + "\n\n"
        )
    if BLOCKING_BUILD in body:
        return f"""\
-- BLOCKING form, for the Supabase SQL editor (the whole script as one query); psql -f and
-- supabase db push run it too. Each revision is one transaction. Where the unique index must
-- be built (no unique on the key), the table's writes wait from the archive step to the
-- revision's COMMIT while the index builds (SHARE ROW EXCLUSIVE; reads go on until the
-- ACCESS EXCLUSIVE promotion at the end): about as long as scanning and indexing the table
-- takes, which the preflight report estimates. Every other step takes catalog locks only, each
-- at most lock_timeout ({LOCK_TIMEOUT}). For psql and db push, the concurrent form (the default of
-- alembic --sql) builds without blocking writes.
{run_again}"""
    return f"""\
-- For psql -X -v ON_ERROR_STOP=1 -f THIS_FILE, supabase db push or the Supabase SQL editor.
-- Each revision is one transaction; it builds no index concurrently (the blocking and the
-- concurrent form are the same). Strong locks wait at most lock_timeout ({LOCK_TIMEOUT}).
{run_again}"""


def single_query_refusal() -> str:
    """Fails when the script arrives as one query: then current_query() is the whole script,
    CONCURRENTLY included (psql and the CLI send this block alone). Before anything changed."""
    marker = " || ".join(literal(part) for part in CONCURRENT_BUILD.split(" CONCURRENTLY "))
    marker = marker.replace(" || ", " || ' CONCURRENTLY ' || ")
    message = (
        "this script (the concurrent form) was sent as one query, as the Supabase SQL editor"
        " sends it, where CREATE INDEX CONCURRENTLY cannot run; nothing was changed. Run it"
        " with psql -f or supabase db push, or generate the blocking form for the SQL editor"
        " (alembic -x offline_build=blocking upgrade head --sql)"
    )
    body = f"""
BEGIN
    IF pg_catalog.strpos(pg_catalog.current_query(), {marker}) > 0 THEN
        RAISE EXCEPTION USING ERRCODE = {literal(dedupe.REFUSED)}, MESSAGE = {literal(message)};
    END IF;
END
"""
    return f"DO {dollar_quoted(body, 'one_statement_at_a_time')};"


def revision_header(title: str) -> str:
    return f"-- {title}\n"


# Set by a part of a revision for the statements after it in its transaction: what it found to
# do here ('none', 'adopt' for a unique to adopt or drop, 'build' for an index to build).
WORK_SETTING = "alembic_lossless_unique.offline_work"
NONE, ADOPT, BUILD = "none", "adopt", "build"


def work_is(*values: str) -> str:
    """An SQL boolean: this revision is due, and the part before found one of `values` to do."""
    found = f"pg_catalog.current_setting({literal(WORK_SETTING)}, true)"
    return f"({DUE} AND {found} IN ({', '.join(literal(v) for v in values)}))"


def set_work(value: str) -> str:
    """plpgsql: say what this revision has to do here, to the statements after this one."""
    return f"PERFORM pg_catalog.set_config({literal(WORK_SETTING)}, {value}, true);"


def gated(statement: str, condition: str = DUE) -> str:
    """`statement`, run only where `condition` holds (by default: this revision is due). A DO
    block of this package's gets the check as the first statement of its body; any other
    statement is run by a DO block that checks first. (A DO block's DECLARE section still runs:
    this package's only read there.) A statement on the index form's key gets the key's parts
    the script's probe read (offline_key)."""
    statement = offline_key.filled(statement)
    check = f"    IF NOT {condition} THEN RETURN; END IF;"
    if statement.startswith("DO $"):
        marker = statement[3 : statement.index("$", 4) + 1]
        body = statement[len(marker) + 3 : -len(marker)]
        lines = body.split("\n")
        if "BEGIN" not in lines:
            raise ValueError(f"a DO block without a BEGIN line of its own: {statement[:80]}")
        at = lines.index("BEGIN") + 1
        return f"DO {marker}" + "\n".join([*lines[:at], check, *lines[at:]]) + marker
    return executed_when(condition, statement)


def gated_statements(statements: list[str], condition: str = DUE) -> str:
    return ";\n\n".join(gated(statement, condition) for statement in statements)


def private_schema_sql(schema: str) -> str:
    """Create the private schema unless it exists, then refuse it unless it is ours."""
    return ";\n\n".join(private_schema_statements(schema))


def private_schema_statements(schema: str) -> list[str]:
    body = f"""
DECLARE
    problem text := {private_schema.problem_sql(literal(schema))};
BEGIN
    IF problem IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = {literal(dedupe.REFUSED)}, MESSAGE = problem;
    END IF;
END
"""
    return [
        private_schema.create_sql(schema),
        f"DO {dollar_quoted(body, 'private_schema')}",
        private_schema.lock_down_sql(schema),
    ]


def unready_subscribers_sql(
    schemas: list[str],
    ready: tuple[str, ...],
    ddl_command: str,
    *,
    unless_exists: tuple[str, str],
) -> str:
    """A DO block that refuses, before anything is changed, where the script is about to create
    its tables in `schemas` (`unless_exists`, schema and name of the first of them, is missing)
    and a publication
    that would carry them is not declared ready (`ready`: -x subscribers_ready as the script
    was generated). surroundings has the rule and the words."""
    by_version = "\n    ".join(
        f"{keyword} pg_catalog.current_setting('server_version_num')::int >= 150000 THEN\n"
        f"        EXECUTE {literal(unready_publications_sql(schemas, ready, by_schema))}"
        " INTO described, names;"
        for keyword, by_schema in (("IF", True), ("ELSIF", False))
    )
    body = f"""
DECLARE
    described text;
    names text;
BEGIN
    IF {table_exists_sql(*unless_exists)} THEN
        RETURN;
    END IF;
    {by_version}
    END IF;
    IF described IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = {literal(dedupe.REFUSED)},
            MESSAGE = pg_catalog.format({literal(refusal_format(schemas, ddl_command))},
                                        described, names, names);
    END IF;
END
"""
    return f"DO {dollar_quoted(body, 'subscribers_ready')}"


def _announce(target: UniqueTarget) -> str:
    body = f"""
DECLARE
    neighbour record;
BEGIN
    FOR neighbour IN {surroundings_sql(target)} LOOP
        RAISE NOTICE '%: % (%)', pg_catalog.replace(neighbour.kind, '_', ' '), neighbour.name,
                     neighbour.detail;
    END LOOP;
END
"""
    return f"DO {dollar_quoted(body, 'announce')}"


def _record(target: UniqueTarget, action: str, detail: str) -> str:
    return f"INSERT INTO {target.ledger} (action, detail) VALUES ({literal(action)}, {detail});"


def _recreation_record(variable: str) -> str:
    return (
        f"pg_catalog.jsonb_build_object('index_name', {variable}.index_name,"
        f" 'constraint_name', {variable}.constraint_name,"
        f" 'definition', {variable}.definition, 'comment', {variable}.comment,"
        f" 'deferral', {variable}.deferral)"
    )


# The upgrade.


def _execute(operations: Any, sql: str) -> None:
    """Write `sql` into the script verbatim: it may carry a user's SQL (an index expression, a
    predicate) with a colon that text() would take for a parameter and render as NULL."""
    operations.execute(text(sql.replace(":", "\\:")))


def write_upgrade(operations: Any, target: UniqueTarget) -> None:
    """ensure_unique_constraint or ensure_unique_index, offline, in the form the run asks for.
    The index form's key is read by the script itself (offline_key)."""
    context = operations.get_context()
    ready = MigrationSettings.from_context(context).subscribers_ready
    command = project_ddl_command(context.config, subscriber_ddl_command(target))
    if target.is_index:
        target = offline_key.pending(target)
    if form_of(context) == BLOCKING:
        _execute(operations, upgrade_sql(target, ready, command))
        return
    _execute(operations, concurrent_prepare_sql(target, ready, command))
    with context.autocommit_block():  # COMMIT, then BEGIN: the archive step's own transaction
        pass
    _execute(operations, concurrent_archive_sql(target))
    with context.autocommit_block():
        _execute(operations, concurrent_build_sql(target))
    _execute(operations, concurrent_finish_sql(target))


_DECLARE = """
DECLARE
    built_before boolean := false;
    converged boolean;
    main_action text;
    archived jsonb;
    step record;"""


def _read_built_before(target: UniqueTarget) -> str:
    """plpgsql: `built_before` from the ledger, where there is one yet (the plan's input)."""
    return f"""
    IF pg_catalog.to_regclass({literal(target.ledger)}) IS NOT NULL THEN
        EXECUTE {literal("SELECT " + ledger.built_before_sql(target))} INTO built_before;
    END IF;"""


def _read_plan(target: UniqueTarget) -> str:
    """plpgsql: `built_before`, then `converged` and `main_action` from the plan."""
    return f"""{_read_built_before(target)}
    SELECT coalesce(pg_catalog.bool_and(p.action IN ('keep', 'leave_alone')), false),
           (pg_catalog.array_agg(p.action ORDER BY p.position)
                FILTER (WHERE p.action IN ('keep', 'rename', 'promote', 'build')))[1]
      INTO converged, main_action
      FROM ({plan_sql(target, "built_before")}) AS p;"""


def _start_sql(target: UniqueTarget, ready: tuple[str, ...], ddl_command: str) -> str:
    """The checks, then whether the key has anything to do: the statements after this one
    create what the online path's prepare creates only where it has, once no publication
    would carry them to subscribers not declared ready (`ready`, `ddl_command`)."""
    body = f"""{_DECLARE}
BEGIN
{_read_plan(target)}
    IF converged AND NOT {guard.exists_sql(target)} THEN
        RAISE NOTICE 'already converged: % % on % is in place; nothing to do',
                     {literal(target.kind)}, {literal(target.constraint_name)},
                     {literal(target.key_description)};
        {set_work(literal(NONE))}
    ELSE
        {set_work(f"CASE main_action WHEN 'build' THEN {literal(BUILD)} ELSE {literal(ADOPT)} END")}
    END IF;
END
"""
    prepare = [
        unready_subscribers_sql(
            [target.private_schema],
            ready,
            ddl_command,
            unless_exists=(target.private_schema, target.ledger_table),
        ),
        *private_schema_statements(target.private_schema),
        ledger.create_ledger_sql(target),
        dedupe.archive_sql(target),
        private_schema.lock_down_sql(target.private_schema),
        _found_sql(target),
        _announce(target),
    ]
    return f"""\
{gated(checks.upgrade_checks_sql(target, refuse=True, online=False))};

{gated(f"DO {dollar_quoted(body, 'start')}")};

{gated_statements(prepare, work_is(ADOPT, BUILD))}"""


def _found_sql(target: UniqueTarget) -> str:
    """The ledger's first record: the uniques found (what online records as `found`)."""
    found = f"""pg_catalog.jsonb_build_object('uniques', coalesce(
            (SELECT pg_catalog.jsonb_agg(p.description ORDER BY p.position, p.index_name)
               FROM ({plan_sql(target, "built_before")}) AS p
              WHERE p.action NOT IN ('build', 'refuse')), '[]'::jsonb))"""
    body = f"""{_DECLARE}
BEGIN
    IF NOT EXISTS (SELECT 1 FROM {target.ledger}) THEN
        {_record(target, "found", found)}
    ELSE
        RAISE NOTICE 'resuming an interrupted run';
    END IF;
END
"""
    return f"DO {dollar_quoted(body, 'found')}"


def _remove_guard(target: UniqueTarget) -> str:
    """plpgsql: drop a guard that a stopped run left (or this run's, once promoted), and record
    that."""
    drops = "".join(
        f"\n                EXECUTE {literal(s)};" for s in guard.drop_statements(target)
    )
    return f"""IF {guard.exists_sql(target)} THEN{drops}
                EXECUTE {literal(guard.record_removed_sql(target))};
                RAISE NOTICE 'removed the duplicate guard';
            END IF;"""


def _rename(target: UniqueTarget) -> str:
    """plpgsql, for the plan's 'rename': the constraint renamed, or the index form's index."""
    name = literal(target.constraint_name)
    if target.is_index:
        renamed = "pg_catalog.jsonb_build_object('index_name', step.index_name)"
        return f"""
            {_record(target, "renamed", renamed)}
            EXECUTE pg_catalog.format('ALTER INDEX %I.%I RENAME TO %I', {literal(target.schema)},
                                      step.index_name, {name});
            RAISE NOTICE 'renamed index % to %', step.index_name, {name};"""
    renamed = "pg_catalog.jsonb_build_object('constraint_name', step.constraint_name)"
    table = target.qualified_table
    return f"""
            {_record(target, "renamed", renamed)}
            EXECUTE pg_catalog.format('ALTER TABLE {table} RENAME CONSTRAINT %I TO %I',
                                      step.constraint_name, {name});
            RAISE NOTICE 'renamed constraint % to %', step.constraint_name, {name};"""


def _converge_sql(target: UniqueTarget, build: str, tag: str) -> str:
    """The plan's steps, in order, in one block; `build` is what it does for 'build'."""
    name = literal(target.constraint_name)
    table = target.qualified_table
    index_of = f"pg_catalog.format('%I.%I', {literal(target.schema)}, step.index_name)"
    dropped_invalid = "pg_catalog.jsonb_build_object('index_name', step.index_name)"
    comment_off = literal(indexes.set_index_comment_sql(target, target.constraint_name, None))
    body = f"""{_DECLARE}
    operators text[];
BEGIN{_read_built_before(target)}
    FOR step IN {plan_sql(target, "built_before")} LOOP
        CASE step.action
        WHEN 'refuse' THEN
            RAISE EXCEPTION USING ERRCODE = {literal(dedupe.REFUSED)}, MESSAGE = step.description;
        WHEN 'drop_invalid' THEN
            {_record(target, "dropped_invalid", dropped_invalid)}
            EXECUTE 'DROP INDEX IF EXISTS ' || {index_of};
            RAISE NOTICE 'dropped INVALID index %', step.index_name;
        WHEN 'keep' THEN
            {_remove_guard(target)}
            RAISE NOTICE '% % is already there: nothing to build', {literal(target.kind)},
                         {name};
        WHEN 'rename' THEN
            {_remove_guard(target)}{_rename(target)}
        WHEN 'promote' THEN
            {_remove_guard(target)}
            IF NOT step.ours THEN
                {_record(target, "promoted", _recreation_record("step"))}
            END IF;
            EXECUTE pg_catalog.format(
                'ALTER TABLE {table} ADD CONSTRAINT %I UNIQUE USING INDEX %I{target.deferral}',
                {name}, step.index_name);
            IF step.comment IS NOT NULL THEN
                EXECUTE {comment_off};
            END IF;
            RAISE NOTICE 'promoted index % to constraint %', step.index_name, {name};
        WHEN 'build' THEN{build}
        WHEN 'drop_redundant' THEN
            {_record(target, "dropped_redundant", _recreation_record("step"))}
            IF step.constraint_name IS NOT NULL THEN
                EXECUTE pg_catalog.format('ALTER TABLE {table} DROP CONSTRAINT IF EXISTS %I',
                                          step.constraint_name);
            ELSE
                EXECUTE 'DROP INDEX IF EXISTS ' || {index_of};
            END IF;
            RAISE NOTICE 'dropped redundant %', step.description;
        ELSE
            RAISE NOTICE 'left alone %: partial or expression unique', step.description;
        END CASE;
    END LOOP;
END
"""
    return f"DO {dollar_quoted(body, tag)}"


def _dedupe_statements(target: UniqueTarget) -> list[str]:
    """List and move the duplicates (dedupe.py, as online), then record the build."""
    built = f"pg_catalog.jsonb_build_object('index_name', {literal(target.constraint_name)})"
    body = f"""
DECLARE
    archived jsonb;
BEGIN
    SELECT detail INTO archived FROM {target.ledger} WHERE action = 'archived'
     ORDER BY seq DESC LIMIT 1;
    RAISE NOTICE 'archived % rows from % duplicate groups into %', archived->>'rows',
                 archived->>'groups', {literal(target.archive)};
    {_record(target, "built", built)}
END
"""
    return [
        dedupe.list_sql(target, DEDUPE_WORK_MEM),
        dedupe.move_sql(target),
        f"DO {dollar_quoted(body, 'archived')}",
    ]


def _upgrade_heading(target: UniqueTarget) -> str:
    heading = revision_header(f"{target.kind} {target.constraint_name} on {target.key_description}")
    if target.is_index:
        heading += (
            "-- Its key is read as the script runs, from the index built on an empty temporary\n"
            "-- copy of the table. Written for one key column per entry of columns: a key with\n"
            "-- another count is refused there, before anything is changed.\n"
        )
    return heading


def _probe(target: UniqueTarget) -> str:
    """The index form's probe, where the revision is due: its key, as online (offline_key)."""
    if not target.is_index:
        return ""
    return f"\n{gated(offline_key.probe_sql(target))};\n"


def upgrade_sql(
    target: UniqueTarget, ready: tuple[str, ...] = (), ddl_command: str = SUBSCRIBER_DDL
) -> str:
    """The blocking form: one transaction. `ready`, `ddl_command`: see _start_sql."""
    name = literal(target.constraint_name)
    lock = literal(f"LOCK TABLE {target.qualified_table} IN SHARE ROW EXCLUSIVE MODE")
    build = f"""
            -- No duplicate can arrive between the dedupe below and the build.
            EXECUTE {lock};
            {_remove_guard(target)}"""
    promote = (
        ""
        if target.is_index  # the index is the end state
        else f"\n    EXECUTE {literal(indexes.promote_sql(target, target.constraint_name))};"
    )
    built = "built unique index %"
    if not target.is_index:
        built += " and promoted it to the constraint"
    build_body = f"""
BEGIN
    -- Not CONCURRENTLY: this runs inside the revision's transaction.
    EXECUTE {literal(indexes.unique_index_definition(target, target.constraint_name))};{promote}
    RAISE NOTICE {literal(built)}, {name};
END
"""
    building = [*_dedupe_statements(target), f"DO {dollar_quoted(build_body, 'build')}"]
    return f"""\
{_upgrade_heading(target)}
{SESSION};
{_probe(target)}
{_start_sql(target, ready, ddl_command)};

{gated(_converge_sql(target, build, "converge"), work_is(ADOPT, BUILD))};

{BLOCKING_BUILD}, where the table needs its index built: writes wait until COMMIT.
{gated_statements(building, work_is(BUILD))}"""


# The concurrent form, part by part.

# Each key column's operator in the guard's function, as a format() placeholder (see
# _guard_install): markers no real operator text contains.
_OPERATOR_MARK = "\x01operator {}\x01"


def _guard_install(target: UniqueTarget) -> str:
    """plpgsql: guard.install's statements, the operators filled in by the database."""
    marks = {c: _OPERATOR_MARK.format(n) for n, c in enumerate(target.key.columns, 1)}
    templates = []
    # A leftover guard is dropped by _remove_guard first, where there is one.
    new_guard = guard.install_statements(target, marks)[len(guard.drop_statements(target)) :]
    for statement in new_guard:
        template = escape_format(statement)
        for n, mark in enumerate(marks.values(), 1):
            template = template.replace(escape_format(mark), f"%{n}$s")
        templates.append(template)
    operators = guard.operators_sql(target)
    executes = "".join(
        f"\n            EXECUTE pg_catalog.format({literal(t)}, VARIADIC operators);"
        for t in templates
    )
    triggers = f"pg_catalog.to_jsonb({literal_array(target.guard_triggers)})"
    installed = f"pg_catalog.jsonb_build_object('triggers', {triggers})"
    return f"""
            {_remove_guard(target)}
            operators := {operators};{executes}
            {_record(target, "guard_installed", installed)}
            RAISE NOTICE 'installed the duplicate guard: new duplicates of % are rejected now',
                         {literal(target.key_description)};"""


def _lock_for_the_run() -> str:
    """A session advisory lock, on the online migrator's key, from the first part to the last:
    the transactions' own locks end at each COMMIT, and the index build is in none."""
    return f"SELECT pg_catalog.pg_advisory_lock({_LOCK_KEY})"


def concurrent_prepare_sql(
    target: UniqueTarget, ready: tuple[str, ...] = (), ddl_command: str = SUBSCRIBER_DDL
) -> str:
    """Part 1: checks, plan, adoption or drops, and the guard where an index will be built.
    `ready`, `ddl_command`: see _start_sql."""
    return f"""\
{_upgrade_heading(target)}
{SESSION};

{_lock_for_the_run()};
{_probe(target)}
{_start_sql(target, ready, ddl_command)};

{gated(_converge_sql(target, _guard_install(target), "converge"), work_is(ADOPT, BUILD))}"""


def concurrent_archive_sql(target: UniqueTarget) -> str:
    """Part 2: archive the duplicates where this run builds, and point the index statement at
    the table it builds on: this one, or, where it builds nothing, one where it is a no-op."""
    schema, table = target.schema, target.table
    name_taken = f"""EXISTS (SELECT 1 FROM pg_catalog.pg_class c
                     WHERE c.relname = {literal(target.constraint_name)}
                       AND c.relnamespace = pg_catalog.to_regnamespace({literal(schema)}))"""
    stand_in = f"CREATE TEMPORARY TABLE IF NOT EXISTS pg_temp.{ident(table)}" + (
        # The index form's elements read the table's columns: a copy of them (where there is
        # no table, a revision not due here, this fails, naming it: docs/offline-and-preflight).
        f" (LIKE {target.qualified_table})"
        if target.is_index
        else f" ({', '.join(f'{ident(c)} text' for c in target.columns)})"
    )
    # pg_temp named last: a temporary table of the same name must not be found first.
    on_the_table = literal(ident(schema) + ", pg_catalog, pg_temp")
    decide = f"""{_DECLARE}
BEGIN
    IF {DUE} THEN
{_read_plan(target)}
    END IF;
    IF main_action = 'build' THEN
        {set_work(literal(BUILD))}
        PERFORM pg_catalog.set_config('search_path', {on_the_table}, false);
    ELSIF pg_catalog.to_regclass({literal(target.qualified_table)}) IS NOT NULL
          AND {name_taken} THEN
        -- IF NOT EXISTS finds the name taken: nothing is built.
        {set_work(literal(NONE))}
        PERFORM pg_catalog.set_config('search_path', {on_the_table}, false);
    ELSE
        {set_work(literal(NONE))}
        EXECUTE {literal(stand_in)};
        PERFORM pg_catalog.set_config('search_path', 'pg_temp, pg_catalog', false);
    END IF;
    -- For the build, outside any transaction: it waits for old transactions as long as they
    -- last, and takes no lock that blocks writes. The last part resets these.
    PERFORM pg_catalog.set_config('lock_timeout', '0', false);
    PERFORM pg_catalog.set_config('statement_timeout', '0', false);
END
"""
    # Not gated: where the revision is not due, the stand-in is made all the same.
    decide_block = offline_key.filled(f"DO {dollar_quoted(decide, 'decide')}")
    return f"""\
{session_sql(lock_timeout="0")};
{_probe(target)}
-- Where the index is to be built here, the search_path set below names this table; otherwise
-- a temporary stand-in of the same name, on which the build below is a no-op.
{decide_block};

{gated_statements(_dedupe_statements(target), work_is(BUILD))}"""


def concurrent_build_sql(target: UniqueTarget) -> str:
    """Part 3, outside any transaction: the build, on the table the search_path now names."""
    unqualified = indexes.unique_index_definition(target, target.constraint_name).replace(
        f" ON {target.qualified_table} ", f" ON {ident(target.table)} ", 1
    )
    built = indexes.concurrently(indexes.if_not_exists(unqualified))
    if not built.startswith(f"{CONCURRENT_BUILD} "):
        raise ValueError(f"an unexpected concurrent build: {built}")
    return (
        "-- Not schema-qualified on purpose: the block above chose the table through the\n"
        "-- search_path (this table where this run builds; otherwise a temporary stand-in).\n"
        + built
    )


def concurrent_finish_sql(target: UniqueTarget) -> str:
    """Part 4: promote the index to the constraint and remove the guard; an index that the
    build did not leave valid stops the script, and a new run builds it again."""
    incomplete = (
        f"the concurrent build of unique index {target.constraint_name} on"
        f" {target.key_description} did not leave a valid index (an INVALID one of that name"
        " was kept, or it is gone); this step changed nothing: run the script again, which"
        " drops an INVALID index and builds it once more"
    )
    build = f"""
            RAISE EXCEPTION USING ERRCODE = {literal(dedupe.CHECK_FAILED)},
                MESSAGE = {literal(incomplete)};"""
    decide = f"""{_DECLARE}
BEGIN
{_read_plan(target)}
    IF converged AND NOT {guard.exists_sql(target)} THEN
        {set_work(literal(NONE))}  -- the first part found nothing to build
    ELSE
        {set_work(literal(ADOPT))}
    END IF;
END
"""
    restore_session = f"""
BEGIN
    EXECUTE 'RESET search_path';
    EXECUTE 'RESET lock_timeout';
    EXECUTE 'RESET statement_timeout';
    IF pg_catalog.to_regclass({literal(f"pg_temp.{ident(target.table)}")}) IS NOT NULL THEN
        DROP TABLE pg_temp.{ident(target.table)};
    END IF;
END
"""
    return f"""\
{SESSION};
{_probe(target)}
{gated(f"DO {dollar_quoted(decide, 'decide')}")};

{gated(_converge_sql(target, build, "promote"), work_is(ADOPT))};

DO {dollar_quoted(restore_session, "session")};

SELECT pg_catalog.pg_advisory_unlock({_LOCK_KEY})"""


# The downgrade: one transaction, whichever path (online or offline) wrote the ledger.


def _recreate(target: UniqueTarget, detail: str) -> str:
    """The unique a step's detail describes, unless its constraint is back already (plpgsql)."""
    table = target.qualified_table
    return f"""
        IF {detail}->>'constraint_name' IS NULL OR NOT EXISTS (
               SELECT 1 FROM pg_catalog.pg_constraint
                WHERE conrelid = {literal(table)}::pg_catalog.regclass
                  AND conname = {detail}->>'constraint_name') THEN
            EXECUTE pg_catalog.format('DROP INDEX IF EXISTS %I.%I', {literal(target.schema)},
                                      {detail}->>'index_name');
            EXECUTE {detail}->>'definition';
            IF {detail}->>'comment' IS NOT NULL THEN
                EXECUTE pg_catalog.format('COMMENT ON INDEX %I.%I IS %L', {literal(target.schema)},
                                          {detail}->>'index_name', {detail}->>'comment');
            END IF;
            IF {detail}->>'constraint_name' IS NOT NULL THEN
                EXECUTE pg_catalog.format(
                    'ALTER TABLE {table} ADD CONSTRAINT %I UNIQUE USING INDEX %I',
                    {detail}->>'constraint_name', {detail}->>'index_name')
                    || coalesce({detail}->>'deferral', '');
            END IF;
            RAISE NOTICE 'recreated %', {detail}->>'index_name';
        END IF;"""


def _rename_back(target: UniqueTarget) -> str:
    """plpgsql, for the ledger's 'renamed' (its `detail`): the old name back, unless it is."""
    name = literal(target.constraint_name)
    if target.is_index:
        return f"""
            IF pg_catalog.to_regclass(pg_catalog.format('%I.%I', {literal(target.schema)},
                                                        detail->>'index_name')) IS NULL THEN
                EXECUTE pg_catalog.format('ALTER INDEX %I.%I RENAME TO %I',
                                          {literal(target.schema)}, {name},
                                          detail->>'index_name');
            END IF;"""
    table = target.qualified_table
    return f"""
            IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint
                            WHERE conrelid = {literal(table)}::pg_catalog.regclass
                              AND conname = detail->>'constraint_name') THEN
                EXECUTE pg_catalog.format('ALTER TABLE {table} RENAME CONSTRAINT %I TO %I',
                                          {name}, detail->>'constraint_name');
            END IF;"""


def write_downgrade(operations: Any, target: UniqueTarget) -> None:
    _execute(operations, downgrade_sql(target))


def downgrade_sql(target: UniqueTarget) -> str:
    """undo_unique_constraint or undo_unique_index: the checks, the uniques the upgrade found,
    the archived rows and the re-pointed child rows back, the private objects gone."""
    table = target.qualified_table
    every_step = f"SELECT action, detail FROM {target.ledger} ORDER BY seq DESC"
    latest_constraint_step = (
        f"SELECT action, detail FROM {target.ledger}"
        " WHERE action IN ('built', 'renamed', 'promoted') ORDER BY seq DESC LIMIT 1"
    )
    body = f"""
DECLARE
    step record;
    detail jsonb;
BEGIN
    IF pg_catalog.to_regclass({literal(target.ledger)}) IS NULL
       AND pg_catalog.to_regclass({literal(target.archive)}) IS NULL THEN
        RAISE NOTICE 'nothing to undo: % has no ledger, so its upgrade changed nothing',
                     {literal(target.key_description)};
        {set_work(literal(NONE))}
        RETURN;
    END IF;
    {set_work(literal(ADOPT))}
    EXECUTE {literal(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")};
    IF pg_catalog.to_regclass({literal(target.ledger)}) IS NULL THEN
        RETURN;
    END IF;
    -- The uniques the upgrade dropped as redundant, latest first.
    FOR step IN EXECUTE {literal(every_step)} LOOP
        detail := step.detail;
        IF step.action = 'dropped_redundant' THEN
{_recreate(target, "detail")}
        END IF;
    END LOOP;
    -- The target constraint: the latest of built, renamed or promoted, undone.
    FOR step IN EXECUTE {literal(latest_constraint_step)} LOOP
        detail := step.detail;
        IF step.action = 'built' THEN
            EXECUTE {literal(indexes.drop_target_sql(target))};
        ELSIF step.action = 'renamed' THEN{_rename_back(target)}
        ELSE
            -- The constraint (and its index) go before the original returns: it may share
            -- the name, and the lock is held to the end anyway.
            EXECUTE {literal(indexes.drop_constraint_sql(target, target.constraint_name))};
{_recreate(target, "detail")}
        END IF;
    END LOOP;
END
"""
    return f"""\
{revision_header(f"undo {target.kind} {target.constraint_name} on {target.key_description}")}
{SESSION};

{gated(checks.downgrade_checks_sql(target, refuse=True, online=False))};

{gated(f"DO {dollar_quoted(body, 'undo')}")};

{gated_statements([restore.restore_sql(target), restore.cleanup_sql(target)], work_is(ADOPT))}"""
