"""A mount's live working tree: open handles, staged content, the files sealed while written, what is made
durable on close, and the commit schedule. The FUSE handlers (``portalfs.mount.operations``) translate each
request into a call here; nothing here knows FUSE (docs/design.md, sections 9 and 17).

Writes go to staging per inode: in memory while small, in a staging file past
``MEMORY_STAGING``. A file's new content is made durable (sealed, stored,
journaled) on flush, release and fsync (``journal``); new versions are
checkpointed (``commit``) soon after a change (``changed``: a file closed
after writing, a name made, removed or renamed; ``SETTLE_SECONDS`` later, so
that a burst of changes makes one version), every ``AUTOCOMMIT_SECONDS``
while something is dirty, on fsync of a directory and on unmount. Clean
content comes from the ``ContentReader``. Runs on the mount's trio loop; CPU
and disk work go to worker threads.
"""

from __future__ import annotations

import bisect
import collections
import contextlib
import errno
import functools
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import trio

from .. import threads
from ..chunking import CDC_MAX, CDC_MIN
from ..device import Unlocked
from ..errors import IntegrityError, MissingObject, PortalError
from ..memory import give_back_freed_memory
from ..merge import Writer, conflict_copy
from ..portal import PortalView
from ..root import RootPayload, RootRecord
from ..store.base import Priority
from ..tree import Entry
from .commit import DirPlan, abandon, append_journal, apply, checkpoint, journal_file, snapshot, staged_inodes
from .groupcommit import GroupCommit
from .journal import apply_journal, encode_record, journal_chain
from .reader import ContentReader
from .streaming import StreamingSeal
from .workspace import MAX_FILE_SIZE, Followed, FsError, Inode, Workspace

__all__ = ["LiveTree", "settled", "AUTOCOMMIT_SECONDS", "MEMORY_STAGING"]

log = logging.getLogger("portalfs")

AUTOCOMMIT_SECONDS = 2.0
SETTLE_SECONDS = 0.05  # after a change, wait this long for more before committing
COMMIT_SHARE = 0.1  # at most this share of the time goes to checkpoints while changes keep coming
MEMORY_STAGING = CDC_MIN  # files up to this size are staged in memory, not in a file
UNSTORED_LIMIT = 64 * 1024 * 1024  # checkpoint early when journaled-but-unstored objects reach this
STREAM_FROM = 4 * 1024 * 1024  # seal sequentially written files in the background past this size
STAGE_BATCH = 32  # chunks of a file opened for writing fetched together, when the device lacks them
# After a checkpoint that stored a directory in parts, the heap's free pages go back to the kernel (such a
# checkpoint frees tens of megabytes it made, which glibc would keep: memory.py), at most this often.
# Not after every checkpoint: many small ones reuse what the last freed (small files ran a few percent slower).
TRIM_SECONDS = 1.0
# A reader that opens a directory's files in name order (tar, cp -r, rsync, grep -r) has the next files loaded
# while it reads this one: the small ones whole, of the others the first chunks of this many (about this many bytes).
WALK_AHEAD_FILES = 4
WALK_AHEAD_BYTES = 8 * 1024 * 1024
WALK_AHEAD_NAMES = 16  # names looked at after the one opened
LISTINGS_KEPT = 16  # the directories last listed, whose listings are kept for this


def now_ns() -> int:
    return time.time_ns()


def settled(inode: Inode) -> bool:
    """Commit a file's new content only once no handle is writing it (or at its writer's flush/fsync)."""
    return inode.writers == 0


@dataclass(slots=True)
class _Handle:
    inode: Inode
    writable: bool
    append: bool
    sequential: bool = False  # began empty and has only been appended to, so far


class LiveTree:
    def __init__(
        self,
        view: PortalView,
        secrets: Unlocked | None,
        head: RootRecord | None,
        root: RootPayload,
        staging_dir: Path,
        read_only: bool,
    ) -> None:
        self.view = view
        self.secrets = secrets
        self.head = head
        self.read_only = read_only
        self.workspace = Workspace(root.entry, view.load_node, staging_dir, read_only=read_only)
        self.reader = ContentReader(view)
        self.versions_committed = 0
        self._handles: dict[int, _Handle] = {}
        self._next_fh = 1
        self._fds: dict[Path, int] = {}
        self._totals: dict[bytes, tuple[int, int]] = {}
        self._reported: set[str] = set()
        self._commit_lock = trio.Lock()  # one checkpoint at a time
        self._trimmed = 0.0  # when the heap was last trimmed (trio.current_time)
        self._changed = trio.Event()  # something changed since the last checkpoint began
        self.on_commit: Callable[[RootRecord], None] | None = None  # told of each version committed
        self._content_locks: dict[int, trio.Lock] = {}  # per inode: no write while it is being sealed
        self._journal_seq = 0  # the newest journal record whose inode state is applied
        self._journal = GroupCommit(functools.partial(append_journal, view))  # closes that come together: one flush
        self._sealing = 0  # journal writes in flight (they read staging files)
        self._streams: dict[int, StreamingSeal] = {}  # files being sealed while written
        self._unstreamed: set[int] = set()  # files read while written: not streamed again until closed
        # Journaled small files' objects, kept in their records until a checkpoint stores them.
        self._unstored: dict[int, tuple[Inode, list[bytes]]] = {}  # by journal record number
        self._unstored_inodes: collections.Counter[int] = collections.Counter()
        self._unstored_bytes = 0
        self._listings: collections.OrderedDict[int, list[bytes]] = collections.OrderedDict()  # names, sorted
        self._walked: collections.OrderedDict[int, bytes] = collections.OrderedDict()  # the last file read there
        if head is not None and root.entry.node is not None:
            self._totals[root.entry.node.cid] = (root.size, root.files)

    def take_journal(self) -> None:
        """Put here the files of journal records no version holds yet: those a replay could not checkpoint (a
        directory too large for its node, ``journal.writing``). The first checkpoint that succeeds takes them
        in and clears their records. A worker thread, before the mount serves."""
        if self.read_only:
            return
        rows = self.view.device.state.journal_records(self.view.row.id)
        if rows:
            self._journal_seq = apply_journal(self.view, self.workspace, rows)

    def new_fh(self) -> int:
        """A number for a new handle (a file's or a directory's)."""
        self._next_fh += 1
        return self._next_fh

    # handles

    async def open(self, node: Inode, flags: int) -> tuple[int, bool]:
        """Open ``node``: (handle, whether the kernel may keep its cached pages). A writer stages it first."""
        writable = flags & os.O_ACCMODE in (os.O_WRONLY, os.O_RDWR)
        if writable and self.read_only:
            raise FsError(errno.EROFS)
        if writable:
            async with self._content_lock(node):
                truncate = bool(flags & os.O_TRUNC)
                await self._abandon_stream(node, keep=not truncate)  # a second writer, or a fresh start
                await self._stage(node, empty=truncate)
                if truncate and node.size:
                    self._truncate_staged(node, 0)
                    self.workspace.content_changed(node, 0, now_ns())
        else:
            self._walk_ahead(node)
        return self.open_new(node, writable, bool(flags & os.O_APPEND), writable and node.size == 0)

    def open_new(self, node: Inode, writable: bool, append: bool, sequential: bool = True) -> tuple[int, bool]:
        """A handle on ``node`` as it is (a file just created: empty, written from its start)."""
        fh = self.new_fh()
        self._handles[fh] = _Handle(node, writable, append, sequential and node.writers == 0)
        self.workspace.opened(node, writable)
        keep = node.kernel_cache_gen == node.content_gen
        node.kernel_cache_gen = node.content_gen
        return fh, keep

    def listed(self, directory: Inode, names: list[bytes]) -> None:
        """``directory`` was opened to be listed, its ``names`` sorted: its files opened in that order next are a
        walk (``_walk_ahead``)."""
        self._listings.pop(directory.ino, None)
        self._listings[directory.ino] = names
        if len(self._listings) > LISTINGS_KEPT:
            self._listings.popitem(last=False)

    def _walk_ahead(self, node: Inode) -> None:
        """``node`` is opened for reading. If its directory was listed and this is the listing's first file, or
        the last file opened for reading there came before it, the reader walks the directory (tar, cp -r,
        rsync, grep -r): the next files load meanwhile, the small ones whole, together (one worker-thread job for
        several: a job each cost more than it saved), the others' first chunks."""
        parent = node.parent
        names = None if parent is None else self._listings.get(parent.ino)
        if names is None or parent is None or parent.children is None:
            return
        children = parent.children
        previous = self._walked.pop(parent.ino, None)
        self._walked[parent.ino] = node.name
        if len(self._walked) > LISTINGS_KEPT:
            self._walked.popitem(last=False)
        at = bisect.bisect_left(names, node.name)
        if at == len(names) or names[at] != node.name:
            return
        if previous is None:  # a walk starts at the first file
            if at > WALK_AHEAD_NAMES or any(name in children and children[name].is_file for name in names[:at]):
                return
        elif previous >= node.name:
            return
        files, budget, small = 0, WALK_AHEAD_BYTES, []
        for name in names[at + 1 : at + 1 + WALK_AHEAD_NAMES]:
            child = children.get(name)
            if child is None or not child.is_file or child.staged or child.node is None or not child.size:
                continue
            if child.size <= CDC_MIN:
                small.append(child.node)
            elif files < WALK_AHEAD_FILES and budget > 0:
                self.reader.read_ahead_file(child.node)
                files, budget = files + 1, budget - min(child.size, CDC_MAX)
        if small:
            self.reader.read_ahead_small_files(small)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        node = self._handles[fh].inode
        stream = self._streams.get(node.ino)
        if stream is not None and off < stream.punched:  # that part is in the store only: staged again first
            async with self._content_lock(node):
                self._unstreamed.add(node.ino)  # a file read while written stays whole until closed
                await self._abandon_stream(node)
        if node.memory is not None:
            return bytes(node.memory[off : off + size])
        if node.staging is not None:
            return os.pread(self._fd(node), size, off)
        try:
            parts = await self.reader.read(node.node, node.size, off, size)
        except (IntegrityError, MissingObject) as exc:
            if str(exc) not in self._reported:  # the kernel retries: say it once
                self._reported.add(str(exc))
                log.error("read %s: %s", self.path(node), exc)
            raise FsError(errno.EIO) from None
        if not parts:
            return b""
        # pyfuse3 replies from any buffer: one piece goes out without a copy.
        return cast(bytes, parts[0]) if len(parts) == 1 else b"".join(parts)

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        handle = self._handles[fh]
        node = handle.inode
        async with self._content_lock(node):
            await self._stage(node, empty=False)
            if handle.append:
                off = node.size
            if off + len(buf) > MAX_FILE_SIZE:
                raise FsError(errno.EFBIG)
            handle.sequential = handle.sequential and off == node.size
            if not handle.sequential:
                await self._abandon_stream(node)
            written = self._write_staged(node, buf, off)
            self.workspace.content_changed(node, max(node.size, off + written), now_ns())
            self._follow_stream(handle)
        return written

    async def truncate(self, node: Inode, size: int, now: int) -> None:
        if self.read_only:
            raise FsError(errno.EROFS)
        if size > MAX_FILE_SIZE:
            raise FsError(errno.EFBIG)
        async with self._content_lock(node):
            await self._abandon_stream(node, keep=size > 0)
            await self._stage(node, empty=size == 0)
            self._truncate_staged(node, size)
            self.workspace.content_changed(node, size, now)

    async def flush(self, fh: int) -> None:
        handle = self._handles[fh]
        if handle.writable and self._content_dirty(handle.inode):
            await self.journal(handle.inode)

    async def release(self, fh: int) -> None:
        handle = self._handles.pop(fh)
        node = handle.inode
        self.workspace.released(node, handle.writable)
        if not node.writers and not self._content_dirty(node):  # a stream that went on after a flush: it ends
            stream = self._streams.pop(node.ino, None)
            if stream is not None and stream.stop():  # its front is in the store only: read from there
                self.workspace.drop_staging(node)
        if node.unlinked:
            await self._abandon_stream(node, keep=False)
        try:
            if handle.writable:
                if self._content_dirty(node):
                    await self.journal(node)
                self.changed()
        finally:
            stored = node.ino not in self._unstored_inodes
            if node.opens == 0 and node.staged and stored and not self._content_dirty(node) and not node.unlinked:
                self.workspace.drop_staging(node)
            if node.opens == 0:
                self._unstreamed.discard(node.ino)
            lock = self._content_locks.get(node.ino)
            if node.opens == 0 and lock is not None and not lock.locked() and not lock.statistics().tasks_waiting:
                del self._content_locks[node.ino]
            self.collect_garbage()

    async def fsync(self, fh: int) -> None:
        await self.journal(self._handles[fh].inode)
        self.changed()

    # staging

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
                for start in range(0, len(refs), STAGE_BATCH):
                    batch = refs[start : start + STAGE_BATCH]
                    # a file the device lacks comes from the edges a batch at a time, in parallel
                    await threads.run_sync(self.view.prefetch, batch, Priority.STAGING)
                    for ref in batch:
                        out.write(await self.reader.chunk(ref))
        except BaseException:
            scratch.unlink(missing_ok=True)
            raise
        self.workspace.new_staging(inode, copy_from=scratch)

    def _follow_stream(self, handle: _Handle) -> None:
        """Keep a sequentially written file's background sealing fed, or start it."""
        node = handle.inode
        stream = self._streams.get(node.ino)
        if not handle.sequential:
            return
        if stream is not None:
            stream.grow(node.size)
        elif (
            node.size >= STREAM_FROM
            and node.writers == 1
            and self.secrets is not None
            and node.staging is not None
            and node.ino not in self._unstreamed
        ):
            stream = self._streams[node.ino] = StreamingSeal(
                self.view.store, self.secrets.identity.convergence_secret, node.staging
            )
            stream.grow(node.size)

    async def _abandon_stream(self, node: Inode, keep: bool = True) -> None:
        """Stop ``node``'s background sealing (content lock held); with ``keep``, its staging file whole again
        (the front the stream gave back, from the store)."""
        stream = self._streams.pop(node.ino, None)
        if stream is not None and stream.stop() and keep:
            await threads.run_sync(stream.restore)

    def abandon_streams(self) -> None:
        """Stop every stream, their staging files whole again (the unmount; blocks)."""
        for ino in list(self._streams):
            stream = self._streams.pop(ino)
            if stream.stop():
                stream.restore()

    def _content_dirty(self, node: Inode) -> bool:
        return node.committed_content_gen != node.content_gen and not node.unlinked

    def path(self, node: Inode) -> str:
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

    def collect_garbage(self) -> None:
        """Drop the staging files and inodes nothing holds any more (not while a checkpoint or seal reads them)."""
        if self._commit_lock.locked() or self._sealing:
            return
        for path in self.workspace.garbage:
            fd = self._fds.pop(path, None)
            if fd is not None:
                os.close(fd)
        self.workspace.collect_garbage()

    # durability and versions

    def changed(self) -> None:
        """Something was written and closed, or a name changed: checkpoint it soon (``run_commits``)."""
        self._changed.set()

    async def run_commits(self) -> None:
        """Checkpoint soon after each change, and every AUTOCOMMIT_SECONDS while something is dirty, until
        cancelled. Big trees make checkpoints slow: they are kept to a share of the time (COMMIT_SHARE while
        changes keep coming, a tenth otherwise)."""
        took = 0.0
        while True:
            with trio.move_on_after(max(AUTOCOMMIT_SECONDS, 10 * took)):
                await self._changed.wait()
                await trio.sleep(max(SETTLE_SECONDS, took / COMMIT_SHARE - took))
            self._changed = trio.Event()
            started = trio.current_time()
            try:
                await self.commit(settled)
            except (PortalError, OSError) as exc:
                log.error("commit failed: %s", exc)
            took = trio.current_time() - started

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
                ref, size, seq, kept = await threads.run_sync(
                    journal_file, self.view, secrets, staging, functools.partial(encode_record, chain), chunks,
                    functools.partial(self._journal.append, base),
                )  # fmt: skip
            except BaseException:
                if stream is not None and stream.stop():  # the staging file is whole again, still dirty
                    with trio.CancelScope(shield=True):
                        await threads.run_sync(stream.restore)
                raise
            finally:
                self._sealing -= 1
            node.node, node.committed_size, node.committed_content_gen = ref, size, content_gen
            if stream is not None and node.writers and node.staging is not None:  # an fsync or a flush: it goes on
                self._streams[node.ino] = stream = StreamingSeal(
                    self.view.store, secrets.identity.convergence_secret, node.staging, after=stream
                )
                stream.grow(node.size)
            elif stream is not None and stream.punched:  # its front is in the store only: read from there
                self.workspace.drop_staging(node)
            self._journal_seq = max(self._journal_seq, seq)
            if kept:  # stored by the next checkpoint; until then the file stays staged
                self._unstored[seq] = (node, kept)
                self._unstored_inodes[node.ino] += 1
                self._unstored_bytes += sum(map(len, kept))
                if self._unstored_bytes > UNSTORED_LIMIT and self.reader.nursery is not None:
                    self.reader.nursery.start_soon(self.commit, settled)
            # The tree above it still has to be checkpointed: the inode stays dirty.

    async def commit(self, content_of: Callable[[Inode], bool] = lambda inode: True) -> None:
        """Commit what is dirty as a new version, recorded in the journal before returning.

        ``content_of`` picks the files whose changed content goes in (default: all).
        """
        if self.read_only or self.secrets is None:
            return
        async with self._commit_lock:
            large = await self._commit(content_of)
        self.collect_garbage()
        if large and trio.current_time() - self._trimmed >= TRIM_SECONDS:  # the plan freed, its memory goes
            give_back_freed_memory()
            self._trimmed = trio.current_time()

    async def absorb(self, take: Callable[[], tuple[RootRecord, RootPayload, Writer] | None]) -> Followed | None:
        """Take versions from elsewhere into this live tree (docs/design.md, section 16, "Live sync").

        Under the commit lock: what is settled here is committed first; then ``take`` (a worker thread) lands
        the hub's versions, merged with this device's, and returns the new head and the device whose version
        came (None: nothing came); the tree moves onto it in place, keeping what changed here meanwhile
        (``Workspace.rebase``). Returns what the kernel may have cached, for the caller to invalidate.
        """
        if self.read_only or self.secrets is None:
            return None
        async with self._commit_lock:
            await self._commit(settled)
            taken = await threads.run_sync(take)
            if taken is None:
                return None
            record, root, their_device = taken
            followed = self.workspace.rebase(root.entry, functools.partial(self._beside, their_device))
            self.head = record
            if root.entry.node is not None:
                self._totals[root.entry.node.cid] = (root.size, root.files)
        self.collect_garbage()
        return followed

    def _beside(self, their_device: Writer, entry: Entry, taken: set[bytes]) -> Entry:
        """Their file, beside this device's (which keeps the name), as a conflict copy."""
        assert self.secrets is not None
        key = self.secrets.device.public
        me = Writer(self.view.device.state.device_names().get(key, "this device"), key)
        return conflict_copy(entry, taken, their_device, me, time.strftime("%Y-%m-%d", time.gmtime()))

    async def _commit(self, content_of: Callable[[Inode], bool]) -> bool:
        """``commit``, with the commit lock held; whether it made a version storing a directory in parts."""
        assert self.secrets is not None
        for ino in list(self._streams):  # a file still being written goes in: its staging file whole first
            node = self.workspace.inodes.get(ino)
            if node is not None and content_of(node):
                async with self._content_lock(node):
                    await self._abandon_stream(node)
        plan = snapshot(self.workspace, content_of)
        if plan is None:
            return False
        secrets, head, journal_up_to = self.secrets, self.head, self._journal_seq
        batch = [seq for seq in self._unstored if seq <= journal_up_to]
        objects = [sealed for seq in batch for sealed in self._unstored[seq][1]]
        try:
            async with contextlib.AsyncExitStack() as locks:
                for inode in sorted(staged_inodes(plan), key=lambda i: i.ino):
                    await locks.enter_async_context(self._content_lock(inode))
                result, record = await threads.run_sync(
                    checkpoint, self.view, secrets, plan, head, self._totals, now_ns(), journal_up_to, objects
                )
        except BaseException:
            abandon(self.workspace, plan)
            raise
        apply(self.workspace, result)
        self.head = record
        self.versions_committed += 1
        if self.on_commit is not None:
            self.on_commit(record)
        for seq in batch:
            node, kept = self._unstored.pop(seq)
            self._unstored_bytes -= sum(map(len, kept))
            self._unstored_inodes[node.ino] -= 1
            if not self._unstored_inodes[node.ino]:
                del self._unstored_inodes[node.ino]
                if node.opens == 0 and not self._content_dirty(node):
                    self.workspace.drop_staging(node)
        return any(isinstance(done, DirPlan) and done.parts for done in result.plans)
