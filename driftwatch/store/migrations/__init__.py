"""Versioned schema migrations (Alembic), run by driftwatch.store.db.upgrade."""
