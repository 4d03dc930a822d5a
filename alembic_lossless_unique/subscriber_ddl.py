"""`python -m alembic_lossless_unique.subscriber_ddl`: the command; the DDL is
alembic_lossless_unique.ddl.subscriber_ddl."""

import sys

from alembic_lossless_unique.ddl.subscriber_ddl import main

if __name__ == "__main__":
    sys.exit(main())
