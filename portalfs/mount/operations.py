"""The pyfuse3 operations of a mounted portal: thin handlers over the live working tree.

Each handler translates a request into a call on the ``Workspace`` (names,
attributes) or the ``LiveTree`` (handles, content, durability, versions:
``portalfs.worktree.live``) and its answer into pyfuse3's types. Errors leave
through one translation point (``_translated``): ``FsError`` and ``OSError``
become ``FUSEError(errno)``; a corrupt or missing object becomes EIO and one
log line naming the file and the object; the mount stays up.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import stat
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, ParamSpec, TypeVar

import pyfuse3
import trio

from ..errors import IntegrityError, MissingObject, PortalError, StoreFull
from ..merge import Writer
from ..root import RootPayload, RootRecord
from ..worktree.live import LiveTree, now_ns, settled
from ..worktree.workspace import Followed, FsError, Inode

__all__ = ["PortalOperations"]

log = logging.getLogger("portalfs")

T = TypeVar("T")
P = ParamSpec("P")
# How long the kernel keeps attributes, names and absences of names without asking again. Only the kernel's own
# requests change them, except a version followed or merged in, which invalidates what it changed (_invalidate):
# so this is a bound, not what keeps them true. Long, so that a tool walking a tree it walked minutes ago (git
# status after an edit) asks again for its directories' listings only (docs/design.md, section 9).
ATTR_TIMEOUT = 3600.0
# The preferred I/O size a stat reports (cp, dd and stdio size their buffers by it): the largest request
# the kernel sends this file system (max_write, 1 MiB), so a copy in is a quarter of the requests 128 KiB made.
IO_SIZE = 1024 * 1024
FOLLOW_SECONDS = 1.0  # how often a read-only mount that follows its portal looks for a newer version


def _translated(handler: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    """The one place where errors become errnos."""

    @functools.wraps(handler)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await handler(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except FsError as exc:
            raise pyfuse3.FUSEError(exc.errno) from None
        except StoreFull as exc:  # the writer is told the disk is full; the mount serves on
            log.error("%s: %s", handler.__name__, exc)
            raise pyfuse3.FUSEError(errno.ENOSPC) from None
        except (IntegrityError, MissingObject) as exc:
            log.error("%s: %s", handler.__name__, exc)
            raise pyfuse3.FUSEError(errno.EIO) from None
        except PortalError as exc:
            log.error("%s: %s", handler.__name__, exc)
            raise pyfuse3.FUSEError(errno.EIO) from None
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None

    return wrapper


def _changes(handler: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    """A handler that changes the tree: once it succeeded, the tree commits soon (``LiveTree.changed``)."""

    @functools.wraps(handler)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        args[0].refuse_if_frozen()  # type: ignore[attr-defined]
        result = await handler(*args, **kwargs)
        args[0].tree.changed()  # type: ignore[attr-defined]
        args[0].tree.collect_garbage()  # type: ignore[attr-defined]  # an unlinked file's staging, at once
        return result

    return wrapper


def _invalidate(followed: Followed) -> None:
    """Drop what the kernel cached of what changed: pages and attributes, names and absences of names."""
    for ino in followed.inodes:
        with contextlib.suppress(OSError):  # ENOENT: the kernel holds nothing of it
            pyfuse3.invalidate_inode(ino)
    for parent, name in followed.entries:
        pyfuse3.invalidate_entry_async(parent, name, ignore_enoent=True)


def _absent() -> pyfuse3.EntryAttributes:
    """A lookup's answer for a name that is not there, kept by the kernel as long as an entry (st_ino 0)."""
    a = pyfuse3.EntryAttributes()
    a.st_ino = 0
    a.entry_timeout = ATTR_TIMEOUT
    return a


_ABSENT = _absent()


class PortalOperations(pyfuse3.Operations):
    supports_dot_lookup = True
    enable_writeback_cache = False
    enable_acl = False

    def __init__(
        self, tree: LiveTree, newer: Callable[[int], tuple[RootRecord, RootPayload] | None] | None = None
    ) -> None:
        """The handlers of ``tree``'s mount. ``newer(version)``, for a read-only mount that follows its portal,
        is the device's newest version past ``version`` with its directories at hand, or None; it blocks (a
        worker thread runs it).
        """
        super().__init__()
        self.tree = tree
        self.view = tree.view
        self.read_only = tree.read_only
        self._newer = newer
        self.workspace = tree.workspace
        self._dir_handles: dict[int, tuple[Inode, list[tuple[bytes, Inode]]]] = {}
        self._reported: set[str] = set()
        self.frozen: str | None = None  # why this read-write mount takes no more changes (section 16)

    def freeze(self, reason: str) -> None:
        """Take no more changes from now on (its device lost the right to publish the portal): a change is
        refused EROFS; what was written and closed before stays, committed in this device's versions, and a
        handle open for writing may still finish."""
        if self.frozen is None:
            self.frozen = reason
            log.error("%s is read-only from now on: %s; what was written here stays in this device's versions",
                      self.view.row.name, reason)  # fmt: skip

    def refuse_if_frozen(self) -> None:
        if self.frozen is not None:
            raise pyfuse3.FUSEError(errno.EROFS)

    # lifecycle

    async def run_background(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Read-ahead and periodic commits; started in the mount's nursery."""
        async with trio.open_nursery() as nursery:
            self.tree.reader.nursery = nursery
            task_status.started()
            if self.read_only:
                if self._newer is None:
                    await trio.sleep_forever()  # the nursery stays open for read-ahead until the mount ends
                while True:
                    await trio.sleep(FOLLOW_SECONDS)
                    try:
                        await self.follow_newest()
                    except (PortalError, OSError) as exc:
                        if str(exc) not in self._reported:  # tried again every second: said once
                            self._reported.add(str(exc))
                            log.error("could not show the newest version: %s", exc)
            else:
                await self.tree.run_commits()

    async def follow_newest(self) -> bool:
        """Show the device's newest version if it is newer than the one shown; True if it was."""
        assert self._newer is not None
        head = self.tree.head
        newer = await trio.to_thread.run_sync(self._newer, 0 if head is None else head.version)
        if newer is None:
            return False
        record, root = newer
        followed = self.workspace.follow(root.entry)
        self.tree.head = record
        _invalidate(followed)
        log.info("showing version %d", record.version)
        return True

    async def absorb(self, take: Callable[[], tuple[RootRecord, RootPayload, Writer] | None]) -> bool:
        """Land versions from elsewhere in this read-write mount (``LiveTree.absorb``); True if some came."""
        followed = await self.tree.absorb(take)
        if followed is None:
            return False
        _invalidate(followed)
        assert self.tree.head is not None
        log.info("now at version %d, with what came from elsewhere", self.tree.head.version)
        return True

    def _attrs(self, inode: Inode) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = inode.ino
        a.generation = 0
        a.entry_timeout = ATTR_TIMEOUT
        a.attr_timeout = ATTR_TIMEOUT
        a.st_mode = inode.mode
        a.st_nlink = self.workspace.nlink(inode)
        a.st_uid = inode.uid
        a.st_gid = inode.gid
        a.st_rdev = inode.rdev
        a.st_size = 4096 if inode.is_dir else inode.size
        a.st_blksize = IO_SIZE
        a.st_blocks = (a.st_size + 511) // 512
        a.st_atime_ns = inode.atime_ns
        a.st_mtime_ns = inode.mtime_ns
        a.st_ctime_ns = inode.ctime_ns
        return a

    def _new_gid(self, parent: Inode, ctx: pyfuse3.RequestContext) -> int:
        return parent.gid if parent.mode & stat.S_ISGID else ctx.gid

    # names

    @_translated
    async def lookup(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        parent = self.workspace.get(parent_inode)
        try:
            inode = self.workspace.lookup(parent, name)
        except FsError as exc:
            if exc.errno != errno.ENOENT:
                raise
            return _ABSENT  # the kernel keeps "no such name" as long as a name (_invalidate drops it)
        if name not in (b".", b".."):
            inode.lookups += 1
        return self._attrs(inode)

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for ino, count in inode_list:
            inode = self.workspace.inodes.get(ino)
            if inode is not None:
                self.workspace.forget(inode, count)
        self.tree.collect_garbage()

    @_translated
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._attrs(self.workspace.get(inode))

    @_translated
    @_changes
    async def setattr(
        self,
        ino: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        inode = self.workspace.get(ino)
        now = now_ns()
        if fields.update_size:
            await self.tree.truncate(inode, attr.st_size, now)
        self.workspace.set_attrs(
            inode,
            now,
            mode=attr.st_mode if fields.update_mode else None,
            uid=attr.st_uid if fields.update_uid else None,
            gid=attr.st_gid if fields.update_gid else None,
            mtime_ns=attr.st_mtime_ns if fields.update_mtime else None,
            atime_ns=attr.st_atime_ns if fields.update_atime else None,
        )
        if fields.update_ctime:
            inode.ctime_ns = attr.st_ctime_ns
        return self._attrs(inode)

    @_translated
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        node = self.workspace.get(inode)
        if node.target is None:
            raise FsError(errno.EINVAL)
        return node.target

    @_translated
    @_changes
    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        """A FIFO, a socket (bind), a device node, or an empty file: the kernel serves the special ones."""
        parent = self.workspace.get(parent_inode)
        perm = stat.S_IMODE(mode) & ~ctx.umask
        inode = self.workspace.mknod(
            parent, name, stat.S_IFMT(mode) | perm, rdev, ctx.uid, self._new_gid(parent, ctx), now_ns()
        )
        inode.lookups += 1
        return self._attrs(inode)

    @_translated
    @_changes
    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        parent = self.workspace.get(parent_inode)
        mode = stat.S_IMODE(mode) & ~ctx.umask | (parent.mode & stat.S_ISGID)
        inode = self.workspace.mkdir(parent, name, mode, ctx.uid, self._new_gid(parent, ctx), now_ns())
        inode.lookups += 1
        return self._attrs(inode)

    @_translated
    @_changes
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self.workspace.unlink(self.workspace.get(parent_inode), name, now_ns())
        self.tree.collect_garbage()

    @_translated
    @_changes
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self.workspace.rmdir(self.workspace.get(parent_inode), name, now_ns())

    @_translated
    @_changes
    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        parent = self.workspace.get(parent_inode)
        inode = self.workspace.symlink(parent, name, target, ctx.uid, self._new_gid(parent, ctx), now_ns())
        inode.lookups += 1
        return self._attrs(inode)

    @_translated
    @_changes
    async def rename(
        self,
        parent_old: int,
        name_old: bytes,
        parent_new: int,
        name_new: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        ws = self.workspace
        ws.rename(ws.get(parent_old), name_old, ws.get(parent_new), name_new, flags, now_ns())
        self.tree.collect_garbage()

    @_translated
    @_changes
    async def link(
        self, inode: int, new_parent: int, new_name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        node = self.workspace.get(inode)
        self.workspace.link(node, self.workspace.get(new_parent), new_name, now_ns())
        node.lookups += 1
        return self._attrs(node)

    # directories

    @_translated
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        directory = self.workspace.get(inode)
        fh = self.tree.new_fh()
        # A snapshot: offsets stay stable whatever changes while it is read.
        entries = sorted(self.workspace.children(directory).items())
        self._dir_handles[fh] = directory, entries
        self.tree.listed(directory, [name for name, _ in entries])
        return fh

    @_translated
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        directory, entries = self._dir_handles[fh]
        for index in range(start_id, len(entries)):
            name, child = entries[index]
            if child.unlinked or (directory.children or {}).get(name) is not child:  # gone since the opendir
                continue
            if not pyfuse3.readdir_reply(token, name, self._attrs(child), index + 1):
                break
            child.lookups += 1

    async def releasedir(self, fh: int) -> None:
        self._dir_handles.pop(fh, None)

    @_translated
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        await self.tree.commit(settled)

    # files

    @_translated
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        if flags & os.O_ACCMODE != os.O_RDONLY or flags & os.O_TRUNC:
            self.refuse_if_frozen()
        fh, keep = await self.tree.open(self.workspace.get(inode), flags)
        return pyfuse3.FileInfo(fh=fh, keep_cache=keep)

    @_translated
    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        self.refuse_if_frozen()
        parent = self.workspace.get(parent_inode)
        mode = stat.S_IMODE(mode) & ~ctx.umask
        node = self.workspace.create(parent, name, mode, ctx.uid, self._new_gid(parent, ctx), now_ns())
        node.lookups += 1
        fh, keep = self.tree.open_new(node, True, bool(flags & os.O_APPEND))
        return pyfuse3.FileInfo(fh=fh, keep_cache=keep), self._attrs(node)

    @_translated
    async def read(self, fh: int, off: int, size: int) -> bytes:
        return await self.tree.read(fh, off, size)

    @_translated
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        return await self.tree.write(fh, off, buf)

    @_translated
    async def flush(self, fh: int) -> None:
        await self.tree.flush(fh)

    @_translated
    async def release(self, fh: int) -> None:
        await self.tree.release(fh)

    @_translated
    async def fsync(self, fh: int, datasync: bool) -> None:
        await self.tree.fsync(fh)

    # extended attributes

    @_translated
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        value = self.workspace.get(inode).xattrs.get(name)
        if value is None:
            raise FsError(errno.ENODATA)
        return value

    @_translated
    @_changes
    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext) -> None:
        self.workspace.set_xattr(self.workspace.get(inode), name, value, now_ns())

    @_translated
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        return sorted(self.workspace.get(inode).xattrs)

    @_translated
    @_changes
    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self.workspace.remove_xattr(self.workspace.get(inode), name, now_ns())

    @_translated
    async def access(self, inode: int, mode: int, ctx: pyfuse3.RequestContext) -> bool:
        node = self.workspace.get(inode)
        if mode == os.F_OK:
            return True
        if ctx.uid == 0:
            return not (mode & os.X_OK) or bool(node.mode & 0o111) or node.is_dir
        shift = 6 if ctx.uid == node.uid else 3 if ctx.gid == node.gid else 0
        return (node.mode >> shift) & mode == mode

    @_translated
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        host = os.statvfs(
            self.view.device.home.data
        )  # the filesystem that holds PORTAL_HOME (and, once made, its store)
        s = pyfuse3.StatvfsData()
        s.f_bsize = host.f_bsize
        s.f_frsize = host.f_frsize
        s.f_blocks = host.f_blocks
        s.f_bfree = host.f_bfree
        s.f_bavail = host.f_bavail
        s.f_files = host.f_files
        s.f_ffree = host.f_ffree
        s.f_favail = host.f_favail
        s.f_namemax = 255
        return s

    # the mount's lifecycle (runner.py)

    async def commit(self) -> None:
        """Commit everything as a version now (a signal, the unmount)."""
        await self.tree.commit()

    def abandon_streams(self) -> None:
        self.tree.abandon_streams()

    @property
    def versions_committed(self) -> int:
        return self.tree.versions_committed
