"""pytest-alembic's standard checks that apply to a history of two branches (the shop's own and
meta_assets_cache): every revision applies up to both heads, the models match the DDL, and every
revision downgrades and upgrades again.

Not here: test_single_head_revision (two heads, on purpose) and the experimental
test_downgrade_leaves_no_trace, which walks the history as one line, one revision up and down
at a time, and so undoes a revision of the other branch than the one it just applied."""

from pytest_alembic.tests import (
    test_model_definitions_match_ddl,
    test_up_down_consistency,
    test_upgrade,
)

__all__ = [
    "test_model_definitions_match_ddl",
    "test_up_down_consistency",
    "test_upgrade",
]
