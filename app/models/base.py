from sqlalchemy import Column, Table, Uuid
from sqlalchemy.orm import DeclarativeBase


class Base(DeclarativeBase):
    pass


# The app owns `workspaces`; it is declared here only so the foreign key resolves.
# Autogenerate compares just the tables this package owns (names.OWNED_TABLES).
workspaces = Table("workspaces", Base.metadata, Column("id", Uuid, primary_key=True))
