"""Small, single-purpose mechanics behind the revisions: each module does one job.

- ``database``: an autocommit session whose steps open and commit their own transactions
- ``settings``: lock timeouts, retries and waits, from ``alembic -x`` or the environment
- ``catalog``: read-only facts about the table and the uniques on the pair
- ``locks``: one migrator at a time; short lock timeouts with bounded retries
- ``indexes``: concurrent builds and drops, promotion of an index to a constraint
- ``archive``: move duplicate rows aside and back, never destroying them
- ``ledger``: what an upgrade found and did, so a downgrade can undo exactly that
- ``report``: timed steps and the one readable summary
"""
