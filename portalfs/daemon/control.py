"""portald's control socket: one JSON request and one JSON answer per connection, each a line.

The socket is ``portald.sock`` in the device's data directory, mode 0600 (the
directory is 0700): whoever can reach it is the device's user. Requests are
``{"op": "status"}``, ``{"op": "sync", "names": [...]}``, ``{"op": "changed"}``, and `portalctl put` and `get`
handed over (``put``, ``get``); answers are
``{"ok": true, "result": ...}`` or ``{"ok": false, "error": MESSAGE, "exit_code": N}``
(the exit codes of docs/design.md, "Exit codes"). See docs/design.md, "The daemon".
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import PortalError, Unreachable, UsageError, error_for_exit_code, shown

__all__ = ["serve_control", "call_daemon", "daemon_socket", "MAX_LINE"]

MAX_LINE = 1 << 20  # bytes in one request or answer
SUN_PATH_MAX = 107  # bytes in a unix socket's path, with room for the NUL

if TYPE_CHECKING:
    import trio

Handler = Callable[[dict[str, Any], threading.Event], Awaitable[Any]]  # the request; set once its caller is gone


def daemon_socket(data: Path) -> Path:
    return data / "portald.sock"


def _check_path(path: Path) -> None:
    if len(os.fsencode(path)) > SUN_PATH_MAX:
        raise UsageError(f"the control socket path {path} is too long for a unix socket; use a shorter PORTAL_HOME")


async def serve_control(path: Path, handle: Handler, *, task_status: trio.TaskStatus[None] | None = None) -> None:
    """Listen on ``path`` (replacing a stale socket) and answer each connection with ``handle``.

    trio is imported here, not with the module: a command that only calls portald does not load it."""
    import trio

    _check_path(path)
    path.unlink(missing_ok=True)
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)  # the socket is made 0600, never wider even for a moment
    try:
        await sock.bind(os.fspath(path))
    finally:
        os.umask(old_umask)
    sock.listen(16)
    listener = trio.SocketListener(sock)

    async def hangup(stream: trio.SocketStream, gone: threading.Event) -> None:
        """Set ``gone`` once the caller closes its end (it said all it had to say with its request)."""
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            while await stream.receive_some(4096):
                pass
        gone.set()

    async def reply(stream: trio.SocketStream, watching: trio.Nursery) -> dict[str, Any]:
        request: Any = {}
        try:
            request = json.loads(await _read_line(stream))
            if not isinstance(request, dict):
                raise UsageError("a request is a JSON object")
            gone = threading.Event()
            watching.start_soon(hangup, stream, gone)
            return {"ok": True, "result": await handle(request, gone)}
        except ValueError as exc:
            return {"ok": False, "error": f"malformed request: {exc}", "exit_code": UsageError.exit_code}
        except PortalError as exc:
            return {"ok": False, "error": str(exc), "exit_code": exc.exit_code}
        except Exception as exc:  # a fault of portald's own: said to the caller and logged, portald goes on
            import logging  # here: a command that only calls portald does not load it

            logging.getLogger("portal.daemon").exception("control request %s failed", shown(str(request.get("op"))))
            return {"ok": False, "error": f"portald failed: {exc}", "exit_code": PortalError.exit_code}

    async def answer(stream: trio.SocketStream) -> None:
        async with stream:
            async with trio.open_nursery() as watching:
                answered = await reply(stream, watching)
                watching.cancel_scope.cancel()
            try:
                await stream.send_all(json.dumps(answered).encode() + b"\n")
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the caller went away

    try:
        if task_status is not None:
            task_status.started()
        await trio.serve_listeners(answer, [listener])
    finally:
        path.unlink(missing_ok=True)


async def _read_line(stream: trio.SocketStream) -> bytes:
    data = b""
    while b"\n" not in data:
        chunk = await stream.receive_some(65536)
        if not chunk:
            break
        data += chunk
        if len(data) > MAX_LINE:
            raise UsageError("request too long")
    return data.split(b"\n", 1)[0]


def call_daemon(path: Path, request: dict[str, Any], timeout: float | None = None) -> Any | None:
    """Send ``request`` to the daemon of this device; None when no daemon listens there.

    A refusal by the daemon is raised as the error it reported, with its exit code.
    """
    if not path.exists():
        return None
    _check_path(path)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(os.fspath(path))
        except (ConnectionRefusedError, FileNotFoundError):
            return None  # a socket left by a daemon that is gone
        try:
            sock.sendall(json.dumps(request).encode() + b"\n")
            data = b""
            while b"\n" not in data:
                chunk = sock.recv(65536)
                if not chunk:
                    raise Unreachable("portald closed the control connection without answering")
                data += chunk
                if len(data) > MAX_LINE:
                    raise Unreachable("portald's answer is too long")
        except TimeoutError:
            raise Unreachable(f"portald did not answer within {timeout:.0f} s") from None
    try:
        reply = json.loads(data.split(b"\n", 1)[0])
        if not isinstance(reply, dict):
            raise ValueError("not a JSON object")
    except ValueError:  # something else listens there, or another version of portald
        answer = shown(data[:80].decode(errors="replace"))
        raise PortalError(f"the answer on {path} is not portald's: {answer}") from None
    if not reply.get("ok"):
        raise error_for_exit_code(int(reply.get("exit_code", 1)), str(reply.get("error", "portald refused")))
    return reply.get("result")
