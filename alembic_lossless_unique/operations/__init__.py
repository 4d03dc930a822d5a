"""The operations and what they act on.

- ``ops``: the Alembic operations, ``op.ensure_unique_constraint`` and
  ``op.undo_unique_constraint``, and the index form ``op.ensure_unique_index`` and
  ``op.undo_unique_index`` (importing the package registers them)
- ``target``: what an operation acts on, its key and options, and every name derived from it
- ``convergence``: the story, online: from whatever uniques the key has to the constraint, and back
- ``offline``: the same decisions, made by the database while an ``alembic --sql`` script runs

The operations are importable from here, as they always were.
"""

from alembic_lossless_unique.operations.ops import (
    EnsureUniqueConstraintOp,
    EnsureUniqueIndexOp,
    UndoUniqueConstraintOp,
    UndoUniqueIndexOp,
    UniqueConstraintOp,
    UniqueIndexOp,
    target_from_arguments,
    target_from_index_arguments,
)

__all__ = [
    "EnsureUniqueConstraintOp",
    "EnsureUniqueIndexOp",
    "UndoUniqueConstraintOp",
    "UndoUniqueIndexOp",
    "UniqueConstraintOp",
    "UniqueIndexOp",
    "target_from_arguments",
    "target_from_index_arguments",
]
