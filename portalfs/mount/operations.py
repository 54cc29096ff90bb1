"""The pyfuse3 operations of a mounted portal: thin handlers over the working tree.

Errors leave through one translation point (``_translated``): ``FsError`` and
``OSError`` become ``FUSEError(errno)``; a corrupt or missing object becomes
EIO and one log line naming the file and the object; the mount stays up.

Writes go to a staging file per inode. A file's new content is made durable
(sealed, stored, journaled) on flush, release and fsync; new versions are
checkpointed by a periodic task, on fsync of a directory and on unmount.
Clean file content comes from the ``ContentReader`` (reader.py).
"""

from __future__ import annotations

import collections
import contextlib
import errno
import functools
import logging
import os
import stat
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar, cast

import pyfuse3
import trio

from ..chunking import CDC_MIN
from ..device import Unlocked
from ..errors import IntegrityError, MissingObject, PortalError
from ..portal import PortalView
from ..root import RootPayload, RootRecord
from ..worktree.commit import abandon, apply, checkpoint, journal_file, snapshot, staged_inodes
from ..worktree.journal import encode_record, journal_chain
from ..worktree.streaming import StreamingSeal
from ..worktree.workspace import MAX_FILE_SIZE, FsError, Inode, Workspace
from .reader import ContentReader

__all__ = ["PortalOperations"]

log = logging.getLogger("portalfs")

T = TypeVar("T")
P = ParamSpec("P")
ATTR_TIMEOUT = 5.0
AUTOCOMMIT_SECONDS = 2.0
MEMORY_STAGING = CDC_MIN  # files up to this size are staged in memory, not in a file
UNSTORED_LIMIT = 64 * 1024 * 1024  # checkpoint early when journaled-but-unstored objects reach this
STREAM_FROM = 4 * 1024 * 1024  # seal sequentially written files in the background past this size
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
        except (IntegrityError, MissingObject) as exc:
            log.error("%s: %s", handler.__name__, exc)
            raise pyfuse3.FUSEError(errno.EIO) from None
        except PortalError as exc:
            log.error("%s: %s", handler.__name__, exc)
            raise pyfuse3.FUSEError(errno.EIO) from None
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None

    return wrapper


def _now() -> int:
    return time.time_ns()


def _settled(inode: Inode) -> bool:
    """Commit a file's new content only once no handle is writing it (or at its writer's flush/fsync)."""
    return inode.writers == 0


@dataclass(slots=True)
class _Handle:
    inode: Inode
    writable: bool
    append: bool
    sequential: bool = False  # began empty and has only been appended to, so far


class PortalOperations(pyfuse3.Operations):
    supports_dot_lookup = True
    enable_writeback_cache = False
    enable_acl = False

    def __init__(
        self,
        view: PortalView,
        secrets: Unlocked | None,
        head: RootRecord | None,
        root: RootPayload,
        staging_dir: Path,
        read_only: bool,
        newer: Callable[[int], tuple[RootRecord, RootPayload] | None] | None = None,
    ) -> None:
        """``newer(version)``, for a read-only mount that follows its portal, is the device's newest
        version past ``version`` with its directories at hand, or None; it blocks (a worker thread runs it).
        """
        super().__init__()
        self.view = view
        self.secrets = secrets
        self.head = head
        self.read_only = read_only
        self._newer = newer
        self.workspace = Workspace(root.entry, view.load_node, staging_dir, read_only=read_only)
        self._handles: dict[int, _Handle] = {}
        self._dir_handles: dict[int, list[Inode]] = {}
        self._next_fh = 1
        self._fds: dict[Path, int] = {}
        self.reader = ContentReader(view)
        self._totals: dict[bytes, tuple[int, int]] = {}
        self._reported: set[str] = set()
        self._commit_lock = trio.Lock()  # one checkpoint at a time
        self._content_locks: dict[int, trio.Lock] = {}  # per inode: no write while it is being sealed
        self._journal_seq = 0  # the newest journal record whose inode state is applied
        self._sealing = 0  # journal writes in flight (they read staging files)
        self._streams: dict[int, StreamingSeal] = {}  # files being sealed while written
        # Journaled small files' objects, kept in their records until a checkpoint stores them.
        self._unstored: dict[int, tuple[Inode, list[bytes]]] = {}  # by journal record number
        self._unstored_inodes: collections.Counter[int] = collections.Counter()
        self._unstored_bytes = 0
        self.versions_committed = 0
        if head is not None and root.entry.node is not None:
            self._totals[root.entry.node.cid] = (root.size, root.files)

    # lifecycle

    async def run_background(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Read-ahead and periodic commits; started in the mount's nursery."""
        async with trio.open_nursery() as nursery:
            self.reader.nursery = nursery
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
                pause = AUTOCOMMIT_SECONDS
                while True:
                    await trio.sleep(pause)
                    started = trio.current_time()
                    try:
                        await self.commit(_settled)
                    except (PortalError, OSError) as exc:
                        log.error("periodic commit failed: %s", exc)
                    # Big trees make checkpoints slow: keep them to a tenth of the time.
                    pause = max(AUTOCOMMIT_SECONDS, 10 * (trio.current_time() - started))

    async def follow_newest(self) -> bool:
        """Show the device's newest version if it is newer than the one shown; True if it was."""
        assert self._newer is not None
        newer = await trio.to_thread.run_sync(self._newer, 0 if self.head is None else self.head.version)
        if newer is None:
            return False
        record, root = newer
        followed = self.workspace.follow(root.entry)
        self.head = record
        for ino in followed.inodes:  # cached pages and attributes
            with contextlib.suppress(OSError):  # ENOENT: the kernel holds nothing of it
                pyfuse3.invalidate_inode(ino)
        for parent, name in followed.entries:  # cached names, and cached absences of names
            pyfuse3.invalidate_entry_async(parent, name, ignore_enoent=True)
        log.info("showing version %d", record.version)
        return True

    def _fh(self) -> int:
        self._next_fh += 1
        return self._next_fh

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
        a.st_rdev = 0
        a.st_size = 4096 if inode.is_dir else inode.size
        a.st_blksize = 128 * 1024
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
        inode = self.workspace.lookup(parent, name)
        if name not in (b".", b".."):
            inode.lookups += 1
        return self._attrs(inode)

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for ino, count in inode_list:
            inode = self.workspace.inodes.get(ino)
            if inode is not None:
                self.workspace.forget(inode, count)
        self._collect_garbage()

    @_translated
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._attrs(self.workspace.get(inode))

    @_translated
    async def setattr(
        self,
        ino: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        inode = self.workspace.get(ino)
        now = _now()
        if fields.update_size:
            if self.read_only:
                raise FsError(errno.EROFS)
            if attr.st_size > MAX_FILE_SIZE:
                raise FsError(errno.EFBIG)
            async with self._content_lock(inode):
                self._abandon_stream(inode)
                await self._stage(inode, empty=attr.st_size == 0)
                self._truncate_staged(inode, attr.st_size)
                self.workspace.content_changed(inode, attr.st_size, now)
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
    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext) -> Any:
        raise FsError(errno.EPERM)  # only files, directories and symlinks live in a portal

    @_translated
    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        parent = self.workspace.get(parent_inode)
        mode = stat.S_IMODE(mode) & ~ctx.umask | (parent.mode & stat.S_ISGID)
        inode = self.workspace.mkdir(parent, name, mode, ctx.uid, self._new_gid(parent, ctx), _now())
        inode.lookups += 1
        return self._attrs(inode)

    @_translated
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self.workspace.unlink(self.workspace.get(parent_inode), name, _now())
        self._collect_garbage()

    @_translated
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self.workspace.rmdir(self.workspace.get(parent_inode), name, _now())

    @_translated
    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        parent = self.workspace.get(parent_inode)
        inode = self.workspace.symlink(parent, name, target, ctx.uid, self._new_gid(parent, ctx), _now())
        inode.lookups += 1
        return self._attrs(inode)

    @_translated
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
        ws.rename(ws.get(parent_old), name_old, ws.get(parent_new), name_new, flags, _now())
        self._collect_garbage()

    @_translated
    async def link(self, inode: int, new_parent: int, new_name: bytes, ctx: pyfuse3.RequestContext) -> Any:
        raise FsError(errno.EPERM)  # a tree entry is one name: no hard links

    # directories

    @_translated
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        directory = self.workspace.get(inode)
        fh = self._fh()
        # A snapshot: offsets stay stable whatever changes while it is read.
        self._dir_handles[fh] = sorted(self.workspace.children(directory).values(), key=lambda c: c.name)
        return fh

    @_translated
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        entries = self._dir_handles[fh]
        for index in range(start_id, len(entries)):
            child = entries[index]
            if child.unlinked:
                continue
            if not pyfuse3.readdir_reply(token, child.name, self._attrs(child), index + 1):
                break
            child.lookups += 1

    async def releasedir(self, fh: int) -> None:
        self._dir_handles.pop(fh, None)

    @_translated
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        await self.commit(_settled)

    # files

    def _fd(self, inode: Inode) -> int:
        assert inode.staging is not None
        fd = self._fds.get(inode.staging)
        if fd is None:
            fd = self._fds[inode.staging] = os.open(inode.staging, os.O_RDWR)
        return fd

    def _spill(self, inode: Inode) -> None:
        """Move content staged in memory to a staging file (it outgrew MEMORY_STAGING)."""
        assert inode.memory is not None
        memory, inode.memory = inode.memory, None
        self.workspace.new_staging(inode, copy_from=None)
        os.pwrite(self._fd(inode), memory, 0)

    def _write_staged(self, inode: Inode, data: bytes, offset: int) -> int:
        if inode.memory is not None and offset + len(data) > MEMORY_STAGING:
            self._spill(inode)
        if inode.memory is None:
            return os.pwrite(self._fd(inode), data, offset)
        memory = inode.memory
        if offset > len(memory):
            memory.extend(bytes(offset - len(memory)))  # a write past the end: zeros between
        memory[offset : offset + len(data)] = data
        return len(data)

    def _truncate_staged(self, inode: Inode, size: int) -> None:
        if inode.memory is not None and size > MEMORY_STAGING:
            self._spill(inode)
        if inode.memory is None:
            os.ftruncate(self._fd(inode), size)
        elif size < len(inode.memory):
            del inode.memory[size:]
        else:
            inode.memory.extend(bytes(size - len(inode.memory)))

    async def _stage(self, inode: Inode, empty: bool) -> None:
        """Make sure ``inode``'s content is staged (or nothing, if ``empty``): in memory while small."""
        if inode.staged:
            return
        if empty or inode.size == 0:
            inode.memory = bytearray()
            return
        _, refs = await self.reader.layout(inode.node)
        if inode.size <= MEMORY_STAGING:
            inode.memory = bytearray().join([await self.reader.chunk(ref) for ref in refs])
            return
        scratch = self.workspace.staging_dir / f"fill-{inode.ino}-{os.urandom(4).hex()}"
        self.workspace.staging_dir.mkdir(parents=True, exist_ok=True)
        try:
            with open(scratch, "wb") as out:
                for ref in refs:
                    out.write(await self.reader.chunk(ref))
        except BaseException:
            scratch.unlink(missing_ok=True)
            raise
        self.workspace.new_staging(inode, copy_from=scratch)

    @_translated
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        node = self.workspace.get(inode)
        writable = flags & os.O_ACCMODE in (os.O_WRONLY, os.O_RDWR)
        if writable and self.read_only:
            raise FsError(errno.EROFS)
        if writable:
            async with self._content_lock(node):
                self._abandon_stream(node)  # a second writer, or a fresh start
                truncate = bool(flags & os.O_TRUNC)
                await self._stage(node, empty=truncate)
                if truncate and node.size:
                    self._truncate_staged(node, 0)
                    self.workspace.content_changed(node, 0, _now())
        return self._open_handle(node, writable, bool(flags & os.O_APPEND), writable and node.size == 0)

    def _open_handle(self, node: Inode, writable: bool, append: bool, sequential: bool) -> pyfuse3.FileInfo:
        fh = self._fh()
        self._handles[fh] = _Handle(node, writable, append, sequential and node.writers == 0)
        self.workspace.opened(node, writable)
        keep = node.kernel_cache_gen == node.content_gen
        node.kernel_cache_gen = node.content_gen
        return pyfuse3.FileInfo(fh=fh, keep_cache=keep)

    @_translated
    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        parent = self.workspace.get(parent_inode)
        mode = stat.S_IMODE(mode) & ~ctx.umask
        node = self.workspace.create(parent, name, mode, ctx.uid, self._new_gid(parent, ctx), _now())
        node.lookups += 1
        return self._open_handle(node, True, bool(flags & os.O_APPEND), True), self._attrs(node)

    @_translated
    async def read(self, fh: int, off: int, size: int) -> bytes:
        node = self._handles[fh].inode
        if node.memory is not None:
            return bytes(node.memory[off : off + size])
        if node.staging is not None:
            return os.pread(self._fd(node), size, off)
        try:
            parts = await self.reader.read(node.node, node.size, off, size)
        except (IntegrityError, MissingObject) as exc:
            if str(exc) not in self._reported:  # the kernel retries: say it once
                self._reported.add(str(exc))
                log.error("read %s: %s", self._path(node), exc)
            raise FsError(errno.EIO) from None
        if not parts:
            return b""
        # pyfuse3 replies from any buffer: one piece goes out without a copy.
        return cast(bytes, parts[0]) if len(parts) == 1 else b"".join(parts)

    @_translated
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        handle = self._handles[fh]
        node = handle.inode
        async with self._content_lock(node):
            await self._stage(node, empty=False)
            if handle.append:
                off = node.size
            if off + len(buf) > MAX_FILE_SIZE:
                raise FsError(errno.EFBIG)
            appending = off == node.size
            written = self._write_staged(node, buf, off)
            self.workspace.content_changed(node, max(node.size, off + written), _now())
            self._follow_stream(handle, appending)
        return written

    def _follow_stream(self, handle: _Handle, appending: bool) -> None:
        """Keep a sequentially written file's background sealing fed, start it, or abandon it."""
        node = handle.inode
        handle.sequential = handle.sequential and appending
        stream = self._streams.get(node.ino)
        if not handle.sequential:
            self._abandon_stream(node)
        elif stream is not None:
            stream.grow(node.size)
        elif node.size >= STREAM_FROM and node.writers == 1 and self.secrets is not None and node.staging is not None:
            stream = self._streams[node.ino] = StreamingSeal(
                self.view.device.store, self.secrets.identity.convergence_secret, node.staging
            )
            stream.grow(node.size)

    def _abandon_stream(self, node: Inode) -> None:
        stream = self._streams.pop(node.ino, None)
        if stream is not None:
            stream.abandon()

    def abandon_streams(self) -> None:
        for ino in list(self._streams):
            self._streams.pop(ino).abandon()

    def _content_dirty(self, node: Inode) -> bool:
        return node.committed_content_gen != node.content_gen and not node.unlinked

    @_translated
    async def flush(self, fh: int) -> None:
        handle = self._handles[fh]
        if handle.writable and self._content_dirty(handle.inode):
            await self.journal(handle.inode)

    @_translated
    async def release(self, fh: int) -> None:
        handle = self._handles.pop(fh)
        node = handle.inode
        self.workspace.released(node, handle.writable)
        if node.unlinked:
            self._abandon_stream(node)
        try:
            if handle.writable and self._content_dirty(node):
                await self.journal(node)
        finally:
            stored = node.ino not in self._unstored_inodes
            if node.opens == 0 and node.staged and stored and not self._content_dirty(node) and not node.unlinked:
                self.workspace.drop_staging(node)
            lock = self._content_locks.get(node.ino)
            if node.opens == 0 and lock is not None and not lock.locked() and not lock.statistics().tasks_waiting:
                del self._content_locks[node.ino]
            self._collect_garbage()

    @_translated
    async def fsync(self, fh: int, datasync: bool) -> None:
        await self.journal(self._handles[fh].inode)

    # extended attributes

    @_translated
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        value = self.workspace.get(inode).xattrs.get(name)
        if value is None:
            raise FsError(errno.ENODATA)
        return value

    @_translated
    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext) -> None:
        self.workspace.set_xattr(self.workspace.get(inode), name, value, _now())

    @_translated
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        return sorted(self.workspace.get(inode).xattrs)

    @_translated
    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self.workspace.remove_xattr(self.workspace.get(inode), name, _now())

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
        host = os.statvfs(self.view.device.home.store)
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

    # content

    def _path(self, node: Inode) -> str:
        parts = []
        probe: Inode | None = node
        while probe is not None and probe.parent is not None:
            parts.append(os.fsdecode(probe.name))
            probe = probe.parent
        return "/" + "/".join(reversed(parts))

    def _content_lock(self, node: Inode) -> trio.Lock:
        lock = self._content_locks.get(node.ino)
        if lock is None:
            lock = self._content_locks[node.ino] = trio.Lock()
        return lock

    def _collect_garbage(self) -> None:
        if self._commit_lock.locked() or self._sealing:
            return
        for path in self.workspace.garbage:
            fd = self._fds.pop(path, None)
            if fd is not None:
                os.close(fd)
        self.workspace.collect_garbage()

    # commits

    async def journal(self, node: Inode) -> None:
        """Make ``node``'s content durable now: sealed, stored, journaled (no version yet)."""
        if self.read_only or self.secrets is None:
            return
        secrets = self.secrets
        async with self._content_lock(node):
            if not self._content_dirty(node) or not node.staged:
                return
            chain, content_gen = journal_chain(node), node.content_gen
            staging = bytes(node.memory) if node.memory is not None else str(node.staging)
            base = 0 if self.head is None else self.head.version
            stream, size_now = self._streams.pop(node.ino, None), node.size
            chunks = None if stream is None else functools.partial(stream.finish, size_now)
            self._sealing += 1
            try:
                ref, size, seq, kept = await trio.to_thread.run_sync(
                    journal_file, self.view, secrets, staging, functools.partial(encode_record, chain), base, chunks
                )
            finally:
                self._sealing -= 1
            node.node, node.committed_size, node.committed_content_gen = ref, size, content_gen
            self._journal_seq = max(self._journal_seq, seq)
            if kept:  # stored by the next checkpoint; until then the file stays staged
                self._unstored[seq] = (node, kept)
                self._unstored_inodes[node.ino] += 1
                self._unstored_bytes += sum(map(len, kept))
                if self._unstored_bytes > UNSTORED_LIMIT and self.reader.nursery is not None:
                    self.reader.nursery.start_soon(self.commit, _settled)
            # The tree above it still has to be checkpointed: the inode stays dirty.

    async def commit(self, content_of: Callable[[Inode], bool] = lambda inode: True) -> None:
        """Commit what is dirty as a new version, recorded in the journal before returning.

        ``content_of`` picks the files whose changed content goes in (default: all).
        """
        if self.read_only or self.secrets is None:
            return
        async with self._commit_lock:
            plan = snapshot(self.workspace, content_of)
            if plan is None:
                return
            secrets, head, journal_up_to = self.secrets, self.head, self._journal_seq
            batch = [seq for seq in self._unstored if seq <= journal_up_to]
            objects = [sealed for seq in batch for sealed in self._unstored[seq][1]]
            try:
                async with contextlib.AsyncExitStack() as locks:
                    for inode in sorted(staged_inodes(plan), key=lambda i: i.ino):
                        await locks.enter_async_context(self._content_lock(inode))
                    result, record = await trio.to_thread.run_sync(
                        checkpoint, self.view, secrets, plan, head, self._totals, _now(), journal_up_to, objects
                    )
            except BaseException:
                abandon(self.workspace, plan)
                raise
            apply(result)
            self.head = record
            self.versions_committed += 1
            for seq in batch:
                node, kept = self._unstored.pop(seq)
                self._unstored_bytes -= sum(map(len, kept))
                self._unstored_inodes[node.ino] -= 1
                if not self._unstored_inodes[node.ino]:
                    del self._unstored_inodes[node.ino]
                    if node.opens == 0 and not self._content_dirty(node):
                        self.workspace.drop_staging(node)
        self._collect_garbage()
