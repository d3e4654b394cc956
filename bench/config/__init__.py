"""Typed configuration: suites, loaded from YAML and validated with file, line and field in every error."""

from bench.config.suite import Suite, load_suite

__all__ = ["Suite", "load_suite"]
