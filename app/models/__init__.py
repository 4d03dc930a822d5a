from app.models.base import OWNED_TABLES, Base
from app.models.meta_assets_cache import CANONICAL_UNIQUE_NAME, MetaAssetsCache

__all__ = ["CANONICAL_UNIQUE_NAME", "OWNED_TABLES", "Base", "MetaAssetsCache"]
