"""The embedded job store: SQLite shards, one per gunicorn worker, on local disk."""
