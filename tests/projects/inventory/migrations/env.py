"""The inventory project's Alembic environment: the migrator's session, the migrator lock and
the readable summary come from one call. The version table lives in the private schema
`inventory_private`, beside what revision 0002 archives; autogenerate compares the `inventory`
schema only."""

from logging.config import fileConfig

from alembic import context
from warehouse.models import metadata

from alembic_lossless_unique import run_migrations

if context.config.config_file_name is not None:
    # Keeps the loggers that exist already, alembic_lossless_unique's among them.
    fileConfig(context.config.config_file_name, disable_existing_loggers=False)


def include_name(name: str | None, type_: str, parent_names: dict) -> bool:
    if type_ == "schema":
        return name == "inventory"
    return True


run_migrations(
    context,
    application_name="alembic inventory",
    target_metadata=metadata,
    version_table_schema="inventory_private",
    include_schemas=True,
    include_name=include_name,
    compare_type=True,
    compare_server_default=True,
)
