"""`op.ensure_unique_constraint(...)` and its inverse `op.undo_unique_constraint(...)`, and
the index form `op.ensure_unique_index(...)` / `op.undo_unique_index(...)`, registered the
way Alembic documents custom operations (Operations.register_operation and
Operations.implementation_for). Importing this package registers them.

    op.ensure_unique_constraint(
        "orders_customer_number_key", "orders", ["customer_id", "number"],
        keep_newest_by=["updated_at"], row_identity=["id"],
    )

Online, the table keeps taking reads and writes: duplicates move to an archive in a private
schema, the unique index is built concurrently and promoted. With `alembic --sql`, the same
decisions are made by the database while the script runs.
"""

from collections.abc import Callable, Sequence
from typing import Any

from alembic.operations import MigrateOperation, Operations, ops
from sqlalchemy.sql.elements import ColumnClause, TextClause

from alembic_lossless_unique.ddl.sqltext import ident
from alembic_lossless_unique.operations import convergence, offline
from alembic_lossless_unique.operations.target import DEFAULT_PRIVATE_SCHEMA, UniqueTarget
from alembic_lossless_unique.runtime import pending, surroundings
from alembic_lossless_unique.runtime.database import Database, autocommit_database
from alembic_lossless_unique.runtime.errors import MigrationAbort
from alembic_lossless_unique.runtime.settings import MigrationSettings


def target_from_arguments(
    constraint_name: str,
    table_name: str,
    columns: Sequence[str],
    *,
    schema: str | None = None,
    keep_newest_by: Sequence[str] = (),
    row_identity: Sequence[str] = ("id",),
    private_schema: str = DEFAULT_PRIVATE_SCHEMA,
    archive_table: str | None = None,
    ledger_table: str | None = None,
    adopt_first: Sequence[str] = (),
    deferrable: bool | None = None,
    initially: str | None = None,
    postgresql_include: Sequence[str] = (),
    postgresql_nulls_not_distinct: bool = False,
) -> UniqueTarget:
    """The operation's arguments as a UniqueTarget (the names Alembic users expect; the
    constraint's options as SQLAlchemy's UniqueConstraint takes them)."""
    return UniqueTarget(
        constraint_name=constraint_name,
        table=table_name,
        columns=tuple(columns),
        schema=schema or "public",
        keep_newest_by=tuple(keep_newest_by),
        row_identity=tuple(row_identity),
        private_schema=private_schema,
        archive_table=archive_table or "",
        ledger_table=ledger_table or "",
        adopt_first=tuple(adopt_first),
        deferrable=deferrable,
        initially=initially,
        include=tuple(postgresql_include),
        nulls_not_distinct=postgresql_nulls_not_distinct,
    )


class UniqueOperation(MigrateOperation):
    """What every operation here keeps: its arguments as given (the reverse operation takes
    them again), and the target they describe."""

    # What `alembic check` calls the change.
    diff_kind = ""
    # The form's reading of its arguments: target_from_arguments, target_from_index_arguments.
    make_target: Callable[..., UniqueTarget]

    def __init__(self, name: str, table_name: str, columns: Sequence[Any], **kw: Any) -> None:
        self.arguments = (name, table_name, tuple(columns))
        self.options = kw
        self.target = self.make_target(name, table_name, columns, **kw)


class UniqueConstraintOp(UniqueOperation):
    """What both constraint operations take: the arguments of target_from_arguments."""

    make_target = staticmethod(target_from_arguments)

    def to_diff_tuple(self) -> tuple[Any, ...]:
        """The change as `alembic check` lists it when autogenerate proposes this operation."""
        constraint_name, table_name, columns = self.arguments
        options = {
            name: value
            for name, value in self.options.items()
            if name in ("schema", "deferrable", "initially") or name.startswith("postgresql_")
        }
        constraint = ops.CreateUniqueConstraintOp(
            constraint_name, table_name, columns, **options
        ).to_constraint()
        return (self.diff_kind, constraint)


@Operations.register_operation("ensure_unique_constraint")
class EnsureUniqueConstraintOp(UniqueConstraintOp):
    """Make `columns` of `table_name` unique under the constraint `constraint_name`, whatever
    uniques and duplicate rows the table holds: duplicates are archived (the row kept of each
    key is the greatest by `keep_newest_by`, then `row_identity`), child rows re-pointed, the
    index built concurrently. Rows with a NULL in a key column are never touched."""

    diff_kind = "add_constraint"

    @classmethod
    def ensure_unique_constraint(
        cls,
        operations: Operations,
        constraint_name: str,
        table_name: str,
        columns: Sequence[str],
        **kw: Any,
    ) -> None:
        """Make `columns` unique, online and without losing a row; see the class."""
        operations.invoke(cls(constraint_name, table_name, columns, **kw))

    def reverse(self) -> "UndoUniqueConstraintOp":
        return UndoUniqueConstraintOp(*self.arguments, **self.options)


@Operations.register_operation("undo_unique_constraint")
class UndoUniqueConstraintOp(UniqueConstraintOp):
    """Undo `ensure_unique_constraint` exactly: the uniques it found come back, every archived
    row returns unchanged, re-pointed child rows point back, all in one transaction with the
    revision change. Takes the same arguments as the call it undoes."""

    diff_kind = "remove_constraint"

    @classmethod
    def undo_unique_constraint(
        cls,
        operations: Operations,
        constraint_name: str,
        table_name: str,
        columns: Sequence[str],
        **kw: Any,
    ) -> None:
        """Undo ensure_unique_constraint with the same arguments; see the class."""
        operations.invoke(cls(constraint_name, table_name, columns, **kw))

    def reverse(self) -> EnsureUniqueConstraintOp:
        return EnsureUniqueConstraintOp(*self.arguments, **self.options)


@Operations.implementation_for(EnsureUniqueConstraintOp)
def ensure_unique_constraint(operations: Operations, operation: EnsureUniqueConstraintOp) -> None:
    ensure(operations, "ensure_unique_constraint", operation, offline.write_upgrade)


@Operations.implementation_for(UndoUniqueConstraintOp)
def undo_unique_constraint(operations: Operations, operation: UndoUniqueConstraintOp) -> None:
    undo(operations, "undo_unique_constraint", operation, offline.write_downgrade)


# Either form, either direction: skipped when the plan command only records it; with
# `alembic --sql`, the script (or the form's refusal); online, the story in convergence.

OfflineWriter = Callable[[Operations, UniqueTarget], None]


def ensure(
    operations: Operations, name: str, operation: UniqueOperation, write_offline: OfflineWriter
) -> None:
    context = operations.get_context()
    if pending.recorded(context, name, operation.target):
        return
    if context.as_sql:  # no connection: the script decides in the database
        write_offline(operations, operation.target)
        return
    command = surroundings.project_ddl_command(
        context.config, surroundings.subscriber_ddl_command(operation.target)
    )
    with autocommit_database(context) as db:
        convergence.ensure_unique_constraint(db, operation.target, command)


def undo(
    operations: Operations, name: str, operation: UniqueOperation, write_offline: OfflineWriter
) -> None:
    context = operations.get_context()
    if pending.recorded(context, name, operation.target):
        return
    if context.as_sql:
        write_offline(operations, operation.target)
        return
    settings = MigrationSettings.from_context(context)
    convergence.run_undo(
        operation.target,
        online=lambda: autocommit_database(context),
        # The transaction alembic stamps the revision in: the undo and the stamp commit together.
        in_transaction=lambda: Database(operations.get_bind(), settings, concurrent=False),
    )


# The index form: a unique index, with what op.create_index(..., unique=True) takes.


# What `columns` of the index form takes, as op.create_index does: a column (its name, or a
# Column), and SQL as sa.text(...) or sa.literal_column(...), as Alembic writes an expression
# in op.create_index.
IndexColumn = str | TextClause | ColumnClause[Any]


def sql_text(element: IndexColumn) -> str:
    """SQL given as `sa.text(...)` or `sa.literal_column(...)` as its text, a column as its
    name; anything else as given."""
    if isinstance(element, TextClause):
        return element.text
    return element.name if isinstance(element, ColumnClause) else str(element)


def is_expression(element: IndexColumn) -> bool:
    """SQL, where anything else of `columns` names a column."""
    return isinstance(element, TextClause) or (
        isinstance(element, ColumnClause) and element.is_literal
    )


def target_from_index_arguments(
    index_name: str,
    table_name: str,
    columns: Sequence[IndexColumn],
    *,
    schema: str | None = None,
    keep_newest_by: Sequence[str] = (),
    row_identity: Sequence[str] = ("id",),
    private_schema: str = DEFAULT_PRIVATE_SCHEMA,
    archive_table: str | None = None,
    ledger_table: str | None = None,
    postgresql_where: str | TextClause | None = None,
    postgresql_include: Sequence[str] = (),
    postgresql_nulls_not_distinct: bool = False,
    postgresql_ops: dict[str, str] | None = None,
) -> UniqueTarget:
    """The index form's arguments as a UniqueTarget: `columns` as op.create_index takes them
    (column names, and SQL expressions as sa.text or sa.literal_column, an operator class maybe
    inside), an operator class per column name in `postgresql_ops`, the predicate in
    `postgresql_where`."""
    ops_by_column = postgresql_ops or {}

    def element(c: IndexColumn) -> str:
        if not isinstance(c, str | TextClause | ColumnClause):
            raise MigrationAbort(
                f"unique index {index_name}: columns holds {c} ({type(c).__name__}): give a"
                " column name, or SQL as sa.text('...') or sa.literal_column('...')"
            )
        if is_expression(c):
            return sql_text(c)
        name = sql_text(c)
        return ident(name) + (f" {ops_by_column[name]}" if name in ops_by_column else "")

    elements = tuple(element(c) for c in columns)
    if not elements:
        raise MigrationAbort(f"unique index {index_name}: no key columns or expressions given")
    return UniqueTarget(
        constraint_name=index_name,
        table=table_name,
        columns=tuple(sql_text(c) for c in columns),
        schema=schema or "public",
        keep_newest_by=tuple(keep_newest_by),
        row_identity=tuple(row_identity),
        private_schema=private_schema,
        archive_table=archive_table or "",
        ledger_table=ledger_table or "",
        include=tuple(postgresql_include),
        nulls_not_distinct=postgresql_nulls_not_distinct,
        index_elements=elements,
        where=sql_text(postgresql_where) if postgresql_where is not None else None,
    )


class UniqueIndexOp(UniqueOperation):
    """What both index operations take: the arguments of target_from_index_arguments."""

    make_target = staticmethod(target_from_index_arguments)

    def to_diff_tuple(self) -> tuple[Any, ...]:
        """The change as `alembic check` lists it when autogenerate proposes this operation."""
        index_name, table_name, columns = self.arguments
        options = {
            name: value
            for name, value in self.options.items()
            if name == "schema" or name.startswith("postgresql_")
        }
        index = ops.CreateIndexOp(
            index_name, table_name, list(columns), unique=True, **options
        ).to_index()
        return (self.diff_kind, index)


@Operations.register_operation("ensure_unique_index")
class EnsureUniqueIndexOp(UniqueIndexOp):
    """Make `table_name` hold the unique index `index_name`, exactly as op.create_index(...,
    unique=True, same arguments) makes it, whatever duplicate rows it holds: duplicates are
    judged as that index judges them (its expressions, operator classes, collations, among the
    rows its predicate admits) and archived; rows outside the predicate, and rows with a NULL
    in the key unless NULLS NOT DISTINCT, are never touched."""

    diff_kind = "add_index"

    @classmethod
    def ensure_unique_index(
        cls,
        operations: Operations,
        index_name: str,
        table_name: str,
        columns: Sequence[IndexColumn],
        **kw: Any,
    ) -> None:
        """Make the unique index, online and without losing a row; see the class."""
        operations.invoke(cls(index_name, table_name, columns, **kw))

    def reverse(self) -> "UndoUniqueIndexOp":
        return UndoUniqueIndexOp(*self.arguments, **self.options)


@Operations.register_operation("undo_unique_index")
class UndoUniqueIndexOp(UniqueIndexOp):
    """Undo `ensure_unique_index` exactly, as undo_unique_constraint undoes its form. Takes the
    same arguments as the call it undoes."""

    diff_kind = "remove_index"

    @classmethod
    def undo_unique_index(
        cls,
        operations: Operations,
        index_name: str,
        table_name: str,
        columns: Sequence[IndexColumn],
        **kw: Any,
    ) -> None:
        """Undo ensure_unique_index with the same arguments; see the class."""
        operations.invoke(cls(index_name, table_name, columns, **kw))

    def reverse(self) -> EnsureUniqueIndexOp:
        return EnsureUniqueIndexOp(*self.arguments, **self.options)


@Operations.implementation_for(EnsureUniqueIndexOp)
def ensure_unique_index(operations: Operations, operation: EnsureUniqueIndexOp) -> None:
    ensure(operations, "ensure_unique_index", operation, offline.write_upgrade)


@Operations.implementation_for(UndoUniqueIndexOp)
def undo_unique_index(operations: Operations, operation: UndoUniqueIndexOp) -> None:
    undo(operations, "undo_unique_index", operation, offline.write_downgrade)
