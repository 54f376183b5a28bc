"""Prefetch plugins."""
