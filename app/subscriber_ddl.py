"""The tables a logical subscriber of this database needs before `alembic upgrade head`.

    python -m app.subscriber_ddl > subscriber.sql
    psql "$SUBSCRIBER_URL" -v ON_ERROR_STOP=1 -f subscriber.sql

A publication FOR ALL TABLES (as CDC tools and hand-made replicas use) carries
meta_assets_migration's tables (the version table, the baseline's ledger, the unique pair's
ledger, archive and re-pointing record) to every subscriber; one that lacks them stops
replicating every table at the first row the migration writes there. Until each is declared
ready (`alembic -x subscribers_ready=PUBLICATION upgrade head`), the run refuses before it
writes anything. See alembic_lossless_unique.subscriber_ddl.
"""

import sys

from alembic_lossless_unique.ddl import subscriber_ddl
from app.baseline import CREATE_BASELINE_LEDGER
from app.names import VERSION_TABLE
from app.unique_pair import TARGET


def script() -> str:
    return subscriber_ddl.script(
        TARGET, version_table=VERSION_TABLE, extra=[CREATE_BASELINE_LEDGER]
    )


def main() -> int:
    sys.stdout.write(script())
    return 0


if __name__ == "__main__":
    sys.exit(main())
