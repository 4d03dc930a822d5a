import uuid
from datetime import datetime

from sqlalchemy import DateTime, ForeignKey, Index, Text, UniqueConstraint, desc, text
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base
from app.names import CANONICAL_UNIQUE_NAME


class MetaAssetsCache(Base):
    """The WhatsApp Business assets cache, upserted on (workspace_id, phone_number_id)."""

    __tablename__ = "meta_assets_cache"
    __table_args__ = (
        UniqueConstraint("workspace_id", "phone_number_id", name=CANONICAL_UNIQUE_NAME),
        Index("idx_meta_assets_cache_workspace", "workspace_id"),
        Index("idx_meta_assets_cache_ws_waba", "workspace_id", "waba_id"),
        Index(
            "idx_meta_assets_cache_last_synced",
            "workspace_id",
            desc("last_synced_at").nulls_last(),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(
        primary_key=True, server_default=text("gen_random_uuid()")
    )
    workspace_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("workspaces.id", ondelete="CASCADE"), nullable=False
    )
    business_id: Mapped[str | None] = mapped_column(Text)
    waba_id: Mapped[str | None] = mapped_column(Text)
    # NULL for rows written by the business-intelligence job: NULLs never conflict, by design.
    phone_number_id: Mapped[str | None] = mapped_column(Text)
    display_phone_number: Mapped[str | None] = mapped_column(Text)
    verified_name: Mapped[str | None] = mapped_column(Text)
    quality_rating: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=text("now()")
    )
    last_synced_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str | None] = mapped_column(Text)
