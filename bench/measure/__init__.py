"""Measurement: memory sampling, GPU readings, and metrics derived from raw timestamps."""
