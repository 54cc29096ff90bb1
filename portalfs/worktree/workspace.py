"""The working tree of a mounted portal: inodes in memory over an immutable version.

Directories load their entries from the committed tree on first use; every
change happens here, in memory, and marks the changed inode and its ancestors
dirty until the committer turns them into new nodes and a new version. File
content that changes goes to a private staging file; clean file content is
read from the version's chunks by the filesystem layer.

No FUSE and no trio here: every method is synchronous, raises ``FsError(errno)``
for the filesystem layer to translate, and takes the time as a parameter.
FIFOs, sockets and device nodes are entries with a mode (and a device
number): the kernel serves them, this tree only keeps them. A hard-linked
file is one inode with several names (its first, ``name``/``parent``, and
``others``); in the tree each name is an entry carrying the same link group
id, and every directory above one says so (``links``), so that the workspace
loads all of a group's names when it opens the tree (docs/design.md, "Tree").
"""

from __future__ import annotations

import errno
import itertools
import os
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..sealing import ChunkRef
from ..tree import LINK_ID_SIZE, NAME_MAX, NO_XATTRS, Entry, FileKind, Part, load_dir

__all__ = [
    "FsError",
    "Followed",
    "Inode",
    "Workspace",
    "ROOT_INODE",
    "MAX_FILE_SIZE",
    "RENAME_NOREPLACE",
    "RENAME_EXCHANGE",
]

ROOT_INODE = 1
RENAME_NOREPLACE = 1  # rename(2) flags, as Linux defines them
RENAME_EXCHANGE = 2
MAX_FILE_SIZE = 1 << 40  # 1 TiB: larger sizes get EFBIG
SHARED_INTS = 4096


def _xattrs(entry: Entry) -> Mapping[bytes, bytes]:
    return dict(entry.xattrs) if entry.xattrs else NO_XATTRS


class FsError(Exception):
    def __init__(self, errno_: int) -> None:
        super().__init__(os.strerror(errno_))
        self.errno = errno_


@dataclass(eq=False, slots=True)
class Inode(FileKind):
    ino: int
    name: bytes
    parent: Inode | None
    mode: int
    uid: int
    gid: int
    mtime_ns: int
    ctime_ns: int
    atime_ns: int
    size: int = 0
    node: ChunkRef | None = None  # committed content: a file or directory node
    target: bytes | None = None
    # Shared while empty, replaced whole on a change: a mount holds an inode per name it has listed.
    xattrs: Mapping[bytes, bytes] = field(default_factory=lambda: NO_XATTRS)
    rdev: int = 0  # a device node's number
    others: tuple[tuple[Inode, bytes], ...] = ()  # (directory, name): its other hard links
    link: bytes | None = None  # its link group in the tree, while it has several names
    links: bool = False  # a directory: hard-linked names below it, as last committed
    children: dict[bytes, Inode] | None = None  # directories, once loaded
    subdirs: int = 0  # directories among ``children`` (for the link count)
    staging: Path | None = None  # files whose content changed: in a staging file,
    memory: bytearray | None = None  # ... or, while small, in memory
    gen: int = 0  # bumped on every change to this inode
    committed_gen: int = 0
    dirty_below: bool = False  # some descendant changed since the last commit
    lookups: int = 0
    opens: int = 0
    writers: int = 0  # open handles that may write
    committed_size: int = 0  # size of the bytes ``node`` holds
    unlinked: bool = False
    content_gen: int = 0  # bumped when the bytes change
    committed_content_gen: int = 0  # content_gen of the bytes ``node`` holds
    kernel_cache_gen: int = -1  # content_gen the kernel page cache was filled from

    @property
    def staged(self) -> bool:
        return self.staging is not None or self.memory is not None

    @property
    def dirty(self) -> bool:
        return self.gen != self.committed_gen

    @property
    def names(self) -> int:
        return 0 if self.parent is None else 1 + len(self.others)

    def entry(self, name: bytes | None = None, like: Entry | None = None) -> Entry:
        """This inode as a tree entry under ``name`` (default: its own), with the content last committed;
        ``like`` itself when it is that entry already (the one a checkpoint kept of a name in a directory it
        commits again: the entries of a big directory that did not change are not made, or encoded, again)."""
        name = self.name if name is None else name
        size = self.committed_size if self.is_file else 0
        node = self.node if (not self.is_file or size > 0) else None
        rdev = self.rdev if self.is_device else 0
        link = self.link if self.others else None
        if (
            like is not None
            and like.name == name
            and like.mode == self.mode
            and like.mtime_ns == self.mtime_ns
            and like.ctime_ns == self.ctime_ns
            and like.size == size
            and like.node == node
            and like.uid == self.uid
            and like.gid == self.gid
            and like.target == self.target
            and like.xattrs == self.xattrs
            and like.rdev == rdev
            and like.link == link
            and like.links == self.links
        ):
            return like
        # the inode's mapping is replaced whole on a change, never changed in place: the entry shares it
        return Entry(name, self.mode, self.uid, self.gid, self.mtime_ns, self.ctime_ns, size, node, self.target,
                     self.xattrs, rdev, link, self.links)  # fmt: skip


def _changed_here(inode: Inode) -> bool:
    """Changed since the last checkpoint: a name made or changed, or content written and not yet committed."""
    return inode.dirty or (inode.is_file and inode.content_gen != inode.committed_content_gen)


def _replaced_while_open(inode: Inode, entry: Entry, here: Callable[[Inode], bool]) -> bool:
    changed = inode.node != entry.node or inode.committed_size != entry.size
    return inode.is_file and inode.opens > 0 and not here(inode) and changed and entry.is_file


def _check_name(name: bytes) -> None:
    if len(name) > NAME_MAX:
        raise FsError(errno.ENAMETOOLONG)
    if not name or name in (b".", b"..") or b"/" in name:
        raise FsError(errno.EINVAL)


@dataclass(slots=True)
class Followed:
    """What moving a tree onto another version changed, for the kernel's caches."""

    inodes: list[int] = field(default_factory=list)  # content or attributes changed
    entries: list[tuple[int, bytes]] = field(default_factory=list)  # (directory, name) appeared or went


class Workspace:
    def __init__(
        self,
        root: Entry,
        load_node: Callable[[ChunkRef], bytes],
        staging_dir: Path,
        read_only: bool = False,
    ) -> None:
        self._load_node = load_node
        self.staging_dir = staging_dir
        self.read_only = read_only
        self._next_ino = itertools.count(ROOT_INODE + 1)
        self.inodes: dict[int, Inode] = {}
        self.garbage: list[Path] = []
        self._groups: dict[bytes, Inode] = {}  # link group -> its inode, for the names loaded so far
        self._ints: dict[int, int] = {}  # see _shared
        # The entries the last checkpoint made of each directory it committed, by name (``Inode.entry``'s
        # ``like``); only those directories, so that what is kept is what changes.
        self.last_entries: dict[Inode, dict[bytes, Entry]] = {}
        # The parts it stored each of those in, when in parts: a part whose entries did not change is kept whole.
        self.last_parts: dict[Inode, list[Part]] = {}
        self.root = self._inode_from_entry(root, None, ino=ROOT_INODE)
        self.root.lookups = 1
        self._load_linked(self.root)

    def _load_linked(self, directory: Inode) -> None:
        """Load every directory whose subtree holds hard-linked names, so that each group is one inode."""
        if directory.links:
            for child in self.children(directory).values():
                if child.is_dir:
                    self._load_linked(child)

    # inodes

    def _inode_from_entry(self, entry: Entry, parent: Inode | None, ino: int | None = None) -> Inode:
        inode = Inode(
            ino=ino if ino is not None else next(self._next_ino),
            name=entry.name,
            parent=parent,
            mode=self._shared(entry.mode),
            uid=self._shared(entry.uid),
            gid=self._shared(entry.gid),
            mtime_ns=entry.mtime_ns,
            ctime_ns=entry.ctime_ns,
            atime_ns=entry.mtime_ns,
            size=entry.size,
            committed_size=entry.size,
            node=entry.node,
            target=entry.target,
            xattrs=_xattrs(entry),
            rdev=entry.rdev,
            link=entry.link,
            links=entry.links,
        )
        self.inodes[inode.ino] = inode
        if entry.link is not None:
            self._groups.setdefault(entry.link, inode)
        return inode

    def _shared(self, value: int) -> int:
        """One int object for a value that many inodes hold (a mode, an owner): 28 bytes less for each."""
        known = self._ints.get(value)
        if known is None:
            if len(self._ints) >= SHARED_INTS:
                return value
            known = self._ints[value] = value
        return known

    def _group(self, entry: Entry) -> Inode | None:
        """The inode already loaded (and still linked) of the hard-linked file ``entry`` names, if any."""
        group = None if entry.link is None or entry.is_dir else self._groups.get(entry.link)
        return None if group is None or group.unlinked else group

    def adopt(self, parent: Inode, entry: Entry) -> Inode:
        """Place ``entry`` (a committed subtree) under ``parent``, replacing what has its name. A name of a
        hard-linked file that is loaded takes the entry's content and metadata for every name of it."""
        group = self._group(entry)
        if group is not None:
            if self.children(parent).get(entry.name) is not group:
                if entry.name in self.children(parent):
                    self._gone(self._unlink_name(parent, entry.name))
                self._link(parent, entry.name, group)
            self._take(group, entry)
            self.touch(group)
            self.touch(parent)
            return group
        if entry.name in self.children(parent):
            self._gone(self._unlink_name(parent, entry.name))
        inode = self._inode_from_entry(entry, parent)
        self._link(parent, entry.name, inode)
        if inode.is_dir and inode.node is None:
            inode.children = {}
        self.touch(inode)
        self.touch(parent)
        return inode

    def get(self, ino: int) -> Inode:
        try:
            return self.inodes[ino]
        except KeyError:
            raise FsError(errno.ENOENT) from None

    def children(self, directory: Inode) -> dict[bytes, Inode]:
        if not directory.is_dir:
            raise FsError(errno.ENOTDIR)
        if directory.children is None:
            directory.children = {}
            if directory.node is not None:
                for entry in load_dir(directory.node, self._load_node):
                    # another name of a file already loaded is that file; any other entry, an inode of its own
                    self._link(directory, entry.name, self._group(entry) or self._inode_from_entry(entry, directory))
        return directory.children

    def lookup(self, parent: Inode, name: bytes) -> Inode:
        if len(name) > NAME_MAX:
            raise FsError(errno.ENAMETOOLONG)
        if name == b".":
            return parent
        if name == b"..":
            return parent.parent or parent
        child = self.children(parent).get(name)
        if child is None:
            raise FsError(errno.ENOENT)
        return child

    def nlink(self, inode: Inode) -> int:
        if inode.is_dir:
            self.children(inode)  # loads it, counting subdirectories
            return 2 + inode.subdirs
        return 0 if inode.unlinked else inode.names

    def _link(self, parent: Inode, name: bytes, inode: Inode) -> None:
        """Give ``inode`` the name ``name`` in ``parent``: its first, or another hard link."""
        siblings = parent.children if parent.children is not None else self.children(parent)
        siblings[name] = inode
        if inode.parent is None or (inode.parent is parent and inode.name == name):
            inode.name, inode.parent = name, parent
        else:
            inode.others += ((parent, name),)
        parent.subdirs += inode.is_dir

    def _unlink_name(self, parent: Inode, name: bytes) -> Inode:
        """Take the name ``name`` in ``parent`` away from its inode; the inode keeps its other names (or has
        no parent left)."""
        inode = self.children(parent).pop(name)
        parent.subdirs -= inode.is_dir
        if inode.parent is parent and inode.name == name:
            inode.parent = None
            if inode.others:
                (inode.parent, inode.name), inode.others = inode.others[0], inode.others[1:]
        else:
            inode.others = tuple(other for other in inode.others if other != (parent, name))
        if not inode.others:
            inode.link = None  # one name again: no group in the tree
        return inode

    def _gone(self, inode: Inode) -> None:
        """``inode`` lost a name: if it was its last, it is unlinked (and freed once nothing holds it)."""
        if inode.parent is None:
            inode.unlinked = True
            self._maybe_free(inode)

    def forget(self, inode: Inode, count: int) -> None:
        inode.lookups = max(0, inode.lookups - count)
        self._maybe_free(inode)

    def _maybe_free(self, inode: Inode) -> None:
        if inode.unlinked and inode.opens == 0:
            self.drop_staging(inode)  # nothing can read it again: its bytes go now, not when the kernel forgets it
            if inode.lookups == 0:
                self.inodes.pop(inode.ino, None)

    def collect_garbage(self) -> None:
        while self.garbage:
            try:
                self.garbage.pop().unlink()
            except FileNotFoundError:
                pass

    # following newer versions (read-only trees)

    def follow(self, root: Entry) -> Followed:
        """Move this read-only tree onto another version whose root is ``root``, in place.

        Inode numbers stay with the names that are still there; what the
        kernel may have cached is returned: the inodes whose content or
        attributes changed, and the (directory, name) pairs that appeared or
        went. Only directories already loaded are walked; the others load
        from the new version when first used.
        """
        if not self.read_only:
            raise FsError(errno.EROFS)  # a writable tree has changes of its own: it is rebased, not moved
        followed = Followed()
        self._follow(self.root, root, followed, lambda inode: False, None)
        return followed

    def rebase(self, root: Entry, conflict: Callable[[Entry, set[bytes]], Entry]) -> Followed:
        """Move this writable tree, in place, onto a version of the portal that holds its last checkpoint (the
        hub's versions merged with this device's), keeping what changed here since that checkpoint.

        What is unchanged here takes the new version's state; a name changed or made here since (a file still
        being written, a rename made meanwhile) stays as it is here. A file changed here whose content the new
        version changed too keeps this device's bytes under its name, and the new version's file appears
        beside it, as ``conflict(its entry, names taken)`` makes it. A file open here and unchanged here whose
        content the new version changed is replaced by a new inode under its name: its open handles keep
        reading what they opened, and the next open reads the new bytes. Returns what the kernel may have
        cached.
        """
        self._writable()
        followed = Followed()
        self._follow(self.root, root, followed, _changed_here, conflict)
        return followed

    def _follow(
        self,
        inode: Inode,
        entry: Entry,
        followed: Followed,
        here: Callable[[Inode], bool],
        conflict: Callable[[Entry, set[bytes]], Entry] | None,
    ) -> None:
        committed = inode.entry()
        if committed == replace(entry, name=inode.name):
            return  # the same subtree: nothing below it changed either
        if not here(inode):
            had = inode.node
            self._take(inode, entry)
            if inode.is_file and inode.staged and had != inode.node:
                self.drop_staging(inode)  # staged unchanged (opened for writing, not written): the new bytes
            followed.inodes.append(inode.ino)
        elif conflict is not None and inode.is_file and inode.parent is not None and committed.node != entry.node:
            parent = inode.parent
            copy = conflict(replace(entry, name=inode.name), set(self.children(parent)))
            self._link(parent, copy.name, self._inode_from_entry(copy, parent))
            self.touch(parent)
            followed.entries.append((parent.ino, copy.name))
        if not inode.is_dir or inode.children is None:
            return
        subdirs = inode.subdirs
        new = {e.name: e for e in load_dir(entry.node, self._load_node)} if entry.node is not None else {}
        for name, child in list(inode.children.items()):
            if here(child):
                continue  # made or changed here since the checkpoint: it stays
            linked = child.names > 1 or (name in new and new[name].link is not None)  # a linked name: taken anew
            if name not in new or stat.S_IFMT(new[name].mode) != stat.S_IFMT(child.mode) or linked:
                self._gone(self._unlink_name(inode, name))
                followed.entries.append((inode.ino, name))
        for name, child_entry in new.items():
            kept = inode.children.get(name)
            if kept is not None and conflict is not None and _replaced_while_open(kept, child_entry, here):
                # Open here, unchanged here, changed there: a new inode takes the name, and the open handles keep
                # the one they opened, as after a rename(2) over it on a local filesystem.
                self._gone(self._unlink_name(inode, name))
                followed.entries.append((inode.ino, name))
                kept = None
            if kept is None:
                self._link(inode, name, self._group(child_entry) or self._inode_from_entry(child_entry, inode))
                followed.entries.append((inode.ino, name))  # the kernel may hold "no such name"
            else:
                self._follow(kept, child_entry, followed, here, conflict)
        if here(inode) and inode.subdirs != subdirs:
            # Changed here, so not taken above, yet subdirectories came or went: its link count, which the kernel
            # may hold, changed.
            followed.inodes.append(inode.ino)

    @staticmethod
    def _take(inode: Inode, entry: Entry) -> None:
        """Give ``inode`` the metadata and committed content of ``entry``."""
        content = inode.node != entry.node or inode.committed_size != entry.size or inode.target != entry.target
        inode.mode, inode.uid, inode.gid = entry.mode, entry.uid, entry.gid
        inode.mtime_ns, inode.ctime_ns, inode.atime_ns = entry.mtime_ns, entry.ctime_ns, entry.mtime_ns
        inode.size = inode.committed_size = entry.size
        inode.node, inode.target, inode.xattrs, inode.rdev = entry.node, entry.target, _xattrs(entry), entry.rdev
        if content and inode.is_file:
            inode.content_gen += 1
            inode.committed_content_gen = inode.content_gen

    # changes

    def _writable(self) -> None:
        if self.read_only:
            raise FsError(errno.EROFS)

    def touch(self, inode: Inode) -> None:
        """Record a change to ``inode``: it and the ancestors of each of its names must be committed again."""
        inode.gen += 1
        for parent in [inode.parent] + [directory for directory, _ in inode.others]:
            while parent is not None and not parent.dirty_below:
                parent.dirty_below = True
                parent = parent.parent

    def _changed_dir(self, directory: Inode, now_ns: int) -> None:
        directory.mtime_ns = directory.ctime_ns = now_ns
        self.touch(directory)

    def _add(self, parent: Inode, name: bytes, mode: int, uid: int, gid: int, now_ns: int, **extra: object) -> Inode:
        self._writable()
        _check_name(name)
        siblings = self.children(parent)
        if name in siblings:
            raise FsError(errno.EEXIST)
        inode = Inode(
            ino=next(self._next_ino),
            name=name,
            parent=parent,
            mode=self._shared(mode),
            uid=self._shared(uid),
            gid=self._shared(gid),
            mtime_ns=now_ns,
            ctime_ns=now_ns,
            atime_ns=now_ns,
            **extra,  # type: ignore[arg-type]
        )
        if inode.is_dir:
            inode.children = {}
        self.inodes[inode.ino] = inode
        self._link(parent, name, inode)
        self.touch(inode)
        self._changed_dir(parent, now_ns)
        return inode

    def mkdir(self, parent: Inode, name: bytes, mode: int, uid: int, gid: int, now_ns: int) -> Inode:
        return self._add(parent, name, stat.S_IFDIR | stat.S_IMODE(mode), uid, gid, now_ns)

    def create(self, parent: Inode, name: bytes, mode: int, uid: int, gid: int, now_ns: int) -> Inode:
        inode = self._add(parent, name, stat.S_IFREG | stat.S_IMODE(mode), uid, gid, now_ns)
        inode.memory = bytearray()
        return inode

    def mknod(self, parent: Inode, name: bytes, mode: int, rdev: int, uid: int, gid: int, now_ns: int) -> Inode:
        """A FIFO, a socket, a device node (``mode`` holds the type), or an empty regular file."""
        kind = stat.S_IFMT(mode)
        if kind == stat.S_IFREG:
            return self.create(parent, name, mode, uid, gid, now_ns)
        if kind not in (stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFCHR, stat.S_IFBLK):
            raise FsError(errno.EINVAL)
        device = kind in (stat.S_IFCHR, stat.S_IFBLK)
        return self._add(parent, name, kind | stat.S_IMODE(mode), uid, gid, now_ns, rdev=rdev if device else 0)

    def symlink(self, parent: Inode, name: bytes, target: bytes, uid: int, gid: int, now_ns: int) -> Inode:
        return self._add(parent, name, stat.S_IFLNK | 0o777, uid, gid, now_ns, target=target, size=len(target))

    def _detach(self, parent: Inode, name: bytes, now_ns: int) -> Inode:
        inode = self._unlink_name(parent, name)
        inode.ctime_ns = now_ns
        if inode.parent is not None:
            self.touch(inode)  # its other names' entries change too (link count, ctime)
        self._changed_dir(parent, now_ns)
        return inode

    def unlink(self, parent: Inode, name: bytes, now_ns: int) -> None:
        self._writable()
        inode = self.lookup(parent, name)
        if inode.is_dir:
            raise FsError(errno.EISDIR)
        self._gone(self._detach(parent, name, now_ns))

    def link(self, inode: Inode, parent: Inode, name: bytes, now_ns: int) -> None:
        """link(2): ``inode`` gets the name ``name`` in ``parent`` as well."""
        self._writable()
        _check_name(name)
        if inode.is_dir:
            raise FsError(errno.EPERM)
        if inode.unlinked:
            raise FsError(errno.ENOENT)
        if name in self.children(parent):
            raise FsError(errno.EEXIST)
        if inode.link is None:
            inode.link = os.urandom(LINK_ID_SIZE)  # a new group: random, so that two devices' groups never meet
        self._link(parent, name, inode)
        inode.ctime_ns = now_ns
        self.touch(inode)
        self._changed_dir(parent, now_ns)

    def rmdir(self, parent: Inode, name: bytes, now_ns: int) -> None:
        self._writable()
        inode = self.lookup(parent, name)
        if not inode.is_dir:
            raise FsError(errno.ENOTDIR)
        if self.children(inode):
            raise FsError(errno.ENOTEMPTY)
        self._gone(self._detach(parent, name, now_ns))

    def rename(self, old_parent: Inode, old: bytes, new_parent: Inode, new: bytes, flags: int, now_ns: int) -> None:
        """rename(2) with RENAME_NOREPLACE (1) and RENAME_EXCHANGE (2)."""
        self._writable()
        _check_name(new)
        source = self.lookup(old_parent, old)
        target = self.children(new_parent).get(new)
        if source is target:
            return
        ancestor: Inode | None = new_parent
        while ancestor is not None:  # no directory into its own subtree
            if ancestor is source:
                raise FsError(errno.EINVAL)
            ancestor = ancestor.parent
        if flags & RENAME_EXCHANGE:
            if target is None:
                raise FsError(errno.ENOENT)
            if target.is_dir:
                probe: Inode | None = old_parent
                while probe is not None:
                    if probe is target:
                        raise FsError(errno.EINVAL)
                    probe = probe.parent
            self._unlink_name(old_parent, old)
            self._unlink_name(new_parent, new)
            self._link(old_parent, old, target)
            self._link(new_parent, new, source)
            for moved in (source, target):
                moved.ctime_ns = now_ns
                self.touch(moved)
            self._changed_dir(old_parent, now_ns)
            self._changed_dir(new_parent, now_ns)
            return
        if target is not None:
            if flags & RENAME_NOREPLACE:
                raise FsError(errno.EEXIST)
            if target.is_dir and not source.is_dir:
                raise FsError(errno.EISDIR)
            if source.is_dir and not target.is_dir:
                raise FsError(errno.ENOTDIR)
            if target.is_dir and self.children(target):
                raise FsError(errno.ENOTEMPTY)
        self._unlink_name(old_parent, old)
        if target is not None:
            self._gone(self._detach(new_parent, new, now_ns))
        self._link(new_parent, new, source)
        source.ctime_ns = now_ns
        self.touch(source)
        self._changed_dir(old_parent, now_ns)
        if new_parent is not old_parent:
            self._changed_dir(new_parent, now_ns)

    def set_attrs(
        self,
        inode: Inode,
        now_ns: int,
        *,
        mode: int | None = None,
        uid: int | None = None,
        gid: int | None = None,
        mtime_ns: int | None = None,
        atime_ns: int | None = None,
    ) -> None:
        if any(v is not None for v in (mode, uid, gid, mtime_ns)):
            self._writable()
        if mode is not None:
            inode.mode = stat.S_IFMT(inode.mode) | stat.S_IMODE(mode)
        if uid is not None:
            inode.uid = uid
        if gid is not None:
            inode.gid = gid
        if mtime_ns is not None:
            inode.mtime_ns = mtime_ns
        if atime_ns is not None:
            inode.atime_ns = atime_ns
        if any(v is not None for v in (mode, uid, gid, mtime_ns)):
            inode.ctime_ns = now_ns
            self.touch(inode)

    def set_xattr(self, inode: Inode, name: bytes, value: bytes, now_ns: int) -> None:
        self._writable()
        inode.xattrs = {**inode.xattrs, name: value}
        inode.ctime_ns = now_ns
        self.touch(inode)

    def remove_xattr(self, inode: Inode, name: bytes, now_ns: int) -> None:
        self._writable()
        if name not in inode.xattrs:
            raise FsError(errno.ENODATA)
        inode.xattrs = {key: value for key, value in inode.xattrs.items() if key != name}
        inode.ctime_ns = now_ns
        self.touch(inode)

    # file content

    def new_staging(self, inode: Inode, copy_from: Path | None) -> Path:
        """Give ``inode`` a staging file (empty, or a copy of ``copy_from``)."""
        self._writable()
        self.staging_dir.mkdir(parents=True, exist_ok=True)
        path = self.staging_dir / f"{inode.ino}-{os.urandom(6).hex()}"
        if copy_from is None:
            path.touch(mode=0o600)
        else:
            os.replace(copy_from, path)
        inode.staging = path
        return path

    def content_changed(self, inode: Inode, size: int, now_ns: int) -> None:
        if size > MAX_FILE_SIZE:
            raise FsError(errno.EFBIG)
        inode.size = size
        inode.mtime_ns = inode.ctime_ns = now_ns
        inode.content_gen += 1
        self.touch(inode)

    def drop_staging(self, inode: Inode) -> None:
        """Forget staged content (a staging file becomes garbage: a commit in flight may still read it)."""
        inode.memory = None
        if inode.staging is not None:
            self.garbage.append(inode.staging)
            inode.staging = None

    def opened(self, inode: Inode, writable: bool) -> None:
        inode.opens += 1
        inode.writers += writable

    def released(self, inode: Inode, writable: bool) -> None:
        inode.opens = max(0, inode.opens - 1)
        inode.writers = max(0, inode.writers - writable)
        self._maybe_free(inode)
