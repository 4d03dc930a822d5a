"""The autogenerate rewriter on the op streams Alembic's autogenerate produces, and what it
renders, case by case. The whole path (a model change, `alembic revision --autogenerate`, the
revision run online on duplicates, `alembic check`, the downgrade) is in
tests/test_foreign_project.py; these are the cases that test does not meet."""

import pytest
import sqlalchemy as sa
from alembic.autogenerate.api import AutogenContext
from alembic.autogenerate.render import render_op_text
from alembic.migration import MigrationContext
from alembic.operations import ops
from alembic.util import CommandError
from sqlalchemy import Column, Index, Integer, MetaData, Table, Text, UniqueConstraint, func
from sqlalchemy.dialects.postgresql.base import PGDialect
from sqlalchemy.sql.elements import TextClause

from alembic_lossless_unique import safe_unique_constraints, safe_unique_constraints_with
from alembic_lossless_unique.autogenerate.rewriter import IMPORT
from alembic_lossless_unique.operations.ops import (
    EnsureUniqueConstraintOp,
    EnsureUniqueIndexOp,
    UndoUniqueConstraintOp,
    UndoUniqueIndexOp,
    target_from_index_arguments,
)
from alembic_lossless_unique.runtime.errors import MigrationAbort


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


def accepted_by_sqlalchemy(construct: type, option: str) -> bool:
    """Whether this SQLAlchemy lets a model set the PostgreSQL `option` on `construct`: 2.0.0,
    the oldest supported, knows no NULLS NOT DISTINCT on an Index (nor any PostgreSQL option of
    a UniqueConstraint), so a model there cannot declare it and autogenerate never meets it."""
    return any(
        known is construct and option in options
        for known, options in PGDialect.construct_arguments or ()
    )


def script_adding(
    added: ops.CreateUniqueConstraintOp | ops.CreateIndexOp, *before: ops.MigrateOperation
):
    """The MigrationScript autogenerate makes for one unique constraint or index added to a
    table (with `before` in front of it): it in upgrade, its drop in downgrade."""
    upgrade = ops.UpgradeOps(
        [*before, ops.ModifyTableOps(added.table_name, [added], schema=added.schema)]
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


def rendered(container, context, **opts) -> tuple[str, set[str]]:
    """The ops of `container` as the revision file has them (with env.py's `opts` over
    Alembic's defaults), and the imports they add."""
    defaults = {"alembic_module_prefix": "op.", "sqlalchemy_module_prefix": "sa."}
    autogen_context = AutogenContext(context, opts={**defaults, **context.opts, **opts})
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


@pytest.mark.parametrize(
    ("added", "dropped"),
    [
        (ORDERS_NUMBER, ops.DropConstraintOp),
        (
            ops.CreateIndexOp("orders_number_key", "orders", ["number"], unique=True),
            ops.DropIndexOp,
        ),
    ],
    ids=["constraint", "index"],
)
def test_a_table_created_in_the_same_revision_keeps_the_plain_form(added, dropped):
    created = ops.CreateTableOp.from_table(models().tables["orders"])
    script, _ = rewritten(script_adding(added, created), models())

    assert [type(op) for op in flat(script.upgrade_ops)] == [ops.CreateTableOp, type(added)]
    assert dropped in [type(op) for op in flat(script.downgrade_ops)]


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
        (
            ops.CreateIndexOp("ix", "orders", ["number"], unique=True),
            models(primary_key=False),
            "ensure_unique_index needs row_identity",
        ),
        (
            ops.CreateIndexOp("ix", "orders", ["number"], unique=True, mysql_length=10),
            models(),
            "unique index ix on orders sets mysql_length, which ensure_unique_index does not make",
        ),
        (
            ops.CreateIndexOp(None, "orders", ["number"], unique=True),
            models(),
            "a unique index on orders has no name",
        ),
    ],
    ids=[
        "no-primary-key",
        "another-dialects-option",
        "index-no-primary-key",
        "index-another-dialects-option",
        "index-unnamed",
    ],
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
        if accepted_by_sqlalchemy(UniqueConstraint, name.removeprefix("postgresql_"))
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


def test_it_chains_with_another_rewriter():
    seen = []

    def other(context, revision, directives):
        seen.extend(type(op) for op in flat(directives[0].upgrade_ops))

    rewritten(script_adding(ORDERS_NUMBER), models(), safe_unique_constraints.chain(other))
    assert seen == [EnsureUniqueConstraintOp]


# The index form: op.create_index(..., unique=True) on an existing table.


def index_on_orders(metadata: MetaData, name: str, *expressions, **options) -> ops.CreateIndexOp:
    """The CreateIndexOp autogenerate makes for a model's Index(name, *expressions, **options)
    on orders: the expressions as SQLAlchemy elements, the options as the model sets them."""
    orders = metadata.tables["orders"]
    elements = [
        expression(orders.c) if callable(expression) else expression for expression in expressions
    ]
    return ops.CreateIndexOp.from_index(Index(name, *elements, **options))


def test_an_added_unique_index_becomes_ensure_and_its_drop_undo_with_the_same_arguments():
    """A functional unique index: the expression as `sa.text` of the SQL Alembic would render
    for it in op.create_index, in both calls; the plain indexes beside it keep their form."""
    metadata = models()
    lower = index_on_orders(
        metadata, "orders_number_lower_key", lambda c: func.lower(c.number), unique=True
    )
    plain = index_on_orders(metadata, "orders_number_idx", lambda c: c.number)
    script, context = rewritten(script_adding(lower, plain), metadata)

    [kept_plain, ensure], [undo, dropped_plain] = (
        flat(script.upgrade_ops),
        flat(script.downgrade_ops),
    )
    assert (type(kept_plain), type(dropped_plain)) == (ops.CreateIndexOp, ops.DropIndexOp)
    assert isinstance(ensure, EnsureUniqueIndexOp)
    assert isinstance(undo, UndoUniqueIndexOp)
    assert ensure.arguments == undo.arguments and ensure.options == undo.options
    [expression] = ensure.arguments[2]
    assert isinstance(expression, TextClause) and expression.text == "lower(number)"
    assert ensure.target.index_elements == ("lower(number)",)
    assert (ensure.target.row_identity, ensure.target.keep_newest_by) == (("id",), ())
    code, imports = rendered(script.upgrade_ops, context)
    assert IMPORT in imports
    call = (
        "    'orders_number_lower_key',\n"
        "    'orders',\n"
        "    [sa.text('lower(number)')],\n"
        "    keep_newest_by=[],\n"
        "    row_identity=['id'],\n"
        "    private_schema='lossless_unique',\n"
        ")"
    )
    assert "\nop.ensure_unique_index(\n" + call in code
    assert "# Duplicates of (lower(number)): the row kept is the greatest by keep_newest_by" in code
    assert "undo_unique_index brings them back." in code
    code, imports = rendered(script.downgrade_ops, context)
    assert "op.undo_unique_index(\n" + call in code and IMPORT in imports
    code, _ = rendered(script.upgrade_ops, context)
    assert "op.create_index('orders_number_idx', 'orders', ['number'], unique=False)" in code
    assert "unique=True" not in code
    assert ensure.to_diff_tuple()[0] == "add_index"
    assert undo.to_diff_tuple()[0] == "remove_index"
    assert ensure.to_diff_tuple()[1].name == "orders_number_lower_key"


def test_the_index_options_pass_through_to_both_operations():
    """postgresql_where, postgresql_include, postgresql_nulls_not_distinct and postgresql_ops,
    as the model sets them, in ensure_unique_index and in the undo alike: the predicate as
    `sa.text`, an expression's operator class (given to its label) inside its text, a column's
    in postgresql_ops; the SQLAlchemy prefix is env.py's. NULLS NOT DISTINCT where this
    SQLAlchemy lets a model declare it on an Index."""
    nulls_not_distinct = accepted_by_sqlalchemy(Index, "nulls_not_distinct")
    metadata = models()
    index = index_on_orders(
        metadata,
        "orders_open_number_key",
        lambda c: c.customer_id,
        lambda c: func.lower(c.number).label("number_lower"),
        unique=True,
        postgresql_where=metadata.tables["orders"].c.number != "",
        postgresql_include=["updated_at"],
        postgresql_ops={"customer_id": "int4_ops", "number_lower": "text_pattern_ops"},
        **({"postgresql_nulls_not_distinct": True} if nulls_not_distinct else {}),
    )
    script, context = rewritten(script_adding(index), metadata)

    [ensure], [undo] = flat(script.upgrade_ops), flat(script.downgrade_ops)
    target = ensure.target
    assert target.index_elements == ("customer_id int4_ops", "lower(number) text_pattern_ops")
    assert (target.where, target.include, target.nulls_not_distinct) == (
        "number != ''",
        ("updated_at",),
        nulls_not_distinct,
    )
    assert undo.target == target
    for container in (script.upgrade_ops, script.downgrade_ops):
        code, _ = rendered(container, context, sqlalchemy_module_prefix="sqla.")
        for argument in (
            "    ['customer_id', sqla.text('lower(number) text_pattern_ops')],\n",
            "    postgresql_where=sqla.text(\"number != ''\"),\n",
            "    postgresql_include=['updated_at'],\n",
            "    postgresql_ops={'customer_id': 'int4_ops'},\n",
        ):
            assert argument in code
        assert ("    postgresql_nulls_not_distinct=True,\n" in code) == nulls_not_distinct
    code, _ = rendered(script.upgrade_ops, context)
    assert (
        "# Duplicates of (customer_id, lower(number) text_pattern_ops) among the rows where" in code
    )


def test_what_alembic_writes_in_create_index_is_taken_by_ensure_unique_index():
    """A revision Alembic wrote without the rewriter, turned into ensure_unique_index by hand:
    its expressions as `sa.literal_column(...)` and its columns as `sa.column(...)` mean what
    `sa.text(...)` and names mean; anything else in columns is refused in one line."""
    by_alembic = target_from_index_arguments(
        "ix",
        "orders",
        [sa.literal_column("lower(number)"), sa.column("Customer")],
        postgresql_ops={"Customer": "int4_ops"},
    )
    by_hand = target_from_index_arguments(
        "ix",
        "orders",
        [sa.text("lower(number)"), "Customer"],
        postgresql_ops={"Customer": "int4_ops"},
    )

    assert by_alembic == by_hand
    assert by_alembic.index_elements == ("lower(number)", '"Customer" int4_ops')
    with pytest.raises(MigrationAbort, match=r"^unique index ix: columns holds lower\(number\) \("):
        target_from_index_arguments("ix", "orders", [func.lower(sa.column("number"))])
