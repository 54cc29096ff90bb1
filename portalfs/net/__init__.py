"""Transports for the edge protocol: QUIC (aioquic or qh3) and TLS over TCP. Thin trio adapters."""
