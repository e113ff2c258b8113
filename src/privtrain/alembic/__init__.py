"""Alembic migrations of the privtrain database (run via privtrain.platform.db.migrate)."""
