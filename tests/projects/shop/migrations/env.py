"""The shop's Alembic environment: Alembic's usual template, with the migrator's session (the
DATABASE_URL, the migrator lock, the readable summary, one-line errors) from one call.

Autogenerate compares the shop's tables and the table the meta_assets_cache branch owns, not
`workspaces`, which that branch creates only when missing and models only as the target of a
foreign key."""

from logging.config import fileConfig

from alembic import context
from app.models import Base

from alembic_lossless_unique import run_migrations
from meta_assets_cache_migrations.models import Base as MetaAssetsCacheBase
from meta_assets_cache_migrations.names import OWNED_TABLES as META_ASSETS_CACHE_TABLES

config = context.config
if config.config_file_name is not None:
    fileConfig(config.config_file_name)

COMPARED_TABLES = frozenset(Base.metadata.tables) | META_ASSETS_CACHE_TABLES


def include_name(name: str | None, type_: str, parent_names: dict) -> bool:
    """The database side: reflect only the compared tables."""
    return type_ != "table" or name in COMPARED_TABLES


def include_object(obj, name: str | None, type_: str, reflected: bool, compare_to) -> bool:
    """The model side of the same rule (MetaAssetsCacheBase also declares `workspaces`)."""
    return type_ != "table" or name in COMPARED_TABLES


run_migrations(
    context,
    application_name="alembic shop",
    target_metadata=[Base.metadata, MetaAssetsCacheBase.metadata],
    include_name=include_name,
    include_object=include_object,
    compare_type=True,
    compare_server_default=True,
)
