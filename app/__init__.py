"""This repository's own migrations, for `public.meta_assets_cache`: the typed model
(`app.models`), the names the revisions act on (`app.names`), the baseline's mechanics and the
preflight report (`python -m app.preflight`). The revisions themselves are in `alembic/versions/`;
the reusable mechanics are the `alembic_lossless_unique` library."""
