"""Alembic environment: the migrator's session from alembic_lossless_unique (DATABASE_URL in,
pooler refusal, a safe search_path, one migrator at a time, one-line errors out), the version
table in the private schema, and autogenerate limited to the tables this package owns, writing
op.ensure_unique_constraint where it would write create_unique_constraint."""

from alembic import context
from sqlalchemy import MetaData

from alembic_lossless_unique import run_migrations, safe_unique_constraints
from app import baseline
from app.names import OWNED_TABLES, PRIVATE_SCHEMA, SUBSCRIBER_DDL_COMMAND

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
    from app.models import Base

    return Base.metadata


def include_name(name: str | None, type_: str, parent_names: dict) -> bool:
    """Reflect only what this package owns: never propose dropping the app's other tables."""
    if type_ == "table":
        return name in OWNED_TABLES
    return True


def include_object(obj: object, name: str | None, type_: str, reflected: bool, compare_to) -> bool:
    """The model side of the same rule: compare only what this package owns."""
    return include_name(name, type_, {})


run_migrations(
    context,
    application_name="alembic meta_assets_cache",
    prepare=baseline.prepare,
    offline_preamble=baseline.offline_preamble(),
    subscriber_ddl_command=SUBSCRIBER_DDL_COMMAND,
    target_metadata=models_metadata(),
    version_table_schema=PRIVATE_SCHEMA,
    include_name=include_name,
    include_object=include_object,
    compare_type=True,
    compare_server_default=True,
    process_revision_directives=safe_unique_constraints,
)
