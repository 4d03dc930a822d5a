"""What one `ensure_unique_constraint` or `ensure_unique_index` acts on: a table, its key,
which row of a duplicate group stays, and where the operation keeps what it moves aside. Every
other name (archive, ledger, guard, work table) is derived here, in one place, and so is the key
as the unique judges it (UniqueKey): every statement that compares keys asks it."""

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

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


def the_unique(is_index: bool) -> str:
    """What an operation ends with, as its reports' sentences name it."""
    return "the unique index" if is_index else "the constraint"


# The name a row goes by where a key element is evaluated on one row among several relations.
ONE_ROW = "lossless_row"


@dataclass(frozen=True)
class KeyElement:
    """One element of the key, as the unique index compares it."""

    # Its value in a single-table scope (`SELECT <value> FROM t`): a quoted column, or the
    # index's expression as PostgreSQL prints it, with the index's collation.
    value: str
    # Its name where key values travel as columns: the work tables, the guard's claims.
    column: str
    # The index's equality operator (its operator class's, strategy 3), qualified; None: the
    # column type's default one, looked up where the statement runs (comparisons.py).
    operator: str | None = None
    # How PostgreSQL names it in a unique_violation's DETAIL.
    printed: str = ""
    # A plain column of the table: read as `alias.column`, with no subquery.
    is_column: bool = True

    def of(self, alias: str) -> str:
        """Its value for the row `alias`, where several relations are in scope: only that row's
        columns are in the inner scope of the subquery, so an unqualified expression reads them."""
        if self.is_column:
            return f"{alias}.{self.value}"
        return f"(SELECT {self.value} FROM (SELECT {alias}.*) AS {ONE_ROW})"


@dataclass(frozen=True)
class UniqueKey:
    """Which rows conflict, exactly as the unique will judge them: its elements' values (each
    with its equality operator and collation), among the rows its predicate admits; a NULL in
    an element takes a row out of it unless NULLS NOT DISTINCT."""

    elements: tuple[KeyElement, ...]
    nulls_not_distinct: bool = False
    # The partial index's predicate, in a single-table scope (None: every row).
    predicate: str | None = None
    # The columns the key and the predicate read: an update of any other leaves the key alone.
    referenced: tuple[str, ...] = ()
    # The unique's definition from USING on, as pg_get_indexdef() prints it: the same for every
    # index that judges keys the same way, whatever its name (plan.py compares them).
    shape: str = ""

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(element.column for element in self.elements)

    @property
    def plain(self) -> bool:
        """Plain columns, every row judged: the statements keep their column-only form."""
        return self.predicate is None and all(element.is_column for element in self.elements)

    def admits(self, alias: str) -> str:
        """An SQL boolean: the partial index's predicate holds for the row `alias`."""
        if self.predicate is None:
            return "true"
        return f"coalesce((SELECT {self.predicate} FROM (SELECT {alias}.*) AS {ONE_ROW}), false)"

    def is_set(self, alias: str) -> str:
        """An SQL boolean: the row `alias` has a key the unique judges (a NULL element takes a
        row out of it, unless NULLS NOT DISTINCT)."""
        if self.nulls_not_distinct:
            return "true"
        return " AND ".join(f"{element.of(alias)} IS NOT NULL" for element in self.elements)

    def has_null(self, alias: str) -> str:
        """An SQL boolean: a key element of `alias` is NULL."""
        return "(" + " OR ".join(f"{element.of(alias)} IS NULL" for element in self.elements) + ")"

    def keyed_rows(self, table: str, others: tuple[str, ...]) -> str:
        """A relation: the rows of `table` the predicate admits, by ctid, with their key values
        as columns and the columns `others`; the table itself when the key is plain."""
        if self.plain:
            return table
        values = ", ".join(f"{e.value} AS {ident(e.column)}" for e in self.elements)
        rest = "".join(f", {ident(c)}" for c in others if c not in self.columns)
        where = f" WHERE {self.predicate}" if self.predicate is not None else ""
        return f"(SELECT ctid, {values}{rest} FROM {table}{where})"


def column_key(columns: Sequence[str], nulls_not_distinct: bool) -> UniqueKey:
    """The key of a unique on plain columns, in their order."""
    return UniqueKey(
        tuple(KeyElement(ident(c), c, printed=c) for c in columns),
        nulls_not_distinct,
        referenced=tuple(columns),
    )


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
    # The index form (`ensure_unique_index`): the end state is a unique index, no constraint,
    # as op.create_index(..., unique=True) makes it. Its key elements as SQL (a quoted column,
    # an expression, each maybe with an operator class), `columns` then only describes them.
    index_elements: tuple[str, ...] = ()
    # The partial index's predicate, as the user wrote it.
    where: str | None = None
    # The key as PostgreSQL parsed it (probe.py): what every statement of the index form asks.
    probed_key: UniqueKey | None = field(default=None, compare=False)
    # A partition's own part of an operation on a partitioned table (for_partition): the
    # partitioned table the operation was given, as schema.table. Empty for that table itself.
    partition_of: str = ""

    def __post_init__(self) -> None:
        for attribute in (
            "columns",
            "keep_newest_by",
            "row_identity",
            "adopt_first",
            "include",
            "index_elements",
        ):
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
        if self.is_index and (self.deferrable is not None or self.initially or self.adopt_first):
            raise MigrationAbort(
                f"unique index {self.constraint_name}: deferrable, initially and adopt_first"
                " belong to the constraint form (ensure_unique_constraint)"
            )
        if len(set(self.columns)) != len(self.columns) and not self.is_index:
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
        names += self.keep_newest_by + self.row_identity + self.adopt_first
        if not self.is_index:  # the index form's elements are SQL, parsed by PostgreSQL
            names += self.columns
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

    def for_partition(self, schema: str, table: str, constraint_name: str) -> "UniqueTarget":
        """The same key on one partition of this (partitioned) table, its unique named
        `constraint_name`; it shares the operation's private tables (archive, ledger), and its
        ledger entries name the partition."""
        return replace(
            self,
            schema=schema,
            table=table,
            constraint_name=constraint_name,
            archive_table=self.archive_table,
            ledger_table=self.ledger_table,
            archive_reason=self.archive_reason,
            adopt_first=(),
            partition_of=self.display_table,
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
        where = f" WHERE {self.where}" if self.where else ""
        return f"{self.display_table}{nulls} ({', '.join(self.columns)}){where}"

    @property
    def is_index(self) -> bool:
        return bool(self.index_elements)

    @property
    def kind(self) -> str:
        """What the operation makes, for messages: unique constraint, or unique index."""
        return "unique index" if self.is_index else "unique constraint"

    @property
    def the_unique(self) -> str:
        return the_unique(self.is_index)

    # The key's rule: which rows conflict. Every statement that judges duplicates asks here.

    @property
    def key(self) -> UniqueKey:
        if not self.is_index:
            return column_key(self.columns, self.nulls_not_distinct)
        if self.probed_key is None:
            raise MigrationAbort(
                f"unique index {self.constraint_name}: its key was not read from PostgreSQL"
                " (probe.resolve) before a statement needed it"
            )
        return self.probed_key

    def key_is_set(self, alias: str) -> str:
        """An SQL boolean: the row `alias` has a key the unique judges."""
        return self.key.is_set(alias)

    def key_has_null(self, alias: str) -> str:
        """An SQL boolean: a key element of `alias` is NULL."""
        return self.key.has_null(alias)

    @property
    def named_columns(self) -> tuple[str, ...]:
        """Every column the operation names, which must exist (the index form's key columns
        once PostgreSQL has parsed it)."""
        key = self.columns
        if self.is_index:
            key = self.probed_key.referenced if self.probed_key else ()
        return tuple(dict.fromkeys(key + self.ranking + self.include))

    def index_statement(self, name: str, relation: str) -> str:
        """The index form's CREATE UNIQUE INDEX, the user's SQL verbatim, as op.create_index(...,
        unique=True) writes it: elements, INCLUDE, NULLS NOT DISTINCT, WHERE."""
        where = f" WHERE {self.where}" if self.where else ""
        return (
            f"CREATE UNIQUE INDEX {ident(name)} ON {relation}"
            f" ({', '.join(self.index_elements)}){self.index_options}{where}"
        )

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
