"""The hub: identities, devices, portals, root records, sharing, edges. It never sees a key or a name."""
