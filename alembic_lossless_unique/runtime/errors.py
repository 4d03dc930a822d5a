class MigrationAbort(Exception):
    """A failure the user can act on; its message is one line and never carries a password."""
