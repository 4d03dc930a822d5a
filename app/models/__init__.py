from app.models.base import Base
from app.models.meta_assets_cache import MetaAssetsCache

__all__ = ["Base", "MetaAssetsCache"]
