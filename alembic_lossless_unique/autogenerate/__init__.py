"""Autogenerate that writes the safe operation: ``rewriter`` (see there); the rewriter is
importable from here, as it always was."""

from alembic_lossless_unique.autogenerate.rewriter import (
    IMPORT,
    safe_unique_constraints,
    safe_unique_constraints_with,
)

__all__ = ["IMPORT", "safe_unique_constraints", "safe_unique_constraints_with"]
