"""The working tree: what a writer changes between versions, with no FUSE and no trio in it.

``workspace`` holds the tree in memory (inodes, names, staged contents);
``streaming`` seals a file while it is written; ``commit`` turns staged files
into sealed objects and a new version; ``journal`` makes each closed file
durable before ``close`` returns and replays what a crash left; ``registry``
records which mounts (live working trees) this device runs, for garbage collection. The mount
(``portalfs.mount``) translates FUSE requests onto it; the sync engine takes
its journal's writer lock to merge (docs/design.md, sections 9 and 14).
"""
