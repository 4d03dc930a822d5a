"""Autogenerate that writes the safe operation: one line in env.py opts in.

    from alembic_lossless_unique import run_migrations, safe_unique_constraints

    run_migrations(
        context,
        target_metadata=Base.metadata,
        process_revision_directives=safe_unique_constraints,
    )

Where `alembic revision --autogenerate` would write `op.create_unique_constraint(...)` for a
table that already exists (which fails on the first duplicate row and blocks every write while
it builds), it writes `op.ensure_unique_constraint(...)` in upgrade() and
`op.undo_unique_constraint(...)` with the same arguments in downgrade(), where it would have
written `op.drop_constraint(...)`; the revision imports alembic_lossless_unique. Likewise
`op.create_index(..., unique=True)` becomes `op.ensure_unique_index(...)` (expressions as
`sa.text`), and its `op.drop_index(...)` becomes `op.undo_unique_index(...)`. A table created in
the same revision keeps the plain form: it has no rows yet, and Alembic creates its uniques with
it.

The rendered call spells out every argument that decides what happens to a duplicate:
`row_identity` (the table's primary key in target_metadata) and `keep_newest_by` (empty unless
configured: then the row with the greatest primary key stays), so the reviewer sees which row is
kept and can change it. `safe_unique_constraints_with(keep_newest_by={"orders": ["updated_at"]})`
sets it per table.

`safe_unique_constraints` is an Alembic Rewriter: `safe_unique_constraints.chain(yours)` runs
both.
"""

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, cast

from alembic.autogenerate.rewriter import Rewriter
from alembic.ddl.impl import DefaultImpl
from alembic.operations import ops
from alembic.runtime.migration import MigrationContext
from alembic.util import CommandError
from sqlalchemy import Column, MetaData, Table, text
from sqlalchemy.sql.elements import ClauseElement, Label, TextClause

from alembic_lossless_unique.autogenerate.render import IMPORT
from alembic_lossless_unique.ddl.sqltext import MAX_IDENTIFIER_BYTES
from alembic_lossless_unique.operations.ops import (
    EnsureUniqueConstraintOp,
    EnsureUniqueIndexOp,
)
from alembic_lossless_unique.operations.target import (
    DEFAULT_PRIVATE_SCHEMA,
    default_constraint_name,
)

__all__ = ["IMPORT", "safe_unique_constraints", "safe_unique_constraints_with"]


def safe_unique_constraints_with(
    *,
    keep_newest_by: Mapping[str, Sequence[str]] | None = None,
    private_schema: str = DEFAULT_PRIVATE_SCHEMA,
) -> Rewriter:
    """The rewriter, configured: `keep_newest_by` per table ("orders", or "shop.orders" with
    its schema) names the columns whose greatest values mark the row to keep; `private_schema`
    is where the operations keep archive, ledger and guard."""
    newest = dict(keep_newest_by or {})
    rewriter = Rewriter()

    @rewriter.rewrites(ops.MigrationScript)
    def rewrite(
        context: MigrationContext, revision: object, script: ops.MigrationScript
    ) -> ops.MigrationScript:
        metadata = _metadata(context.opts.get("target_metadata"))
        for upgrade_ops, downgrade_ops in zip(
            script.upgrade_ops_list, script.downgrade_ops_list, strict=True
        ):
            _make_safe(upgrade_ops, downgrade_ops, metadata, newest, private_schema, context.impl)
        return script

    return rewriter


def _make_safe(
    upgrade_ops: ops.UpgradeOps,
    downgrade_ops: ops.DowngradeOps,
    metadata: list[MetaData],
    newest: Mapping[str, Sequence[str]],
    private_schema: str,
    impl: DefaultImpl,
) -> None:
    """On an existing table, create_unique_constraint -> ensure_unique_constraint and
    create_index(..., unique=True) -> ensure_unique_index in the upgrade; the drop_constraint
    and drop_index that reverse them -> their undo in the downgrade."""
    created = {(op.schema, op.table_name) for op in _walk(upgrade_ops.ops, ops.CreateTableOp)}
    # What each swapped op was swapped for: (kind, schema, table, name) -> the ensure op.
    ensured: dict[tuple[Any, ...], EnsureUniqueConstraintOp | EnsureUniqueIndexOp] = {}

    def how_rows_are_kept(schema: str | None, table: str, operation: str) -> dict[str, Any]:
        return {
            **_schema(schema),
            "keep_newest_by": list(_for_table(newest, schema, table)),
            "row_identity": _primary_key(metadata, schema, table, operation),
            "private_schema": private_schema,
        }

    def ensure_constraint(op: ops.CreateUniqueConstraintOp) -> ops.MigrateOperation:
        if (op.schema, op.table_name) in created:
            return op  # no rows yet: the plain form is safe, and what Alembic writes
        safe = EnsureUniqueConstraintOp(
            _constraint_name(op),
            op.table_name,
            list(op.columns),
            **how_rows_are_kept(op.schema, op.table_name, "ensure_unique_constraint"),
            **_constraint_options(op),
        )
        ensured[("unique", op.schema, op.table_name, op.constraint_name)] = safe
        return safe

    def ensure_index(op: ops.CreateIndexOp) -> ops.MigrateOperation:
        if not op.unique or (op.schema, op.table_name) in created:
            return op  # not a unique, or no rows yet: nothing to dedupe
        columns, options = _index_arguments(op, impl)
        safe = EnsureUniqueIndexOp(
            _index_name(op),
            op.table_name,
            columns,
            **how_rows_are_kept(op.schema, op.table_name, "ensure_unique_index"),
            **options,
        )
        ensured[("index", op.schema, op.table_name, op.index_name)] = safe
        return safe

    def undo_constraint(op: ops.DropConstraintOp) -> ops.MigrateOperation:
        safe = ensured.get((op.constraint_type, op.schema, op.table_name, op.constraint_name))
        return op if safe is None else safe.reverse()

    def undo_index(op: ops.DropIndexOp) -> ops.MigrateOperation:
        safe = ensured.get(("index", op.schema, op.table_name, op.index_name))
        return op if safe is None else safe.reverse()

    _replace(upgrade_ops, ops.CreateUniqueConstraintOp, ensure_constraint)
    _replace(upgrade_ops, ops.CreateIndexOp, ensure_index)
    _replace(downgrade_ops, ops.DropConstraintOp, undo_constraint)
    _replace(downgrade_ops, ops.DropIndexOp, undo_index)


safe_unique_constraints = safe_unique_constraints_with()


def _walk(operations: Iterable[Any], kind: type) -> Iterator[Any]:
    for op in operations:
        if isinstance(op, kind):
            yield op
        yield from _walk(getattr(op, "ops", ()), kind)


def _replace(
    container: Any, kind: type, replacement: Callable[[Any], ops.MigrateOperation]
) -> None:
    """Every `kind` op in `container` and the op lists inside it, replaced by replacement(op)."""
    container.ops = [replacement(op) if isinstance(op, kind) else op for op in container.ops]
    for op in container.ops:
        if hasattr(op, "ops"):
            _replace(op, kind, replacement)


def _metadata(target: Any) -> list[MetaData]:
    if target is None:
        return []
    return list(target) if isinstance(target, list | tuple) else [target]


def _table(metadata: list[MetaData], schema: str | None, table: str) -> Table | None:
    key = f"{schema}.{table}" if schema else table
    for each in metadata:
        if key in each.tables:
            return each.tables[key]
    return None


def _primary_key(
    metadata: list[MetaData], schema: str | None, table: str, operation: str
) -> list[str]:
    found = _table(metadata, schema, table)
    columns = [column.name for column in found.primary_key.columns] if found is not None else []
    if not columns:
        raise CommandError(
            f"autogenerate: table {_display(schema, table)} has no primary key in"
            f" target_metadata: {operation} needs row_identity (the columns that"
            " identify a row) to choose the row it keeps; declare the primary key in the model"
        )
    return columns


def _for_table(
    per_table: Mapping[str, Sequence[str]], schema: str | None, table: str
) -> Sequence[str]:
    return per_table.get(_display(schema, table), per_table.get(table, ()))


def _display(schema: str | None, table: str) -> str:
    return f"{schema}.{table}" if schema else table


def _schema(schema: str | None) -> dict[str, str]:
    return {"schema": schema} if schema else {}


# The UniqueConstraint options ensure_unique_constraint makes, under SQLAlchemy's names.
PASSED_THROUGH = (
    "deferrable",
    "initially",
    "postgresql_include",
    "postgresql_nulls_not_distinct",
)


def _constraint_options(op: ops.CreateUniqueConstraintOp) -> dict[str, Any]:
    """The model's options for the constraint, passed through as they are set; any other
    (another dialect's, say) is refused rather than written as something else."""
    others = sorted(name for name in op.kw if name not in PASSED_THROUGH)
    if others:
        raise CommandError(
            f"autogenerate: the unique constraint on {_display(op.schema, op.table_name)}"
            f" ({', '.join(op.columns)}) sets {', '.join(others)}, which"
            " ensure_unique_constraint does not make; write that revision by hand"
        )
    return {
        name: list(value) if name == "postgresql_include" else value
        for name, value in op.kw.items()
        if value not in (None, False, (), [])
    }


def _constraint_name(op: ops.CreateUniqueConstraintOp) -> str:
    """The model's name for the constraint, else the one PostgreSQL would give it (table,
    columns, `key`): the operation needs a name to converge on and to undo."""
    if op.constraint_name:  # from_constraint: a name or None, never SQLAlchemy's _NONE_NAME
        return cast(str, op.constraint_name)
    name = default_constraint_name(op.table_name, op.columns)
    if len(name.encode()) > MAX_IDENTIFIER_BYTES:
        raise CommandError(
            f"autogenerate: the unique constraint on {_display(op.schema, op.table_name)}"
            f" ({', '.join(op.columns)}) has no name, and PostgreSQL's own would be longer than"
            f" {MAX_IDENTIFIER_BYTES} bytes: name it in the model"
        )
    return name


# The Index options ensure_unique_index makes, under SQLAlchemy's names.
INDEX_PASSED_THROUGH = (
    "postgresql_where",
    "postgresql_include",
    "postgresql_nulls_not_distinct",
    "postgresql_ops",
)


def _index_arguments(
    op: ops.CreateIndexOp, impl: DefaultImpl
) -> tuple[list[str | TextClause], dict[str, Any]]:
    """The model's index as ensure_unique_index takes it: column names, and each expression as
    `sa.text` of the SQL Alembic renders for it in op.create_index (an operator class that
    postgresql_ops gives its label goes inside the text, the only place the operation takes
    one for an expression); the options passed through as they are set, any other refused
    rather than written as something else."""
    others = sorted(name for name in op.kw if name not in INDEX_PASSED_THROUGH)
    if others:
        raise CommandError(
            f"autogenerate: the unique index {op.index_name} on"
            f" {_display(op.schema, op.table_name)} sets {', '.join(others)}, which"
            " ensure_unique_index does not make; write that revision by hand"
        )
    operator_classes = dict(op.kw.get("postgresql_ops") or {})
    columns: list[str | TextClause] = []
    for element in op.columns:
        if isinstance(element, str | Column):
            columns.append(element if isinstance(element, str) else element.name)
            continue
        sql = impl.render_ddl_sql_expr(element, is_index=True)
        label = element.name if isinstance(element, Label) else None
        if label in operator_classes:
            sql = f"{sql} {operator_classes.pop(label)}"
        columns.append(text(sql))
    options: dict[str, Any] = {}
    where = op.kw.get("postgresql_where")
    if where is not None:
        options["postgresql_where"] = _sql(where, impl)
    include = [c if isinstance(c, str) else c.name for c in op.kw.get("postgresql_include") or ()]
    if include:
        options["postgresql_include"] = include
    if op.kw.get("postgresql_nulls_not_distinct"):
        options["postgresql_nulls_not_distinct"] = True
    if operator_classes:
        options["postgresql_ops"] = operator_classes
    return columns, options


def _sql(element: str | ClauseElement, impl: DefaultImpl) -> str | TextClause:
    """A string as the model gives it; an SQL expression as `sa.text` of what Alembic renders."""
    return element if isinstance(element, str) else text(impl.render_ddl_sql_expr(element))


def _index_name(op: ops.CreateIndexOp) -> str:
    """The model's name for the index: the operation needs one to converge on and to undo."""
    if not op.index_name:
        raise CommandError(
            f"autogenerate: a unique index on {_display(op.schema, op.table_name)} has no name:"
            " ensure_unique_index needs one to converge on and to undo; name it in the model"
        )
    return op.index_name
