"""The model of inventory.stock_counts as it is once revision 0002 has run."""

from sqlalchemy import (
    ARRAY,
    BigInteger,
    Column,
    Computed,
    DateTime,
    Identity,
    Integer,
    MetaData,
    Numeric,
    Table,
    Text,
    UniqueConstraint,
    text,
)

metadata = MetaData()

stock_counts = Table(
    "stock_counts",
    metadata,
    Column("id", BigInteger, Identity(always=True), primary_key=True),
    Column("warehouse_id", Integer),
    Column("sku", Text),
    Column("Batch Code", Text),
    Column("quantity", Integer, nullable=False, server_default=text("0")),
    Column("unit_cost", Numeric(12, 2)),
    Column("total_value", Numeric, Computed("quantity * unit_cost", persisted=True)),
    Column("revision", Integer),
    Column("recorded_at", DateTime(timezone=True)),
    Column("tags", ARRAY(Text)),
    Column("note", Text),
    UniqueConstraint(
        "warehouse_id", "sku", "Batch Code", name="stock_counts_warehouse_sku_batch_key"
    ),
    schema="inventory",
)
