"""Results: the run directory (manifest, samples, summary), its schema, and resuming."""
