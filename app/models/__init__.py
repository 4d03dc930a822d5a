from app.migration_helpers.names import CANONICAL_UNIQUE_NAME, OWNED_TABLES
from app.models.base import Base
from app.models.meta_assets_cache import MetaAssetsCache

__all__ = ["CANONICAL_UNIQUE_NAME", "OWNED_TABLES", "Base", "MetaAssetsCache"]
