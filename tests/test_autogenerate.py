"""The autogenerate rewriter on the op streams Alembic's autogenerate produces, and what it
renders, case by case. The whole path (a model change, `alembic revision --autogenerate`, the
revision run online on duplicates, `alembic check`, the downgrade) is in
tests/test_foreign_project.py; these are the cases that test does not meet."""

import pytest
from alembic.autogenerate.api import AutogenContext
from alembic.autogenerate.render import render_op_text
from alembic.migration import MigrationContext
from alembic.operations import ops
from alembic.util import CommandError
from sqlalchemy import Column, Integer, MetaData, Table, Text, UniqueConstraint
from sqlalchemy.exc import ArgumentError

from alembic_lossless_unique import safe_unique_constraints, safe_unique_constraints_with
from alembic_lossless_unique.autogenerate.rewriter import IMPORT
from alembic_lossless_unique.operations.ops import EnsureUniqueConstraintOp, UndoUniqueConstraintOp


def models(*table_args, schema: str | None = None, primary_key: bool = True) -> MetaData:
    metadata = MetaData()
    Table(
        "orders",
        metadata,
        Column("id", Integer, primary_key=primary_key),
        Column("customer_id", Integer),
        Column("number", Text),
        Column("updated_at", Integer),
        *table_args,
        schema=schema,
    )
    return metadata


def script_adding(constraint: ops.CreateUniqueConstraintOp, *before: ops.MigrateOperation):
    """The MigrationScript autogenerate makes for one unique constraint added to a table (with
    `before` in front of it): the constraint in upgrade, its drop in downgrade."""
    upgrade = ops.UpgradeOps(
        [*before, ops.ModifyTableOps(constraint.table_name, [constraint], schema=constraint.schema)]
    )
    return ops.MigrationScript("0002", upgrade, upgrade.reverse())


def rewritten(script: ops.MigrationScript, metadata: MetaData, rewriter=safe_unique_constraints):
    context = MigrationContext.configure(
        dialect_name="postgresql", opts={"target_metadata": metadata}
    )
    directives = [script]
    rewriter(context, ("head",), directives)
    [result] = directives
    return result, context


def flat(container) -> list:
    found = []
    for op in container.ops:
        found.extend(flat(op) if hasattr(op, "ops") else [op])
    return found


def rendered(container, context) -> tuple[str, set[str]]:
    """The ops of `container` as the revision file has them, and the imports they add."""
    autogen_context = AutogenContext(context)
    code = "\n".join(render_op_text(autogen_context, op) for op in flat(container))
    return code, autogen_context.imports


ORDERS_NUMBER = ops.CreateUniqueConstraintOp(
    "orders_customer_id_number_key", "orders", ["customer_id", "number"]
)


def test_an_added_unique_becomes_ensure_and_its_drop_undo_with_the_same_arguments():
    script, context = rewritten(script_adding(ORDERS_NUMBER), models())

    [ensure], [undo] = flat(script.upgrade_ops), flat(script.downgrade_ops)
    assert isinstance(ensure, EnsureUniqueConstraintOp)
    assert isinstance(undo, UndoUniqueConstraintOp)
    assert ensure.arguments == undo.arguments
    assert ensure.options == undo.options
    assert ensure.target.row_identity == ("id",)
    assert ensure.target.keep_newest_by == ()
    code, imports = rendered(script.upgrade_ops, context)
    assert IMPORT in imports
    assert "op.ensure_unique_constraint(\n    'orders_customer_id_number_key'," in code
    assert "(here: the greatest id)" in code
    code, imports = rendered(script.downgrade_ops, context)
    assert "op.undo_unique_constraint(" in code and IMPORT in imports
    assert ensure.to_diff_tuple()[0] == "add_constraint"
    assert undo.to_diff_tuple()[0] == "remove_constraint"


def test_keep_newest_by_per_table_and_the_schema_are_rendered():
    constraint = ops.CreateUniqueConstraintOp(
        "orders_customer_id_number_key", "orders", ["customer_id", "number"], schema="shop"
    )
    rewriter = safe_unique_constraints_with(
        keep_newest_by={"shop.orders": ["updated_at"]}, private_schema="shop_migration"
    )
    script, context = rewritten(script_adding(constraint), models(schema="shop"), rewriter)

    code, _ = rendered(script.upgrade_ops, context)
    assert "schema='shop'," in code
    assert "keep_newest_by=['updated_at']," in code
    assert "private_schema='shop_migration'," in code
    assert "(here: the greatest updated_at, then id)" in code


def test_a_table_created_in_the_same_revision_keeps_the_plain_form():
    created = ops.CreateTableOp.from_table(models().tables["orders"])
    script, _ = rewritten(script_adding(ORDERS_NUMBER, created), models())

    assert [type(op) for op in flat(script.upgrade_ops)] == [
        ops.CreateTableOp,
        ops.CreateUniqueConstraintOp,
    ]
    assert ops.DropConstraintOp in [type(op) for op in flat(script.downgrade_ops)]


def test_an_unnamed_unique_gets_the_name_postgresql_would_give_it():
    unnamed = ops.CreateUniqueConstraintOp(None, "orders", ["customer_id", "number"])
    script, _ = rewritten(script_adding(unnamed), models())

    [ensure], [undo] = flat(script.upgrade_ops), flat(script.downgrade_ops)
    assert ensure.arguments[0] == "orders_customer_id_number_key"
    assert isinstance(undo, UndoUniqueConstraintOp)


@pytest.mark.parametrize(
    ("constraint", "metadata", "expected"),
    [
        (ORDERS_NUMBER, models(primary_key=False), "table orders has no primary key"),
        (
            ops.CreateUniqueConstraintOp(
                "uq", "orders", ["customer_id", "number"], sqlite_on_conflict="IGNORE"
            ),
            models(),
            "sets sqlite_on_conflict, which ensure_unique_constraint does not make",
        ),
    ],
    ids=["no-primary-key", "another-dialects-option"],
)
def test_what_the_operation_cannot_make_is_refused_in_one_line(constraint, metadata, expected):
    with pytest.raises(CommandError, match=expected):
        rewritten(script_adding(constraint), metadata)


def test_the_constraints_options_pass_through_to_both_operations():
    """deferrable, initially, postgresql_include and postgresql_nulls_not_distinct, as the
    model sets them, in ensure_unique_constraint and in the undo alike."""
    # SQLAlchemy 2.0.0, the oldest supported, takes neither postgresql_ option on a
    # UniqueConstraint: a model on it cannot carry them, so neither can its autogenerated op.
    dialect_options = {
        name: value
        for name, value in (
            ("postgresql_include", ("updated_at",)),
            ("postgresql_nulls_not_distinct", True),
        )
        if unique_constraint_accepts(name, value)
    }
    constraint = ops.CreateUniqueConstraintOp(
        "uq",
        "orders",
        ["customer_id", "number"],
        deferrable=True,
        initially="DEFERRED",
        **dialect_options,
    )
    script, context = rewritten(script_adding(constraint), models())

    [ensure], [undo] = flat(script.upgrade_ops), flat(script.downgrade_ops)
    target = ensure.target
    assert (target.deferral, target.include, target.nulls_not_distinct) == (
        " DEFERRABLE INITIALLY DEFERRED",
        tuple(dialect_options.get("postgresql_include", ())),
        dialect_options.get("postgresql_nulls_not_distinct", False),
    )
    assert undo.target == target
    for container in (script.upgrade_ops, script.downgrade_ops):
        code, _ = rendered(container, context)
        assert "deferrable=True," in code and "initially='DEFERRED'," in code
        for name, value in dialect_options.items():
            shown = list(value) if isinstance(value, tuple) else value
            assert f"{name}={shown!r}," in code


def unique_constraint_accepts(option: str, value: object) -> bool:
    try:
        UniqueConstraint("customer_id", **{option: value})
    except ArgumentError:
        return False
    return True


def test_it_chains_with_another_rewriter():
    seen = []

    def other(context, revision, directives):
        seen.extend(type(op) for op in flat(directives[0].upgrade_ops))

    rewritten(script_adding(ORDERS_NUMBER), models(), safe_unique_constraints.chain(other))
    assert seen == [EnsureUniqueConstraintOp]
