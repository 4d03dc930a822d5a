"""The unique pair as a UniqueTarget: what the preflight report and the baseline ask about."""

from alembic_lossless_unique.operations.ops import target_from_arguments
from app.names import UNIQUE_PAIR

TARGET = target_from_arguments(**UNIQUE_PAIR)
