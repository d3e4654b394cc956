"""The routing policy as a service: `bench serve` (app.py)."""
