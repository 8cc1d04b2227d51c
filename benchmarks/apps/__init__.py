"""Worker modules for ``dramatiq``: one app per system under test."""
