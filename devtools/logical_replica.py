"""A logical replica: a second throwaway server subscribing to a publisher's publications, as a
hand-made replica or a CDC pipeline does (the publisher runs with wal_level = logical).

    with throwaway_postgres(PUBLISHER_SETTINGS) as publisher, throwaway_postgres() as replica:
        subscription = Subscription(replica, "app", publisher, "app", "all_tables", ["all_tables"])
        subscription.create()
        subscription.wait_until_synced()
        ...
        assert subscription.apply_errors() == 0
        subscription.drop()

CREATE SUBSCRIPTION needs a superuser on the subscriber: the replica's administrator runs it.
"""

import time
from dataclasses import dataclass

from devtools.throwaway_postgres import ThrowawayServer, sql_rows

# What a publisher needs for logical replication; the rest of the defaults suffice for a few
# subscriptions.
PUBLISHER_SETTINGS = {"wal_level": "logical"}


class ReplicationTimeout(AssertionError):
    pass


@dataclass
class Subscription:
    replica: ThrowawayServer
    replica_database: str
    publisher: ThrowawayServer
    publisher_database: str
    name: str
    publications: list[str]

    def sql(self, statement: str, **params):
        """Run `statement` on the replica's database as its superuser; rows, if any."""
        return sql_rows(self.replica, statement, self.replica_database, **params)

    def create(self) -> None:
        publisher = self.publisher
        conninfo = (
            f"host={publisher.host} port={publisher.port} dbname={self.publisher_database}"
            f" user={publisher.user} password={publisher.password}"
        )
        self.sql(
            f"CREATE SUBSCRIPTION {self.name} CONNECTION '{conninfo}'"
            f" PUBLICATION {', '.join(self.publications)}"
        )

    def refresh(self) -> None:
        """Start replicating the tables the publications gained since (copying their rows)."""
        self.sql(f"ALTER SUBSCRIPTION {self.name} REFRESH PUBLICATION WITH (copy_data = true)")

    def wait_until_synced(self, timeout: float = 60) -> None:
        """Until every table of the subscription has had its rows copied and streams."""
        self._wait(
            "the subscription's tables to be copied",
            lambda: (
                not self.sql(
                    "SELECT 1 FROM pg_catalog.pg_subscription_rel r"
                    " JOIN pg_catalog.pg_subscription s ON s.oid = r.srsubid"
                    " WHERE s.subname = :name AND r.srsubstate <> 'r'",
                    name=self.name,
                )
            ),
            timeout,
        )

    def wait_for_row(self, table: str, row_id: str, timeout: float = 60) -> None:
        self._wait(
            f"row {row_id} of {table} to arrive",
            lambda: self.sql(f"SELECT 1 FROM {table} WHERE id = CAST(:id AS uuid)", id=row_id),
            timeout,
        )

    def apply_errors(self) -> int:
        """Errors of the subscription's apply and table-sync workers so far (PostgreSQL 15+)."""
        rows = self.sql(
            "SELECT apply_error_count + sync_error_count FROM pg_catalog.pg_stat_subscription_stats"
            " WHERE subname = :name",
            name=self.name,
        )
        return int(rows[0][0]) if rows else 0

    def drop(self) -> None:
        """Drop the subscription and its slot on the publisher (which a database drop needs)."""
        self.sql(f"DROP SUBSCRIPTION IF EXISTS {self.name}")

    def _wait(self, what: str, done, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            if self.apply_errors():
                raise ReplicationTimeout(f"the subscription's workers failed waiting for {what}")
            if time.monotonic() > deadline:
                raise ReplicationTimeout(f"gave up waiting for {what}")
            time.sleep(0.05)
