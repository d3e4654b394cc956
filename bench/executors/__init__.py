"""Where cells run: this machine (the default, bench.runner's worker processes) or a Ray cluster (ray_cluster)."""
