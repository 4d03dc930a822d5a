"""The five starting states a real database can be in, built on demand with dirty data.

Used by the tests, the demo and the benchmark. Data is generated in SQL (fast at millions of rows)
and is deterministic: the same arguments give the same bytes.
"""

from collections.abc import Callable
from pathlib import Path

REFERENCE_DIR = Path(__file__).resolve().parent.parent / "reference"
SUPABASE_SCHEMA = REFERENCE_DIR / "supabase_like_schema.sql"
SEED_MIGRATION = REFERENCE_DIR / "seed_migration.sql"

STATES = ("empty", "constrained", "drifted", "seedindex", "both")

SEED_INDEX_COMMENT = (
    "Ensures upsert safety for (workspace_id, phone_number_id); added by the manual fix"
)

ADD_ORIGINAL_CONSTRAINT = """
ALTER TABLE public.meta_assets_cache
  ADD CONSTRAINT meta_assets_cache_workspace_id_phone_number_id_key
  UNIQUE (workspace_id, phone_number_id)
"""


def dirty_rows_sql(
    keys: int,
    *,
    workspaces: int = 0,
    duplicate_percent: int = 5,
    null_phone_rows_per_workspace: int = 3,
    keys_from: int = 1,
) -> str:
    """Rows for public.meta_assets_cache (and the workspaces they belong to).

    - `keys` distinct (workspace_id, phone_number_id) pairs; `duplicate_percent` of them have
      2-4 copies, some of which tie on updated_at, some on updated_at and last_synced_at too;
    - last_synced_at is NULL on about a fifth of the rows;
    - every workspace has `null_phone_rows_per_workspace` rows with a NULL phone_number_id, as
      the business-intelligence job writes them (some identical but for the id).

    `keys_from` lets a large table be built in chunks (keys keys_from..keys per call, with the
    same `workspaces` each time and the NULL-phone rows only once), to report progress.
    """
    workspaces = workspaces or max(1, keys // 20)
    return f"""
SET max_parallel_workers_per_gather = 0;
INSERT INTO public.workspaces (id, name)
SELECT md5('workspace/' || w)::uuid, 'workspace ' || w
  FROM generate_series(1, {workspaces}) AS w
ON CONFLICT (id) DO NOTHING;

INSERT INTO public.meta_assets_cache (id, workspace_id, business_id, waba_id, phone_number_id,
    display_phone_number, verified_name, quality_rating, updated_at, last_synced_at, last_error)
SELECT md5('row/' || k || '/' || copy)::uuid,
       md5('workspace/' || (1 + k % {workspaces}))::uuid,
       'biz-' || (k % 97),
       'waba-' || (k % 1013),
       'pn-' || k,
       '+1555' || lpad(k::text, 7, '0'),
       'Business ' || k || CASE WHEN copy > 1 THEN ' (copy ' || copy || ')' ELSE '' END,
       (ARRAY['GREEN', 'YELLOW', 'RED'])[1 + (k + copy) % 3],
       timestamptz '2026-01-01 00:00:00+00'
         + make_interval(secs => CASE WHEN k % 4 = 0 THEN k ELSE k + 3600 * copy * (k % 5) END),
       CASE WHEN (k + copy) % 5 = 0 THEN NULL
            WHEN k % 8 = 0 THEN timestamptz '2026-02-01 00:00:00+00'
            ELSE timestamptz '2026-02-01 00:00:00+00' + make_interval(secs => 60 * copy) END,
       CASE WHEN copy > 1 AND k % 3 = 0 THEN 'rate limited' END
  FROM generate_series({keys_from}, {keys}) AS k,
       generate_series(1, CASE WHEN k % 100 < {duplicate_percent} THEN 2 + k % 3 ELSE 1 END)
         AS copy;

INSERT INTO public.meta_assets_cache (id, workspace_id, business_id, updated_at)
SELECT md5('bi-row/' || w || '/' || n)::uuid,
       md5('workspace/' || w)::uuid,
       'biz-' || (w % 97),
       timestamptz '2026-03-01 00:00:00+00'
         + make_interval(secs => CASE WHEN n = 1 THEN 0 ELSE n END)
  FROM generate_series(1, {workspaces}) AS w,
       generate_series(1, {null_phone_rows_per_workspace}) AS n;
ANALYZE public.meta_assets_cache;
RESET max_parallel_workers_per_gather;
"""


def build_state(execute: Callable[[str], object], state: str, keys: int = 200) -> None:
    """Bring an empty database to `state`; `execute` runs one SQL script."""
    if state not in STATES:
        raise ValueError(f"unknown starting state {state!r}; choose from {', '.join(STATES)}")
    if state == "empty":
        return
    execute(SUPABASE_SCHEMA.read_text())
    if state in ("constrained", "both"):
        execute(ADD_ORIGINAL_CONSTRAINT)
        execute(dirty_rows_sql(keys, duplicate_percent=0))
    else:
        execute(dirty_rows_sql(keys))
    if state in ("seedindex", "both"):
        execute(SEED_MIGRATION.read_text())
        execute(
            "COMMENT ON INDEX public.idx_meta_assets_cache_ws_phone_unique IS "
            f"'{SEED_INDEX_COMMENT}'"
        )
