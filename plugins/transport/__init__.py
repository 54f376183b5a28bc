"""Transport plugins."""
