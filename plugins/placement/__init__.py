"""Placement plugins."""
