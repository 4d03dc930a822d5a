"""The shop's environment for an async driver: Alembic's async template (`alembic init -t
async`), with run_migrations where the template configures the context and runs the migrations.
tests/test_foreign_project.py copies it over env.py and sets DATABASE_URL to a
postgresql+asyncpg:// or postgresql+psycopg_async:// URL.

The template's engine connects before run_migrations is called: the pooler refusal, the safe
search_path and the migrator's session start from run_migrations on.
"""

import asyncio
import os
from logging.config import fileConfig

from alembic import context
from sqlalchemy import pool
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import async_engine_from_config

from alembic_lossless_unique import run_migrations, safe_unique_constraints
from app.models import Base

config = context.config

if config.config_file_name is not None:
    fileConfig(config.config_file_name)

target_metadata = Base.metadata
settings = dict(
    application_name="alembic shop",
    target_metadata=target_metadata,
    compare_type=True,
    compare_server_default=True,
    process_revision_directives=safe_unique_constraints,
)


def run_migrations_offline() -> None:
    """Run migrations in 'offline' mode: the standalone script for psql."""
    run_migrations(context, **settings)


def do_run_migrations(connection: Connection) -> None:
    run_migrations(context, connection=connection, **settings)


async def run_async_migrations() -> None:
    """In this scenario we need to create an Engine
    and associate a connection with the context.

    """

    connectable = async_engine_from_config(
        config.get_section(config.config_ini_section, {}),
        prefix="sqlalchemy.",
        poolclass=pool.NullPool,
        url=os.environ["DATABASE_URL"],
    )

    async with connectable.connect() as connection:
        await connection.run_sync(do_run_migrations)

    await connectable.dispose()


def run_migrations_online() -> None:
    """Run migrations in 'online' mode."""

    asyncio.run(run_async_migrations())


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
