"""Portal: end-to-end encrypted, peer-to-peer storage and sync."""

__version__ = "0.1.0"
__all__ = ["__version__"]
