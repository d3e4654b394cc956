"""bench: measure language-model tiers per task and emit calibrated routing thresholds."""

__version__ = "0.1.0"

# Bump on any breaking change to manifest.json, samples.jsonl or summary.json.
SCHEMA_VERSION = 1
