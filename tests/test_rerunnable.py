"""The hooks on Alembic's offline output (alembic_lossless_unique/runtime/rerunnable.py): what
they make of the script, and a loud failure, not a script that silently stops being
re-runnable, when the Alembic behaviour they rely on changes."""

import io
import re

import pytest
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from alembic_lossless_unique.runtime.rerunnable import DUE, AlembicChanged, make_rerunnable
from tests.offline_support import the_offline_scripts
from tests.support import BASELINE, HEAD, VERSION_TABLE, alembic_config


@pytest.fixture(scope="module")
def scripts() -> dict[str, str]:
    return the_offline_scripts()


@pytest.mark.parametrize("name", ["concurrent", "blocking", "downgrade"])
def test_every_step_opens_with_its_due_check_and_writes_the_version_only_when_due(name, scripts):
    script = scripts[name]
    steps = script.split("\nBEGIN;\n\n")[1:]
    # The env's own transaction is not a step; every other transaction opens with the check.
    assert all(step.startswith("DO $due$") for step in steps[1:] if "-- Running" in step)
    assert script.count("DO $due$") == script.count("\nBEGIN;\n") - 1
    assert script.count("-- Running ") == 2
    for statement in ("INSERT INTO", "UPDATE", "DELETE FROM"):
        assert not re.search(rf"^{statement} {VERSION_TABLE}", script, re.M)
    assert script.count("EXECUTE '") >= 2  # the version row's changes, inside DO blocks
    if name != "downgrade":
        assert f"CREATE TABLE IF NOT EXISTS {VERSION_TABLE} (" in script
        assert not re.search(rf"^CREATE TABLE {VERSION_TABLE}", script, re.M)
    # Every DO block of the revisions' own either checks the setting or sets what the block
    # after it checks.
    assert DUE in script


def test_a_step_is_due_by_what_the_version_table_holds(scripts):
    due_checks = re.findall(r"DO \$due\$(.*?)\$due\$;", scripts["concurrent"], re.S)
    baseline, unique_pair = due_checks[0], due_checks[1]
    assert f"NOT (applied && ARRAY['{BASELINE}', '{HEAD}']::text[])" in baseline
    assert f"NOT (applied && ARRAY['{HEAD}']::text[])" in unique_pair
    assert f"applied && ARRAY['{BASELINE}', '{HEAD}']::text[]" in unique_pair.split("AND", 1)[1]


def offline_context(steps=()) -> MigrationContext:
    return MigrationContext.configure(
        dialect_name="postgresql",
        opts={
            "as_sql": True,
            "output_buffer": io.StringIO(),
            "fn": lambda heads, context: iter(steps),
            "transaction_per_migration": True,
        },
    )


def script_directory() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


@pytest.mark.parametrize(
    ("break_alembic", "named"),
    [
        (lambda context: setattr(context, "_migrations_fn", None), "_migrations_fn"),
        (lambda context: setattr(context.impl, "emit_commit", None), "emit_commit"),
        (lambda context: setattr(context.impl, "_exec", None), "_exec"),
        (lambda context: setattr(context, "_version", None), "_version"),
    ],
    ids=["steps", "commit", "exec", "version-table"],
)
def test_a_changed_alembic_fails_loudly(break_alembic, named):
    context = offline_context()
    break_alembic(context)
    with pytest.raises(AlembicChanged, match=named):
        make_rerunnable(context, script_directory())


def test_a_step_run_without_its_begin_fails_loudly():
    """Were Alembic to open a step's transaction some other way, the step would have no due
    check: the run fails instead of writing such a script."""
    directory = script_directory()
    context = offline_context(directory._upgrade_revs(HEAD, ()))  # as `alembic upgrade` does
    hooks = make_rerunnable(context, directory)
    hooks.finish()  # no step yet: fine
    ran = list(context._migrations_fn((), context))  # no begin_transaction(): no emit_begin()
    assert len(ran) == 2
    with pytest.raises(AlembicChanged, match="emit_begin"):
        hooks.finish()
