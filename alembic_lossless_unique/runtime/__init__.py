"""The migrator's session and settings.

- ``environment``: the one call in env.py, online and offline
- ``session``: pooler refusal, a safe search_path, a clean exit
- ``database``, ``database_url``, ``drivers``: the connection, its URL, every driver alike
- ``settings``: the knobs (``-x name=value``, ``MIGRATION_NAME``)
- ``locks``: one migrator at a time; short lock timeouts with bounded retries
- ``replicas``: how far the physical standbys lag, and the pacer that waits for them
- ``surroundings``: foreign keys, triggers, publications: announced, never hidden; a
  publication that would carry the private tables to subscribers not declared ready: refused
- ``pending``: the operations the pending revisions would run
- ``rerunnable``: an ``--sql`` script can always be run again (the one module that hooks Alembic)
- ``errors``: one-line failures
"""
