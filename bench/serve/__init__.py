"""The routing policy as a service, `bench serve`: app.py (FastAPI routes, request parsing), cascade.py (the
plan run tier by tier under per-tier limits and deadlines), metrics.py (Prometheus), log.py (JSONL request log)."""
