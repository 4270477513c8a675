"""pytest fixtures for plugin authors (being written)."""
