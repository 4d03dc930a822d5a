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
written `op.drop_constraint(...)`; the revision imports alembic_lossless_unique. A table created
in the same revision keeps the plain form: it has no rows yet, and Alembic creates its
constraints with it.

The rendered call spells out every argument that decides what happens to a duplicate:
`row_identity` (the table's primary key in target_metadata) and `keep_newest_by` (empty unless
configured: then the row with the greatest primary key stays), so the reviewer sees which row is
kept and can change it. `safe_unique_constraints_with(keep_newest_by={"orders": ["updated_at"]})`
sets it per table.

`safe_unique_constraints` is an Alembic Rewriter: `safe_unique_constraints.chain(yours)` runs
both.
"""

import textwrap
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, cast

from alembic.autogenerate import renderers
from alembic.autogenerate.api import AutogenContext
from alembic.autogenerate.rewriter import Rewriter
from alembic.operations import ops
from alembic.runtime.migration import MigrationContext
from alembic.util import CommandError
from sqlalchemy import MetaData, Table
from sqlalchemy.sql.elements import conv

from alembic_lossless_unique.ddl.sqltext import MAX_IDENTIFIER_BYTES
from alembic_lossless_unique.operations.ops import (
    EnsureUniqueConstraintOp,
    UndoUniqueConstraintOp,
    UniqueConstraintOp,
)
from alembic_lossless_unique.operations.target import (
    DEFAULT_PRIVATE_SCHEMA,
    default_constraint_name,
)

IMPORT = "import alembic_lossless_unique"
# Rendered comments fit a 100-column line at the revision's indentation.
COMMENT_WIDTH = 92


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
            _make_safe(upgrade_ops, downgrade_ops, metadata, newest, private_schema)
        return script

    return rewriter


def _make_safe(
    upgrade_ops: ops.UpgradeOps,
    downgrade_ops: ops.DowngradeOps,
    metadata: list[MetaData],
    newest: Mapping[str, Sequence[str]],
    private_schema: str,
) -> None:
    """create_unique_constraint on an existing table -> ensure_unique_constraint in the upgrade,
    and the drop_constraint that reverses it -> undo_unique_constraint in the downgrade."""
    created = {(op.schema, op.table_name) for op in _walk(upgrade_ops.ops, ops.CreateTableOp)}
    ensured: dict[tuple[Any, ...], EnsureUniqueConstraintOp] = {}  # schema, table, name

    def ensure(op: ops.CreateUniqueConstraintOp) -> ops.MigrateOperation:
        if (op.schema, op.table_name) in created:
            return op  # no rows yet: the plain form is safe, and what Alembic writes
        safe = EnsureUniqueConstraintOp(
            _constraint_name(op),
            op.table_name,
            list(op.columns),
            **_schema(op.schema),
            keep_newest_by=list(_for_table(newest, op.schema, op.table_name)),
            row_identity=_primary_key(metadata, op.schema, op.table_name),
            private_schema=private_schema,
            **_constraint_options(op),
        )
        ensured[(op.schema, op.table_name, op.constraint_name)] = safe
        return safe

    def undo(op: ops.DropConstraintOp) -> ops.MigrateOperation:
        safe = ensured.get((op.schema, op.table_name, op.constraint_name))
        if op.constraint_type != "unique" or safe is None:
            return op
        return UndoUniqueConstraintOp(*safe.arguments, **safe.options)

    _replace(upgrade_ops, ops.CreateUniqueConstraintOp, ensure)
    _replace(downgrade_ops, ops.DropConstraintOp, undo)


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


def _primary_key(metadata: list[MetaData], schema: str | None, table: str) -> list[str]:
    found = _table(metadata, schema, table)
    columns = [column.name for column in found.primary_key.columns] if found is not None else []
    if not columns:
        raise CommandError(
            f"autogenerate: table {_display(schema, table)} has no primary key in"
            " target_metadata: ensure_unique_constraint needs row_identity (the columns that"
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


# What each operation looks like in the revision file.


@renderers.dispatch_for(EnsureUniqueConstraintOp)
def _render_ensure(autogen_context: AutogenContext, op: EnsureUniqueConstraintOp) -> str:
    target = op.target
    order = ", then ".join((*target.keep_newest_by, *target.row_identity))
    comment = (
        f"Duplicates of ({', '.join(target.columns)}): the row kept is the greatest by"
        f" keep_newest_by, then by row_identity (here: the greatest {order}); the others move"
        " to an archive in private_schema, and undo_unique_constraint brings them back."
    )
    lines = textwrap.wrap(comment, COMMENT_WIDTH)
    return "".join(f"# {line}\n" for line in lines) + _render(
        autogen_context, "ensure_unique_constraint", op
    )


@renderers.dispatch_for(UndoUniqueConstraintOp)
def _render_undo(autogen_context: AutogenContext, op: UndoUniqueConstraintOp) -> str:
    return _render(autogen_context, "undo_unique_constraint", op)


def _render(autogen_context: AutogenContext, name: str, op: UniqueConstraintOp) -> str:
    autogen_context.imports.add(IMPORT)
    constraint_name, table_name, columns = op.arguments
    prefix = autogen_context.opts.get("alembic_module_prefix", "op.")
    lines = [
        _name(constraint_name, prefix),
        repr(table_name),
        repr(list(columns)),
        *(f"{key}={_value(value)}" for key, value in op.options.items()),
    ]
    return f"{prefix}{name}(\n" + "".join(f"    {line},\n" for line in lines) + ")"


def _name(name: str, prefix: str) -> str:
    """A name a naming convention made is rendered as Alembic renders it: op.f('...')."""
    return f"{prefix}f({str(name)!r})" if isinstance(name, conv) else repr(str(name))


def _value(value: Any) -> str:
    return repr(list(value)) if isinstance(value, tuple | list) else repr(value)
