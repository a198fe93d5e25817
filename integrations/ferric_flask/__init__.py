"""Durable server-side Flask sessions on ferricd."""
