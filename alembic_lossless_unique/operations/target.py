"""What one `ensure_unique_constraint` acts on: a table, its key columns, which row of a
duplicate group stays, and where the operation keeps what it moves aside. Every other name
(archive, ledger, guard, work table) is derived here, in one place."""

from collections.abc import Sequence
from dataclasses import dataclass, field

from alembic_lossless_unique.ddl.sqltext import (
    MAX_IDENTIFIER_BYTES,
    derived_name,
    ident,
    idents,
    qualified,
)
from alembic_lossless_unique.runtime.errors import MigrationAbort

DEFAULT_PRIVATE_SCHEMA = "lossless_unique"


def default_constraint_name(table: str, columns: Sequence[str]) -> str:
    """The name PostgreSQL gives a unique constraint declared without one: TABLE_COLUMNS_key
    (which it would shorten past MAX_IDENTIFIER_BYTES)."""
    return f"{table}_{'_'.join(columns)}_key"


@dataclass(frozen=True)
class UniqueTarget:
    # The unique constraint every starting state converges on.
    constraint_name: str
    table: str
    # Key columns in the constraint's order. Rows with a NULL in any of them never conflict
    # on a unique and are never touched.
    columns: tuple[str, ...]
    schema: str = "public"
    # Of each group of rows that share a key, the row that stays is the greatest by these
    # columns in turn (a NULL counts as the oldest), then by `row_identity`.
    keep_newest_by: tuple[str, ...] = ()
    # Columns that identify a row (its primary key): the last tie-break, and how the archive
    # names the row that was kept.
    row_identity: tuple[str, ...] = ("id",)
    # Where archived rows, the ledger and the guard live: never an API-exposed schema.
    private_schema: str = DEFAULT_PRIVATE_SCHEMA
    archive_table: str = ""
    ledger_table: str = ""
    # Unique indexes on the key to promote first, in this order (e.g. a hand-made fix's index).
    adopt_first: tuple[str, ...] = ()
    # Why the rows were archived, as the archive records it.
    archive_reason: str = field(default="", compare=False)
    # The constraint's options, as SQLAlchemy's UniqueConstraint takes them.
    # NULLS NOT DISTINCT (PostgreSQL 15+): rows whose keys hold NULLs in the same places
    # conflict, so they are duplicates of each other like any others.
    nulls_not_distinct: bool = False
    # Columns stored in the index beside the key (INCLUDE), not part of what is unique.
    include: tuple[str, ...] = ()
    deferrable: bool | None = None
    initially: str | None = None  # IMMEDIATE or DEFERRED

    def __post_init__(self) -> None:
        for attribute in ("columns", "keep_newest_by", "row_identity", "adopt_first", "include"):
            object.__setattr__(self, attribute, tuple(getattr(self, attribute)))
        if self.initially is not None:
            object.__setattr__(self, "initially", self.initially.upper())
        defaults = {
            "archive_table": derived_name(self.constraint_name, "archive"),
            "ledger_table": derived_name(self.constraint_name, "steps"),
            "archive_reason": (
                f"duplicate ({', '.join(self.columns)}): a newer row of the same key was kept"
            ),
        }
        for attribute, default in defaults.items():
            if not getattr(self, attribute):
                object.__setattr__(self, attribute, default)
        self._validate()

    def _validate(self) -> None:
        if not self.columns:
            raise MigrationAbort(f"unique constraint {self.constraint_name}: no key columns given")
        if not self.row_identity:
            raise MigrationAbort(f"unique constraint {self.constraint_name}: no row_identity")
        if len(set(self.columns)) != len(self.columns):
            raise MigrationAbort(f"unique constraint {self.constraint_name}: a key column repeats")
        if len(set(self.include)) != len(self.include):
            raise MigrationAbort(
                f"unique constraint {self.constraint_name}: an INCLUDE column repeats"
            )
        if self.initially not in (None, "IMMEDIATE", "DEFERRED"):
            raise MigrationAbort(
                f"unique constraint {self.constraint_name}: initially={self.initially!r};"
                " PostgreSQL knows IMMEDIATE and DEFERRED"
            )
        if self.initially == "DEFERRED" and self.deferrable is False:
            raise MigrationAbort(
                f"unique constraint {self.constraint_name}: initially='DEFERRED' needs"
                " deferrable=True (PostgreSQL: a constraint declared INITIALLY DEFERRED must be"
                " DEFERRABLE)"
            )
        names: tuple[str, ...] = (
            self.constraint_name,
            self.table,
            self.schema,
            self.private_schema,
        )
        names += self.columns + self.keep_newest_by + self.row_identity + self.adopt_first
        names += self.include
        for name in (*names, self.archive_table, self.ledger_table):
            if not name or len(name.encode()) > MAX_IDENTIFIER_BYTES:
                raise MigrationAbort(
                    f"{name!r} is not a usable PostgreSQL name (1 to 63 bytes)"
                    f" for unique constraint {self.constraint_name}"
                )
        if self.private_schema == self.schema:
            raise MigrationAbort(
                f"private_schema {self.private_schema!r} must differ from the table's schema:"
                " archived rows must not sit where the API can reach them"
            )

    # The table and what is derived from it.

    @property
    def qualified_table(self) -> str:
        return qualified(self.schema, self.table)

    @property
    def display_table(self) -> str:
        """schema.table as people write it, for messages."""
        return f"{self.schema}.{self.table}"

    @property
    def key_description(self) -> str:
        nulls = " NULLS NOT DISTINCT" if self.nulls_not_distinct else ""
        return f"{self.display_table}{nulls} ({', '.join(self.columns)})"

    # The key's rule: which rows conflict. Every statement that judges duplicates asks here.

    def key_is_set(self, alias: str) -> str:
        """An SQL boolean: the row `alias` has a key the unique judges (a NULL in a key column
        takes a row out of it, unless NULLS NOT DISTINCT)."""
        if self.nulls_not_distinct:
            return "true"
        return " AND ".join(f"{alias}.{ident(c)} IS NOT NULL" for c in self.columns)

    def key_has_null(self, alias: str) -> str:
        """An SQL boolean: a key column of `alias` is NULL."""
        return "(" + " OR ".join(f"{alias}.{ident(c)} IS NULL" for c in self.columns) + ")"

    @property
    def deferral(self) -> str:
        """The constraint's DEFERRABLE clause as pg_get_constraintdef() prints it ('' if none)."""
        if self.deferrable or self.initially == "DEFERRED":
            deferred = " INITIALLY DEFERRED" if self.initially == "DEFERRED" else ""
            return " DEFERRABLE" + deferred
        return ""

    @property
    def index_options(self) -> str:
        """What the unique index carries after its key columns, as pg_get_indexdef() prints it."""
        include = f" INCLUDE ({idents(self.include)})" if self.include else ""
        nulls = " NULLS NOT DISTINCT" if self.nulls_not_distinct else ""
        return include + nulls

    @property
    def ranking(self) -> tuple[str, ...]:
        """Every column that decides which row of a duplicate group stays, in order."""
        extra = tuple(c for c in self.row_identity if c not in self.keep_newest_by)
        return self.keep_newest_by + extra

    def private(self, name: str) -> str:
        return qualified(self.private_schema, name)

    @property
    def archive(self) -> str:
        return self.private(self.archive_table)

    @property
    def ledger(self) -> str:
        return self.private(self.ledger_table)

    @property
    def repointed_table(self) -> str:
        """Child rows whose foreign key was re-pointed from an archived row to the kept one."""
        return derived_name(self.archive_table, "repointed")

    @property
    def repointed(self) -> str:
        return self.private(self.repointed_table)

    @property
    def work_table(self) -> str:
        """The dedupe's list of rows to archive; it lives inside one transaction."""
        return derived_name(self.constraint_name, "work")

    @property
    def work(self) -> str:
        return self.private(self.work_table)

    @property
    def restoring(self) -> str:
        """A batch of a restore in batches on its way back; it lives inside its transaction."""
        return self.private(derived_name(self.constraint_name, "restoring"))

    @property
    def batches(self) -> str:
        """The listed rows, each with the batch of keys it moves in; it lives from the list to
        the last batch of the online move."""
        return self.private(derived_name(self.constraint_name, "batches"))

    @property
    def guard_function_name(self) -> str:
        return derived_name(self.constraint_name, "guard")

    @property
    def guard_function(self) -> str:
        return self.private(self.guard_function_name)

    @property
    def guard_claims_table(self) -> str:
        return derived_name(self.constraint_name, "claims")

    @property
    def guard_claims(self) -> str:
        return self.private(self.guard_claims_table)

    @property
    def guard_triggers(self) -> tuple[str, str]:
        """On the table itself: one for inserts, one for updates of the key."""
        return (
            derived_name(self.constraint_name, "guard_insert"),
            derived_name(self.constraint_name, "guard_update"),
        )

    @property
    def kept_columns(self) -> tuple[str, ...]:
        """The archive's names for the kept row's identity (`kept_id` for an `id` key)."""
        return tuple(f"kept_{column}" for column in self.row_identity)

    def temporary_index_name(self, original: str) -> str:
        """A name to rebuild `original` under while a constraint still holds the real name."""
        return derived_name(original, "restore")
