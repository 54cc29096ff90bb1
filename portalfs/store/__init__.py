"""Object stores: where sealed chunks and nodes live, named by their id."""

from .base import ObjectStore, StoreStat, check_object
from .local import LocalStore
from .memory import MemoryStore

__all__ = ["ObjectStore", "StoreStat", "check_object", "LocalStore", "MemoryStore"]
