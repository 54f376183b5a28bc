"""Cache plugins."""
