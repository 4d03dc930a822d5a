"""The benchmark's partitioned section: this package's session, the version table in the
app's private schema, nothing else of the app's environment (its baseline expects its own
table's primary key)."""

from logging.config import fileConfig

from alembic import context

from alembic_lossless_unique import run_migrations
from app.names import PRIVATE_SCHEMA

if context.config.config_file_name is not None:
    fileConfig(context.config.config_file_name, disable_existing_loggers=False)

run_migrations(
    context,
    application_name="alembic bench partitioned",
    version_table_schema=PRIVATE_SCHEMA,
)
