from meta_assets_cache_migrations.models.base import Base
from meta_assets_cache_migrations.models.meta_assets_cache import MetaAssetsCache

__all__ = ["Base", "MetaAssetsCache"]
