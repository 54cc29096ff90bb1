"""A LAN of network namespaces, made with pyroute2: hosts on one bridge, all removed at the end.

The bridge lives in a namespace of its own (the switch), so nothing is added
to or routed through the namespace the tests run in: a host reaches the other
hosts of its LAN and nothing else (no default route).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from pyroute2 import NetNS, netns

__all__ = ["Lan", "lan", "namespaces_available"]

SUBNET = "10.78.0"  # hosts get SUBNET.1, SUBNET.2, ... /24


@dataclass
class Lan:
    prefix: str  # unique to this LAN: the namespaces are PREFIX-switch and PREFIX-HOST
    addresses: dict[str, str] = field(default_factory=dict)  # host -> IPv4 address
    _ports: dict[str, str] = field(default_factory=dict)  # host -> the switch's end of its cable

    @property
    def switch(self) -> str:
        return f"{self.prefix}-switch"

    def netns(self, host: str) -> str:
        return f"{self.prefix}-{host}"

    def address(self, host: str) -> str:
        return self.addresses[host]

    def enter(self, host: str) -> Callable[[], None]:
        """A ``preexec_fn`` that moves a child process into ``host``'s namespace before it runs."""
        name = self.netns(host)
        return lambda: netns.setns(name)

    def unplug(self, host: str) -> None:
        """Pull ``host``'s cable out of the switch: its packets go nowhere, nothing answers."""
        with NetNS(self.switch) as switch:
            switch.link("set", index=switch.link_lookup(ifname=self._ports[host])[0], state="down")

    def shape(self, host: str, mbit: float) -> None:
        """Limit what ``host`` sends to ``mbit`` Mbit/s: an HTB class on its end of the cable."""
        with NetNS(self.netns(host)) as ns:
            eth0 = ns.link_lookup(ifname="eth0")[0]
            ns.tc("add", "htb", index=eth0, handle="1:", default=0x10)
            rate = f"{mbit}mbit"
            ns.tc("add-class", "htb", index=eth0, handle="1:10", parent="1:", rate=rate, ceil=rate)

    def sent(self, host: str) -> int:
        """Bytes ``host`` has sent on its cable."""
        with NetNS(self.netns(host)) as ns:
            (link,) = ns.get_links(ifname="eth0")
            return int(link.get_attr("IFLA_STATS64")["tx_bytes"])

    @contextmanager
    def meter(self, hosts: Sequence[str]) -> Iterator[Callable[[], list[int]]]:
        """A reader of the bytes each of ``hosts`` has sent, cheap enough to call every few milliseconds (~4 us):
        the switch's /proc/net/dev (a host's port receives what the host sends), opened once by a thread that
        entered the switch's namespace (setns moves only the calling thread; the file keeps the namespace it
        was opened in). ``sent`` opens a netlink socket in the namespace each time, which forks a helper:
        ~8 ms of CPU a call, a core's worth when polled for five hosts every 10 ms."""
        opened: list[int] = []

        def open_in_switch() -> None:
            netns.setns(self.switch)
            opened.append(os.open("/proc/thread-self/net/dev", os.O_RDONLY))

        opener = threading.Thread(target=open_in_switch)
        opener.start()
        opener.join()
        (fd,) = opened
        ports = [self._ports[host] for host in hosts]

        def read() -> list[int]:
            received = {}
            for line in os.pread(fd, 1 << 16, 0).decode().splitlines()[2:]:
                name, _, counters = line.partition(":")
                received[name.strip()] = int(counters.split()[0])
            return [received[port] for port in ports]

        try:
            yield read
        finally:
            os.close(fd)

    def port(self, host: str) -> str:
        """The switch's end of ``host``'s cable."""
        return self._ports[host]

    def _add_host(self, host: str, address: str, index: int) -> None:
        name = self.netns(host)
        netns.create(name)
        port = f"p{index}"  # the switch's end of the host's cable
        with NetNS(self.switch) as switch:
            switch.link("add", ifname=port, kind="veth", peer={"ifname": "eth0", "net_ns_fd": name})
            bridge = switch.link_lookup(ifname="br0")[0]
            switch.link("set", index=switch.link_lookup(ifname=port)[0], master=bridge, state="up")
        with NetNS(name) as ns:
            eth0 = ns.link_lookup(ifname="eth0")[0]
            ns.addr("add", index=eth0, address=address, prefixlen=24)
            ns.link("set", index=eth0, state="up")
            ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")
        self.addresses[host] = address
        self._ports[host] = port


def namespaces_available() -> bool:
    return os.geteuid() == 0 and os.path.exists("/proc/self/ns/net")


@contextmanager
def lan(hosts: list[str]) -> Iterator[Lan]:
    """Hosts on one bridge, named by ``hosts``; every namespace is removed on exit, whatever happened."""
    lab = Lan(f"pt{os.getpid() % 100000}")
    made = [lab.switch]
    try:
        netns.create(lab.switch)
        with NetNS(lab.switch) as switch:
            switch.link("add", ifname="br0", kind="bridge")
            switch.link("set", index=switch.link_lookup(ifname="br0")[0], state="up")
        for i, host in enumerate(hosts, start=1):
            made.append(lab.netns(host))
            lab._add_host(host, f"{SUBNET}.{i}", i)
        yield lab
    finally:
        for name in reversed(made):
            if name in netns.listnetns():
                netns.remove(name)
