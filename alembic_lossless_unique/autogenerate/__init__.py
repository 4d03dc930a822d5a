"""Autogenerate that writes the safe operation.

- ``rewriter``: where autogenerate would write a plain unique on an existing table, the safe
  operation instead (see there)
- ``render``: what each operation looks like in the revision file

The rewriter is importable from here, as it always was."""

from alembic_lossless_unique.autogenerate.rewriter import (
    IMPORT,
    safe_unique_constraints,
    safe_unique_constraints_with,
)

__all__ = ["IMPORT", "safe_unique_constraints", "safe_unique_constraints_with"]
