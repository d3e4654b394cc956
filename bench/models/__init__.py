"""Models: the catalog of known models, where their files come from, and the local cache."""

from bench.models.cache import cache_dir, is_cached
from bench.models.catalog import CATALOG, CatalogEntry, get_entry
from bench.models.resolve import ResolvedModel, resolve_model

__all__ = ["CATALOG", "CatalogEntry", "ResolvedModel", "cache_dir", "get_entry", "is_cached", "resolve_model"]
