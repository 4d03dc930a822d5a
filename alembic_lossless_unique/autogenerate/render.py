"""What each operation looks like in a revision file that autogenerate writes: the call with
every argument that decides what happens to a duplicate spelled out, and above the ensure call
a comment saying which row of a duplicate group stays."""

import textwrap
from typing import Any

from alembic.autogenerate import renderers
from alembic.autogenerate.api import AutogenContext
from sqlalchemy.sql.elements import TextClause, conv

from alembic_lossless_unique.operations.ops import (
    EnsureUniqueConstraintOp,
    EnsureUniqueIndexOp,
    UndoUniqueConstraintOp,
    UndoUniqueIndexOp,
    UniqueConstraintOp,
    UniqueIndexOp,
)
from alembic_lossless_unique.operations.target import UniqueTarget

IMPORT = "import alembic_lossless_unique"
# Rendered comments fit a 100-column line at the revision's indentation.
COMMENT_WIDTH = 92


@renderers.dispatch_for(EnsureUniqueConstraintOp)
def _render_ensure_constraint(autogen_context: AutogenContext, op: EnsureUniqueConstraintOp) -> str:
    return _kept_row_comment(op.target, "undo_unique_constraint") + _render(
        autogen_context, "ensure_unique_constraint", op
    )


@renderers.dispatch_for(UndoUniqueConstraintOp)
def _render_undo_constraint(autogen_context: AutogenContext, op: UndoUniqueConstraintOp) -> str:
    return _render(autogen_context, "undo_unique_constraint", op)


@renderers.dispatch_for(EnsureUniqueIndexOp)
def _render_ensure_index(autogen_context: AutogenContext, op: EnsureUniqueIndexOp) -> str:
    return _kept_row_comment(op.target, "undo_unique_index") + _render(
        autogen_context, "ensure_unique_index", op
    )


@renderers.dispatch_for(UndoUniqueIndexOp)
def _render_undo_index(autogen_context: AutogenContext, op: UndoUniqueIndexOp) -> str:
    return _render(autogen_context, "undo_unique_index", op)


def _kept_row_comment(target: UniqueTarget, undo: str) -> str:
    order = ", then ".join((*target.keep_newest_by, *target.row_identity))
    among = f" among the rows where {target.where}" if target.where is not None else ""
    comment = (
        f"Duplicates of ({', '.join(target.columns)}){among}: the row kept is the greatest by"
        f" keep_newest_by, then by row_identity (here: the greatest {order}); the others move"
        f" to an archive in private_schema, and {undo} brings them back."
    )
    return "".join(f"# {line}\n" for line in textwrap.wrap(comment, COMMENT_WIDTH))


def _render(
    autogen_context: AutogenContext, name: str, op: UniqueConstraintOp | UniqueIndexOp
) -> str:
    autogen_context.imports.add(IMPORT)
    unique_name, table_name, columns = op.arguments
    prefix = autogen_context.opts.get("alembic_module_prefix", "op.")
    lines = [
        _name(unique_name, prefix),
        repr(table_name),
        _value(list(columns), autogen_context),
        *(f"{key}={_value(value, autogen_context)}" for key, value in op.options.items()),
    ]
    return f"{prefix}{name}(\n" + "".join(f"    {line},\n" for line in lines) + ")"


def _name(name: str, prefix: str) -> str:
    """A name a naming convention made is rendered as Alembic renders it: op.f('...')."""
    return f"{prefix}f({str(name)!r})" if isinstance(name, conv) else repr(str(name))


def _value(value: Any, autogen_context: AutogenContext) -> str:
    """Python for `value`; SQL as Alembic writes it in the same file, `sa.text('...')` under
    the revision's SQLAlchemy prefix (Alembic's templates import `sqlalchemy as sa`)."""
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_value(item, autogen_context) for item in value) + "]"
    if isinstance(value, TextClause):
        sqlalchemy = autogen_context.opts.get("sqlalchemy_module_prefix", "sa.") or ""
        return f"{sqlalchemy}text({value.text!r})"
    return repr(value)
