"""The shop's Alembic environment: Alembic's usual template, with the migrator's session (the
DATABASE_URL, the migrator lock, the readable summary, one-line errors) from one call, and
autogenerate writing op.ensure_unique_constraint where it would write create_unique_constraint."""

from logging.config import fileConfig

from alembic import context

from alembic_lossless_unique import run_migrations, safe_unique_constraints
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
    process_revision_directives=safe_unique_constraints,
)
