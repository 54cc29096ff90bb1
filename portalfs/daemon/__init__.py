"""portald: the per-device daemon that keeps portals in sync with the fabric, and its control socket."""
