"""A constant one-way delay on a LAN host's link, for kernels without sch_netem (bench/swarm).

In the LAN's switch namespace, iptables sends every bridged packet that enters or leaves a host's port to
an NFQUEUE (br_netfilter makes bridged IPv4 go through iptables); this module, run there as a process,
binds the queue over netfilter netlink (the standard library's sockets, no libnetfilter_queue), asks for
packet metadata only, and accepts the packets in arrival order ``delay`` after each arrived, with one
batch verdict ("every id up to N") per release. The iptables rule has --queue-bypass: if this process is
gone, packets pass undelayed rather than being dropped.

    python -m tests.integration.netdelay --queue 3 --delay-ms 20   # prints "ready" once bound
"""

from __future__ import annotations

import argparse
import collections
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable

NETLINK_NETFILTER = 12
SOL_NETLINK, NETLINK_NO_ENOBUFS, SO_RCVBUFFORCE = 270, 5, 33
SUBSYS_QUEUE = 3
MSG_PACKET, MSG_CONFIG, MSG_VERDICT_BATCH = 0, 2, 3
F_REQUEST, F_ACK = 1, 4
NLMSG_ERROR = 2
ATTR_PACKET_HDR, ATTR_VERDICT_HDR = 1, 2
CFG_CMD, CFG_PARAMS, CFG_QUEUE_MAXLEN, CFG_MASK, CFG_FLAGS = 1, 2, 3, 4, 5
CMD_BIND, COPY_META, FLAG_GSO = 1, 1, 4
ACCEPT = 1


def _attr(kind: int, data: bytes) -> bytes:
    length = 4 + len(data)
    return struct.pack("=HH", length, kind) + data + b"\0" * (-length % 4)


def _message(kind: int, queue: int, attrs: list[bytes], flags: int = F_REQUEST) -> bytes:
    body = struct.pack("=BB", socket.AF_UNSPEC, 0) + struct.pack(">H", queue) + b"".join(attrs)
    return struct.pack("=IHHII", 16 + len(body), (SUBSYS_QUEUE << 8) | kind, flags, 0, 0) + body


def _ask(sock: socket.socket, message: bytes) -> None:
    sock.send(message)
    answer = sock.recv(65536)
    kind = struct.unpack_from("=H", answer, 4)[0]
    if kind == NLMSG_ERROR:
        error = struct.unpack_from("=i", answer, 16)[0]
        if error:
            raise OSError(-error, f"NFQUEUE config: {os.strerror(-error)}")


def bind(queue: int) -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 64 << 20)
    sock.setsockopt(SOL_NETLINK, NETLINK_NO_ENOBUFS, 1)
    sock.bind((0, 0))
    ack = F_REQUEST | F_ACK
    _ask(sock, _message(MSG_CONFIG, queue, [_attr(CFG_CMD, struct.pack(">BBH", CMD_BIND, 0, 0))], ack))
    _ask(sock, _message(MSG_CONFIG, queue, [_attr(CFG_PARAMS, struct.pack(">IB", 0, COPY_META))], ack))
    _ask(sock, _message(MSG_CONFIG, queue, [_attr(CFG_QUEUE_MAXLEN, struct.pack(">I", 1 << 16))], ack))
    flags = [_attr(CFG_FLAGS, struct.pack(">I", FLAG_GSO)), _attr(CFG_MASK, struct.pack(">I", FLAG_GSO))]
    _ask(sock, _message(MSG_CONFIG, queue, flags, ack))
    return sock


def _packet_ids(data: bytes) -> list[int]:
    ids, at = [], 0
    while at + 16 <= len(data):
        length, kind = struct.unpack_from("=IH", data, at)
        if length < 16:
            break
        if kind == (SUBSYS_QUEUE << 8) | MSG_PACKET:
            attr = at + 20
            while attr + 4 <= at + length:
                size, akind = struct.unpack_from("=HH", data, attr)
                if size < 4:
                    break
                if akind & 0x7FFF == ATTR_PACKET_HDR:
                    ids.append(struct.unpack_from(">I", data, attr + 4)[0])
                attr += (size + 3) & ~3
        at += (length + 3) & ~3
    return ids


def run(queue: int, delay: float, seconds: float) -> None:
    sock = bind(queue)
    held: collections.deque[tuple[float, int]] = collections.deque()
    stop = time.monotonic() + seconds
    running = True

    def finish(*_: object) -> None:
        nonlocal running
        running = False

    signal.signal(signal.SIGTERM, finish)
    print("ready", flush=True)

    def release(upto: int) -> None:
        verdict = _attr(ATTR_VERDICT_HDR, struct.pack(">II", ACCEPT, upto))
        sock.send(_message(MSG_VERDICT_BATCH, queue, [verdict]))

    while running and time.monotonic() < stop:
        now = time.monotonic()
        last = None
        while held and held[0][0] <= now:
            last = held.popleft()[1]
        if last is not None:
            release(last)
        wait = max(0.0, held[0][0] - now) if held else 0.2
        ready, _, _ = select.select([sock], [], [], wait)
        if ready:
            arrived = time.monotonic()
            for _ in range(256):  # drain what is waiting, bounded
                try:
                    data = sock.recv(1 << 16, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    break
                held.extend((arrived + delay, pid) for pid in _packet_ids(data))
    if held:
        release(held[-1][1])  # nothing is lost on the way out


def delay_link(switch_enter: Callable[[], None], port: str, queue: int, delay_ms: float) -> subprocess.Popen[str]:
    """Delay everything that crosses ``port`` of the switch (both ways) by ``delay_ms``; returns the delayer
    (stop it by PID). Run from the namespace the switch is not: commands go into it through ``switch_enter``."""
    with open("/proc/sys/net/bridge/bridge-nf-call-iptables") as flag:
        assert flag, "br_netfilter is not available"

    def sw(*args: str) -> None:
        subprocess.run(list(args), check=True, preexec_fn=switch_enter, capture_output=True)

    sw("sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1")
    process = subprocess.Popen(  # this file by its path: a benchmark runs from any directory
        [sys.executable, os.path.abspath(__file__), "--queue", str(queue), "--delay-ms", str(delay_ms)],
        preexec_fn=switch_enter, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert process.stdout is not None
    if process.stdout.readline().strip() != "ready":
        process.kill()
        raise RuntimeError(f"the delay for {port} did not start")
    for where in ("--physdev-in", "--physdev-out"):
        sw("iptables", "-A", "FORWARD", "-m", "physdev", where, port, "-j", "NFQUEUE", "--queue-num", str(queue),
           "--queue-bypass")  # fmt: skip
    return process


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--queue", type=int, required=True)
    parser.add_argument("--delay-ms", type=float, required=True)
    parser.add_argument("--max-seconds", type=float, default=3600)
    args = parser.parse_args()
    run(args.queue, args.delay_ms / 1000, args.max_seconds)


if __name__ == "__main__":
    main()
