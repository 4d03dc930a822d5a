"""The shop's Alembic environment: Alembic's usual template, with the migrator's session (the
DATABASE_URL, the migrator lock, the readable summary, one-line errors) from one call."""

from logging.config import fileConfig

from alembic import context

from alembic_lossless_unique import run_migrations
from app.models import Base

config = context.config
if config.config_file_name is not None:
    fileConfig(config.config_file_name)

run_migrations(
    context,
    application_name="alembic shop",
    target_metadata=Base.metadata,
    compare_type=True,
    compare_server_default=True,
)
