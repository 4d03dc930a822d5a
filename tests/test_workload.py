"""Convergence under the app's real write load, in one run, whatever it writes.

A randomized workload, seeded and reproducible: for every starting state, the upgrade and then
the downgrade each run under a random mix of the app's writers at full speed (inserts of new
and duplicate keys, PostgREST upserts racing on the same key, updates of ranking columns,
re-keys, deletes; devtools.app_traffic). Each time it checks that nothing was lost, that of
each key exactly the newest row stayed, that the downgrade restored exactly, and that no client
saw an error the step does not explain. A failure prints the seed: WORKLOAD_SEED=<seed>
replays the same mixes and the same rows written (the threads' timing is the machine's).
"""

import os
import random

import pytest

from app.names import ARCHIVE, CANONICAL_UNIQUE_NAME, UNIQUE_PAIR_LEDGER
from devtools.app_traffic import Mix
from devtools.starting_states import STATES
from tests.online_support import (
    DEDUPE_QUERY,
    SURVIVORS,
    Session,
    holding,
    ledger_actions,
    libpq_dsn,
    migrator_waiting_on_lock,
    start_alembic,
    wait_until,
)
from tests.support import BASELINE, HEAD, succeed
from tests.traffic_support import traffic, unexpected_errors
from tests.workload_support import (
    conservation_problems,
    contents,
    newest_kept_problems,
)

pytestmark = pytest.mark.slow

SEED = int(os.environ.get("WORKLOAD_SEED") or random.SystemRandom().randrange(10**9))
# Whether ON CONFLICT upserts are served before and after the unique pair's upgrade.
SERVES_AT_BASELINE = {
    "empty": True,
    "constrained": True,
    "drifted": False,
    "seedindex": True,
    "both": True,
}
KEYS = int(os.environ.get("WORKLOAD_KEYS", "300"))


@pytest.mark.parametrize("state", STATES)
def test_upgrade_and_downgrade_converge_under_random_app_writes(state, harness):
    seed = SEED + STATES.index(state)
    try:
        run_workload(harness, state, seed)
    except BaseException as failure:
        raise AssertionError(
            f"{failure}\nreplay with WORKLOAD_SEED={SEED} (state {state}, seed {seed})"
        ) from failure


def run_workload(harness, state: str, seed: int) -> None:
    rng = random.Random(seed)
    harness.build_state(state, keys=KEYS)
    harness.upgrade(BASELINE)
    if state == "empty":  # the app's first workspaces, for its rows to belong to
        harness.execute(
            "INSERT INTO public.workspaces (name) SELECT 'ws' FROM generate_series(1, 5)"
        )
    schema_at_baseline = harness.schema_dump()
    serves = SERVES_AT_BASELINE[state]

    up_mix, down_mix = Mix.random(rng), Mix.random(rng)
    upgraded, outcomes, problems = step_under_traffic(
        harness, up_mix, rng, "upgrade", "head", serves_before=serves, serves_after=True
    )
    problems += newest_kept_problems(harness, outcomes)
    if state != "empty" and "built" in ledger_actions(harness):
        # One build: nothing the app wrote made the move leave a duplicate behind.
        assert ledger_actions(harness).count("built") == 1, upgraded.output
    assert not problems, f"upgrade under {up_mix.describe()}:\n" + "\n".join(problems[:20])
    assert [(u.index_name, u.constraint_name) for u in harness.pair_uniques()] == [
        (CANONICAL_UNIQUE_NAME, CANONICAL_UNIQUE_NAME)
    ]

    _, _, problems = step_under_traffic(
        harness, down_mix, rng, "downgrade", "-1", serves_before=True, serves_after=serves
    )
    assert not problems, f"downgrade under {down_mix.describe()}:\n" + "\n".join(problems[:20])
    assert harness.version() == BASELINE
    assert harness.count(ARCHIVE) == harness.count(UNIQUE_PAIR_LEDGER) == 0
    assert harness.schema_dump() == schema_at_baseline


def step_under_traffic(harness, mix, rng, *command: str, serves_before: bool, serves_after: bool):
    """Run an alembic command while `mix` writes; return its result, what the clients saw, and
    every error or lost or invented row that the command's step does not explain."""
    before = contents(harness)
    with traffic(harness, mix, rng.randrange(10**9), label=command[0]) as running:
        result = harness.cli(*command)
    succeed(result)
    outcomes = running.outcomes
    problems = unexpected_errors(outcomes, serves_before=serves_before, serves_after=serves_after)
    problems += conservation_problems(before, contents(harness), outcomes)
    return result, outcomes, problems


# The case the randomized workload meets by chance, forced: the app changes listed rows while
# the move waits for the first of them.

GROUPS = """
SELECT workspace_id::text, phone_number_id,
       array_agg(id::text ORDER BY updated_at DESC, last_synced_at DESC NULLS LAST, id DESC)
  FROM public.meta_assets_cache
 WHERE phone_number_id IS NOT NULL
 GROUP BY 1, 2 HAVING count(*) > 1
 ORDER BY 1, 2"""
FIRST_LISTED = """
SELECT id::text FROM public.meta_assets_cache c
 WHERE phone_number_id IS NOT NULL
   AND EXISTS (SELECT 1 FROM public.meta_assets_cache o
                WHERE o.workspace_id = c.workspace_id AND o.phone_number_id = c.phone_number_id
                  AND o.ctid <> c.ctid)
 ORDER BY ctid LIMIT 1"""


def test_rows_the_app_changes_between_the_list_and_the_move_are_ranked_again(harness):
    """While the move waits for the first row it locks, the app makes a listed duplicate the
    newest of its key, deletes the kept row of another key, re-keys a listed row, deletes one
    of a pair, and changes a column of a row to archive. The first move archives exactly what
    the table holds then: one build, the newest row of each key kept, nothing lost."""
    harness.build_state("drifted")
    harness.upgrade(BASELINE)
    first = harness.scalar(FIRST_LISTED)
    groups = [g for g in harness.rows(GROUPS) if first not in g[2]]
    promoted_key, kept_gone_key, rekeyed_key, halved_key, changed_key = (
        next(g for g in groups if len(g[2]) > 2),
        *[g for g in groups if len(g[2]) > 2][1:3],
        next(g for g in groups if len(g[2]) == 2),
        [g for g in groups if len(g[2]) == 2][1],
    )
    hold = holding(
        harness, f"SELECT 1 FROM public.meta_assets_cache WHERE id = '{first}' FOR UPDATE"
    )
    app = Session(libpq_dsn(harness.url), options="-c lock_timeout=5s")
    try:
        running = start_alembic("upgrade", "head", env={"DATABASE_URL": harness.url})
        wait_until(
            "the move to wait for the first listed row",
            lambda: migrator_waiting_on_lock(harness, DEDUPE_QUERY),
            migrator=running,
        )
        newest = promoted_key[2][-1]  # the oldest of its key becomes the newest
        app.run(
            "UPDATE public.meta_assets_cache SET updated_at = now(), last_error = 'newest'"
            " WHERE id = %s", newest,
        )  # fmt: skip
        app.run("DELETE FROM public.meta_assets_cache WHERE id = %s", kept_gone_key[2][0])
        app.run(
            "UPDATE public.meta_assets_cache SET phone_number_id = 'rekeyed' WHERE id = %s",
            rekeyed_key[2][-1],
        )
        app.run("DELETE FROM public.meta_assets_cache WHERE id = %s", halved_key[2][-1])
        app.run(
            "UPDATE public.meta_assets_cache SET last_error = 'changed' WHERE id = %s",
            changed_key[2][-1],
        )
    finally:
        hold.rollback()
        hold.close()
        app.close()
    result = running.wait()

    succeed(result)
    assert ledger_actions(harness).count("built") == 1, result.output
    assert "ranked again under row locks: 3 listed rows the app had changed" in result.output
    live = {row[0] for row in harness.rows("SELECT id::text FROM public.meta_assets_cache")}
    archived = dict(harness.rows(f"SELECT id::text, kept_id::text FROM {ARCHIVE}"))
    assert newest in live and archived[promoted_key[2][0]] == newest
    assert kept_gone_key[2][1] in live and kept_gone_key[2][2] in archived
    assert rekeyed_key[2][-1] in live
    assert halved_key[2][0] in live and halved_key[2][0] not in archived.values()
    assert (
        harness.scalar(f"SELECT last_error FROM {ARCHIVE} WHERE id = :id", id=changed_key[2][-1])
        == "changed"
    )
    assert {row[0] for row in harness.rows(SURVIVORS)} == live & {
        row[0]
        for row in harness.rows(
            "SELECT id::text FROM public.meta_assets_cache WHERE phone_number_id IS NOT NULL"
        )
    }
    assert newest_kept_problems(harness, []) == []
    assert harness.version() == HEAD
