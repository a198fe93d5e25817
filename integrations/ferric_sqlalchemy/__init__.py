"""A second-level cache for SQLAlchemy on ferricd."""
