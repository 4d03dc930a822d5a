"""One call in an Alembic env.py gives every migration this package's session:

    from alembic import context
    from alembic_lossless_unique import run_migrations

    run_migrations(context, target_metadata=Base.metadata)

- the database URL from DATABASE_URL (or sqlalchemy.url), read as libpq reads it;
- a refusal, before anything is changed, behind a transaction-mode connection pooler;
- a fixed, safe search_path, and the session reset (DISCARD ALL) when it ends;
- one migrator at a time (an advisory lock; a second one waits, then finds the work done);
- the migration's readable summary on stderr, and "nothing to do" when there is nothing to do;
- every failure as one `FAILED: ...` line, with no password in it.

Keyword arguments go to `context.configure`; `prepare(db)` runs under the migrator lock before
Alembic touches its version table (checks that must come before anything is created).
"""

import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar, cast

from alembic.util import CommandError
from sqlalchemy import Connection, Engine
from sqlalchemy.engine import URL

from alembic_lossless_unique.ddl import ledger, private_schema
from alembic_lossless_unique.ddl.sqltext import qualified
from alembic_lossless_unique.operations import offline
from alembic_lossless_unique.reports import expected_plan
from alembic_lossless_unique.runtime import drivers, pending, rerunnable, session, surroundings
from alembic_lossless_unique.runtime.database import Database
from alembic_lossless_unique.runtime.database_url import DatabaseUrlError, database_url, one_line
from alembic_lossless_unique.runtime.errors import MigrationAbort
from alembic_lossless_unique.runtime.locks import one_migrator_at_a_time
from alembic_lossless_unique.runtime.settings import MigrationSettings

if TYPE_CHECKING:
    from alembic.runtime.environment import IncludeNameFn, NameFilterParentNames, NameFilterType

LOGGER = "alembic_lossless_unique"
log = logging.getLogger(LOGGER)

# Alembic's own lines that say nothing to the person deploying.
_ALEMBIC_NOISE = ("Context impl ", "Will assume ")
# Noted on a connection handed in already inside a transaction: nothing may be committed early.
CALLERS_TRANSACTION = "lossless_unique_callers_transaction"


def run_migrations(
    context: Any,
    *,
    url: str | URL | None = None,
    connection: Connection | None = None,
    application_name: str = "alembic",
    app_schema: str = session.DEFAULT_APP_SCHEMA,
    prepare: Callable[[Database], None] | None = None,
    offline_preamble: str = "",
    subscriber_ddl_command: str | None = None,
    **configure: Any,
) -> None:
    """Run `alembic upgrade/downgrade/...` online or offline (--sql) with this package's
    session; see the module."""
    show_progress()
    if subscriber_ddl_command:
        context.config.attributes[surroundings.DDL_COMMAND_ATTRIBUTE] = subscriber_ddl_command
    try:
        plan_request = context.config.attributes.get(pending.PLAN_REQUEST)
        if plan_request is not None:  # `python -m alembic_lossless_unique plan`: read only
            plan_request(
                context,
                url=url,
                connection=connection,
                application_name=application_name,
                app_schema=app_schema,
                configure=configure,
            )
        elif context.is_offline_mode():
            private_version_table = _private_version_table(context, configure)
            # Named, so that the script's own search_path plays no part in finding it.
            configure.setdefault("version_table_schema", app_schema)
            run_offline(
                context,
                url=url,
                preamble=offline_preamble,
                private_version_table=private_version_table,
                **configure,
            )
        else:
            run_online(
                context,
                url=url,
                connection=connection,
                application_name=application_name,
                app_schema=app_schema,
                prepare=prepare,
                **configure,
            )
    except (MigrationAbort, DatabaseUrlError) as error:
        raise CommandError(str(error)) from None


def show_progress() -> None:
    """The migration's INFO lines reach stderr even when the project's logging config does not
    name this package's logger; Alembic's FAILED line is not repeated as an ERROR log line."""
    logger = logging.getLogger(LOGGER)
    # fileConfig() in env.py disables every logger that exists by then, and this one does: the
    # env.py imported this package first.
    logger.disabled = False
    if not _has_handler(logger):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)-5.5s [%(name)s] %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    if logger.level == logging.NOTSET or logger.level > logging.INFO:
        logger.setLevel(logging.INFO)
    logging.getLogger("alembic.util.messaging").addFilter(
        lambda record: record.levelno < logging.ERROR
    )
    logging.getLogger("alembic.runtime.migration").addFilter(
        lambda record: not str(record.msg).startswith(_ALEMBIC_NOISE)
    )


def _has_handler(logger: logging.Logger) -> bool:
    current: logging.Logger | None = logger
    while current is not None:
        if current.handlers and current.level <= logging.INFO:
            return True
        if not current.propagate:
            return False
        current = current.parent
    return False


def run_offline(
    context: Any,
    *,
    url: str | URL | None,
    preamble: str,
    private_version_table: tuple[str, str, str] | None,
    **configure: Any,
) -> None:
    """`alembic --sql`: a script that can always be run again (rerunnable.py), headed by what
    form it is (offline.py) and, where its version table is private, by the replication
    refusal; `preamble` (the env's own checks) runs before the revisions."""
    target = _url(context, url, required=False)
    # A bad -x fails before any output; expect_plan needs the database.
    settings = MigrationSettings.from_config(context.config)
    if settings.expect_plan:
        raise MigrationAbort(
            "expect_plan is checked against the database by the online run: a --sql script"
            " cannot check it (review the script itself, or run `alembic upgrade` online)"
        )
    context.configure(
        url=target.render_as_string(hide_password=True) if target else "postgresql://",
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        transaction_per_migration=True,
        **configure,
    )
    migration_context = context.get_context()
    hooks = rerunnable.make_rerunnable(migration_context, context.script)
    with rerunnable.captured_output(migration_context.impl) as script:
        if preamble:
            migration_context.impl.static_output(preamble)
        with context.begin_transaction():
            context.run_migrations()
    hooks.finish()
    refusal = ""
    if private_version_table:
        schema, table, command = private_version_table
        refusal = offline.unready_subscribers_sql(
            [schema], settings.subscribers_ready, command, unless_exists=(schema, table)
        )
    output = migration_context.impl.output_buffer
    output.write(offline.script_header(script.getvalue(), refusal) + script.getvalue())
    output.flush()


def run_online(
    context: Any,
    *,
    url: str | URL | None,
    connection: Connection | None,
    application_name: str,
    app_schema: str,
    prepare: Callable[[Database], None] | None,
    **configure: Any,
) -> None:
    settings = MigrationSettings.from_config(context.config)

    def migrate(migrator: Connection) -> None:
        with one_migrator_at_a_time(migrator, settings):
            run_on(context, migrator, settings, app_schema, prepare, configure)

    injected = connection or context.config.attributes.get("connection")
    on_migrator_connection(context, injected, url, application_name, app_schema, migrate)


def run_on(
    context: Any,
    connection: Connection,
    settings: MigrationSettings,
    app_schema: str,
    prepare: Callable[[Database], None] | None,
    configure: dict[str, Any],
) -> None:
    """The environment's own steps, then Alembic's, on the migrator's connection."""
    private_version_table = _private_version_table(context, configure)
    with own_steps(connection, settings) as db:
        refuse_upgrade_over_a_stopped_rollback(context, db)
        expected_plan.refuse_unless_expected(
            context,
            connection,
            db,
            {"version_table_schema": app_schema, **configure},
        )
        if private_version_table:
            schema, table, command = private_version_table
            # Before anything is written (prepare's own steps included): a publication that
            # would carry the new version table stops a subscriber lacking it at its first row.
            if not db.scalar("SELECT " + surroundings.table_exists_sql(schema, table)):
                surroundings.refuse_unready_subscribers(db, [schema], command)
        if prepare is not None:
            prepare(db)
        if private_version_table:
            schema, table, _ = private_version_table
            ensure_version_table(db, schema, table)
        else:  # named, so that the search_path plays no part in finding it
            configure["version_table_schema"] = app_schema
    configure["include_name"] = _without_version_table(
        configure.get("include_name"),
        configure["version_table_schema"],
        configure.get("version_table", "alembic_version"),
        app_schema,
    )
    applied: list[Any] = []
    context.configure(
        connection=connection,
        transaction_per_migration=True,
        on_version_apply=[
            *_as_list(configure.pop("on_version_apply", [])),
            lambda **kw: applied.append(kw["step"]),
        ],
        **configure,
    )
    with context.begin_transaction():
        context.run_migrations()
    if not applied and _command(context) in ("upgrade", "downgrade"):
        heads = context.get_context().get_current_heads()
        log.info(
            "nothing to do: the database is at %s",
            ", ".join(heads) if heads else "base (no revision applied)",
        )


@contextmanager
def own_steps(connection: Connection, settings: MigrationSettings) -> Iterator[Database]:
    """A session for the environment's own steps before Alembic starts: autocommit, each step
    its own transaction; or savepoints inside a caller's transaction."""
    if connection.in_transaction() and connection.info.get(CALLERS_TRANSACTION):
        yield Database(connection, settings, concurrent=False)
        return
    connection.commit()
    level = connection.get_isolation_level()
    connection.execution_options(isolation_level="AUTOCOMMIT")
    try:
        yield Database(connection, settings)
    finally:
        if not connection.closed and not connection.invalidated:
            connection.rollback()  # ends SQLAlchemy's own notion of a transaction; nothing is open
            connection.execution_options(isolation_level=level)


def _private_version_table(context: Any, configure: dict[str, Any]) -> tuple[str, str, str] | None:
    """(schema, table, the command printing a subscriber's DDL) of a version table env.py
    keeps in a schema of its choosing (a private one), else None."""
    if "version_table_schema" not in configure:
        return None
    schema = configure["version_table_schema"]
    table = configure.get("version_table", "alembic_version")
    default = surroundings.version_table_ddl_command(schema, table)
    return schema, table, surroundings.project_ddl_command(context.config, default)


def _without_version_table(
    include_name: "IncludeNameFn | None", schema: str, table: str, default_schema: str
) -> "IncludeNameFn":
    """Alembic leaves its version table out of autogenerate only under the schema name it was
    given, but reflects the default schema's tables with none: named `public`, the version table
    would be proposed for dropping by `alembic check`."""

    def include(
        name: str | None, type_: "NameFilterType", parent_names: "NameFilterParentNames"
    ) -> bool:
        schema_name = parent_names.get("schema_name") or default_schema
        if type_ == "table" and name == table and schema_name == schema:
            return False
        return include_name(name, type_, parent_names) if include_name else True

    return include


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else [value]


def refuse_upgrade_over_a_stopped_rollback(context: Any, db: Database) -> None:
    """A rollback that restores in batches and was stopped midway leaves the database at the
    upgraded revision with no unique on the key and part of its rows back: an upgrade would
    find that revision applied and do nothing (or build the next ones on that). Only running
    the rollback again finishes it."""
    if _command(context) != "upgrade":
        return
    stopped = ledger.stopped_rollbacks(db)
    if stopped:
        raise MigrationAbort(
            f"a rollback of {stopped[0]} stopped midway: the table has no such unique and part"
            " of its archived rows are back; run the same `alembic downgrade` again to finish"
            " it, then upgrade"
            + (f" ({len(stopped) - 1} more stopped like it)" if len(stopped) > 1 else "")
        )


def _command(context: Any) -> str:
    command = getattr(context.config.cmd_opts, "cmd", None)
    return command[0].__name__ if command else ""


def ensure_version_table(db: Database, schema: str, table: str) -> None:
    """A version table in a private schema (not the API-exposed public one): the schema is used
    only when the migrating role owns it or creates it now, and the table is created here,
    closed to every other role, before Alembic looks for it (inside a caller's transaction, as
    savepoints of it)."""
    private_schema.ensure(db, schema)
    with db.transaction():
        db.execute(
            f"CREATE TABLE IF NOT EXISTS {qualified(schema, table)} ("
            " version_num varchar(32) NOT NULL,"
            f" CONSTRAINT {table}_pkc PRIMARY KEY (version_num))"
        )
        db.execute(private_schema.lock_down_sql(schema))


def _url(context: Any, url: str | URL | None, *, required: bool = True) -> URL | None:
    if isinstance(url, URL):
        return url
    raw = url or os.environ.get("DATABASE_URL") or context.config.get_main_option("sqlalchemy.url")
    if not raw and not required:
        return None
    return database_url({"DATABASE_URL": raw or ""})


R = TypeVar("R")


def on_migrator_connection(
    context: Any,
    injected: Any,
    url: str | URL | None,
    application_name: str,
    app_schema: str,
    work: Callable[[Connection], R],
) -> R:
    """`work(connection)` on a connection with the migrator's session, whoever made it: the one
    a caller handed Alembic (config.attributes["connection"]: a Connection, an Engine, or
    something with a connect() that hands out a connection, as pytest-alembic's stand-in for an
    engine does), or a new one to DATABASE_URL, through any driver, sync or async. Failures as
    one line."""
    target: URL | None = None
    try:
        if isinstance(injected, Engine):
            target = injected.url
            session.refuse_transaction_pooler(target)
            session.secure(injected, app_schema)
            with injected.connect() as connection:  # reset (DISCARD ALL) when it goes back
                return work(connection)
        if injected is not None and not isinstance(injected, Connection):
            with injected.connect() as connection:
                target = connection.engine.url
                return on_callers_connection(connection, app_schema, application_name, work)
        if injected is not None:
            target = injected.engine.url
            return on_callers_connection(injected, app_schema, application_name, work)
        target = cast(URL, _url(context, url))  # required: never None
        session.refuse_transaction_pooler(target)  # before the migrator's session sets a thing
        return session.connected(target, application_name, work, app_schema=app_schema)
    except drivers.database_errors() as error:
        raise CommandError(f"database error: {one_line(error, target)}") from None


def on_callers_connection(
    connection: Connection, app_schema: str, application_name: str, work: Callable[[Connection], R]
) -> R:
    """A connection the caller made and keeps: whether it is inside a transaction is noted
    (nothing may then be committed early), and its search_path and application_name are given
    back afterwards."""
    session.refuse_transaction_pooler(
        connection.engine.url, in_run_sync=connection.dialect.is_async
    )
    connection.info[CALLERS_TRANSACTION] = connection.in_transaction()
    with session.kept_session(connection, app_schema, application_name):
        return work(connection)
