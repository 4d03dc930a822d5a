"""`python -m alembic_lossless_unique.preflight`: the command; the report is
alembic_lossless_unique.reports.preflight."""

import sys

from alembic_lossless_unique.reports.preflight import main

if __name__ == "__main__":
    sys.exit(main())
