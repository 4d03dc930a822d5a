"""The SQL each step runs, written once for the online path, the offline script and preflight.

- ``plan``: the one decision (build, adopt, rename, drop), as a query for every reader
- ``probe``: the index form's key as PostgreSQL parses it, from a probe index on a temporary copy
- ``checks``: every refusal, before anything changes (refuse, or report for preflight)
- ``dedupe``: duplicates moved to the archive, child rows re-pointed, counts checked
- ``restore``: archived rows back, child rows pointed back, checked
- ``guard``: new duplicates rejected while the constraint is being built
- ``indexes``: concurrent builds and drops, catalog changes under lock retries, progress
- ``ledger``: what an operation found and did, for re-runs and the downgrade
- ``foreign_keys``: the foreign keys into the table and out of it, as the catalog has them
- ``comparisons``: equality as the unique index judges it, whatever the column types
- ``private_schema``: where archive, ledger and guard live, closed to every other role
- ``subscriber_ddl``: the private tables a logical subscriber must have first
- ``sqltext``: identifiers, literals and names, quoted once
"""
