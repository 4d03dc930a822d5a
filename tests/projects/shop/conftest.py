"""pytest-alembic's fixtures for the shop: its alembic.ini, and the database DATABASE_URL names,
emptied before every test (everything the migrating role owns in it is dropped) through a
connection of its own, so that pytest-alembic's engine starts with no connection open."""

import os

import pytest
from pytest_alembic.config import Config
from sqlalchemy import create_engine


@pytest.fixture
def alembic_config() -> Config:
    return Config(config_options={"file": "alembic.ini"})


@pytest.fixture
def alembic_engine():
    cleaner = create_engine(os.environ["DATABASE_URL"])
    with cleaner.begin() as connection:
        connection.exec_driver_sql("DROP OWNED BY CURRENT_USER")
    cleaner.dispose()
    engine = create_engine(os.environ["DATABASE_URL"])
    yield engine
    engine.dispose()
