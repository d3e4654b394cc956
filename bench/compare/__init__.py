"""Compare a candidate run against a baseline: paired quality deltas, errors, routing targets, speed and memory."""

from bench.compare.core import compare, load_routing, load_side, pair_cells

__all__ = ["compare", "load_routing", "load_side", "pair_cells"]
