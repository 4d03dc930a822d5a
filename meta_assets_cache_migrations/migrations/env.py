"""Alembic environment: DATABASE_URL in, one migrator at a time, one-line errors out."""

import os

from alembic import context
from alembic.util import CommandError
from sqlalchemy import Connection, MetaData
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError

from alembic_lossless_unique import offline
from alembic_lossless_unique.database import CALLERS_TRANSACTION
from alembic_lossless_unique.database_url import DatabaseUrlError, engine_for, one_line
from alembic_lossless_unique.database_url import database_url as parse_database_url
from alembic_lossless_unique.errors import MigrationAbort
from alembic_lossless_unique.locks import one_migrator_at_a_time
from alembic_lossless_unique.names import OWNED_TABLES
from alembic_lossless_unique.settings import MigrationSettings

config = context.config
if config.config_file_name is not None and not config.attributes.get("skip_logging_config"):
    from logging.config import fileConfig

    fileConfig(config.config_file_name, disable_existing_loggers=False)

# These never compare the database with the models. Loading the models imports the ORM, a tenth
# of the start-up of an `alembic upgrade` that finds nothing to do.
COMMANDS_WITHOUT_MODELS = frozenset({"upgrade", "downgrade", "stamp", "current", "history"})


def models_metadata() -> MetaData | None:
    command = getattr(config.cmd_opts, "cmd", None)
    if command and command[0].__name__ in COMMANDS_WITHOUT_MODELS:
        return None
    from meta_assets_cache_migrations.models import Base

    return Base.metadata


target_metadata = models_metadata()


def include_name(name: str | None, type_: str, parent_names: dict) -> bool:
    """Reflect only what this package owns: never propose dropping the app's other tables."""
    if type_ == "table":
        return name in OWNED_TABLES
    return True


def include_object(obj: object, name: str | None, type_: str, reflected: bool, compare_to) -> bool:
    """The model side of the same rule: compare only what this package owns."""
    return include_name(name, type_, {})


def database_url() -> URL:
    try:
        return parse_database_url()
    except DatabaseUrlError as error:
        raise CommandError(str(error)) from None


def run_migrations_offline() -> None:
    context.configure(
        url=database_url().render_as_string(hide_password=True)
        if os.environ.get("DATABASE_URL")
        else "postgresql://",
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        transaction_per_migration=True,
        include_name=include_name,
        include_object=include_object,
    )
    context.get_context().impl.static_output(offline.PREAMBLE)
    with context.begin_transaction():
        context.run_migrations()


def configure_and_run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        transaction_per_migration=True,
        include_name=include_name,
        include_object=include_object,
        compare_type=True,
        compare_server_default=True,
    )
    settings = MigrationSettings.from_config(config)
    config.attributes[CALLERS_TRANSACTION] = connection.in_transaction()
    with one_migrator_at_a_time(connection, settings), context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    injected = config.attributes.get("connection")  # pytest-alembic and embedding programs
    if isinstance(injected, Connection):
        configure_and_run(injected)
        return
    if injected is not None:  # an Engine, or anything else that hands out a connection
        with injected.connect() as connection:
            configure_and_run(connection)
        return
    url = database_url()
    engine = engine_for(url, "alembic meta_assets_cache")
    try:
        with engine.connect() as connection:
            configure_and_run(connection)
    except DBAPIError as error:
        raise CommandError(f"database error: {one_line(error, url)}") from None
    finally:
        engine.dispose()


try:
    if context.is_offline_mode():
        run_migrations_offline()
    else:
        run_migrations_online()
except MigrationAbort as abort:
    raise CommandError(str(abort)) from None
