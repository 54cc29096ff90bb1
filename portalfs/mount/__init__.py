"""Mounting a portal as a read-write POSIX filesystem (pyfuse3 + trio)."""
