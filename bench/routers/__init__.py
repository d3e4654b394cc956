"""Routing decisions made from the request alone, before any model runs (the personal-data rule)."""
