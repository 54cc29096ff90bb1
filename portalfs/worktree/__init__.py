"""The working tree: what a writer changes between versions, with no FUSE in it.

``workspace`` holds the tree in memory (inodes, names, staged contents);
``reader`` reads clean content (a chunk the device lacks comes from the edges);
``streaming`` seals a file while it is written; ``commit`` turns staged files
into sealed objects and a new version; ``journal`` makes each closed file
durable before ``close`` returns and replays what a crash left; ``live`` holds
a mount's handles, staging and commit schedule, on its trio loop; ``registry``
records which mounts (live working trees) this device runs, for garbage
collection. The mount (``portalfs.mount``) translates FUSE requests onto it;
the sync engine takes its journal's writer lock to merge (docs/design.md,
sections 9, 14 and 17).
"""
