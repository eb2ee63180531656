"""Hosts of their own on one machine: Linux network namespaces on a bridge, for the multi-host tests.

``NetLab(n_hosts)`` makes a bridge with an address in the root namespace and, per host, a namespace with a
veth pair (one end on the bridge, the other in the namespace with its own IP), so that a server in host i
binds its own address (every host can use the same port, as separate machines would) and the client in the
root namespace reaches it through a real link. ``rate_limit(i, ...)`` puts a token bucket (``tc qdisc tbf``)
on the link towards host i; ``blackhole(i)`` drops every packet to it (a route, as a dead switch port would).
Names carry this process's id and the subnet is one no route uses yet, so parallel test runs do not collide.
``close()`` removes everything it made (also at interpreter exit).

Needs root and a kernel that allows namespaces; :func:`unavailable` says why not, for a skip message.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
from typing import List


def _ip(*args, check=True, netns: str | None = None) -> subprocess.CompletedProcess:
    cmd = ["ip"] + (["-n", netns] if netns else []) + list(args)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if check and out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {out.stderr.strip()}")
    return out


def unavailable() -> str | None:
    """Why network namespaces cannot be used here (None when they can)."""
    if shutil.which("ip") is None or shutil.which("tc") is None:
        return "iproute2 (ip, tc) is not installed"
    if os.geteuid() != 0:
        return "network namespaces need root"
    probe = f"nxprobe{os.getpid()}"
    out = _ip("netns", "add", probe, check=False)
    if out.returncode != 0:
        return f"cannot create a network namespace: {out.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


class NetLab:
    def __init__(self, n_hosts: int):
        tag = f"nx{os.getpid() % 100000}"
        self.bridge = f"{tag}br"
        self.namespaces = [f"{tag}h{i}" for i in range(n_hosts)]
        self.links = [f"{tag}v{i}" for i in range(n_hosts)]  # root-namespace end, on the bridge
        self.subnet = self._free_subnet()
        self.gateway = f"{self.subnet}.1"
        self.addresses = [f"{self.subnet}.{10 + i}" for i in range(n_hosts)]
        self._blackholed: List[str] = []
        self._closed = False
        atexit.register(self.close)
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _free_subnet() -> str:
        used = _ip("-4", "route", "show", "table", "all").stdout
        start = os.getpid() % 200
        for step in range(200):
            candidate = f"10.213.{(start + step) % 200 + 20}"
            if f"{candidate}." not in used:
                return candidate
        raise RuntimeError("no free 10.213.x.0/24 subnet for the test network")

    def _build(self) -> None:
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for ns, link, address in zip(self.namespaces, self.links, self.addresses):
            peer = f"{link}p"
            _ip("netns", "add", ns)
            _ip("link", "add", link, "type", "veth", "peer", "name", peer)
            _ip("link", "set", peer, "netns", ns)
            _ip("link", "set", link, "master", self.bridge)
            _ip("link", "set", link, "up")
            _ip("link", "set", "lo", "up", netns=ns)
            _ip("link", "set", peer, "name", "eth0", netns=ns)
            _ip("addr", "add", f"{address}/24", "dev", "eth0", netns=ns)
            _ip("link", "set", "eth0", "up", netns=ns)
            _ip("route", "add", "default", "via", self.gateway, netns=ns)

    def exec_prefix(self, host: int) -> List[str]:
        """Command prefix that runs a program inside host ``host``'s namespace."""
        return ["ip", "netns", "exec", self.namespaces[host]]

    def rate_limit(self, host: int, rate: str = "4mbit", burst: str = "16kb", latency: str = "500ms") -> None:
        """Token bucket on the link towards ``host`` (what the client sends it is paced at ``rate``)."""
        out = subprocess.run(["tc", "qdisc", "replace", "dev", self.links[host], "root", "tbf", "rate", rate,
                              "burst", burst, "latency", latency], capture_output=True, text=True, timeout=30)
        if out.returncode != 0:
            raise RuntimeError(f"tc qdisc tbf on {self.links[host]} failed: {out.stderr.strip()}")

    def clear_rate_limit(self, host: int) -> None:
        subprocess.run(["tc", "qdisc", "del", "dev", self.links[host], "root"], capture_output=True, timeout=30)

    def blackhole(self, host: int) -> None:
        """Drop every packet the root namespace sends to ``host`` (no reset, no answer: silence)."""
        _ip("route", "add", "blackhole", f"{self.addresses[host]}/32")
        self._blackholed.append(self.addresses[host])

    def restore(self, host: int) -> None:
        address = self.addresses[host]
        if address in self._blackholed:
            _ip("route", "del", "blackhole", f"{address}/32", check=False)
            self._blackholed.remove(address)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for address in list(self._blackholed):
            _ip("route", "del", "blackhole", f"{address}/32", check=False)
        for ns, link in zip(self.namespaces, self.links):
            _ip("link", "del", link, check=False)  # removes its peer in the namespace too
            _ip("netns", "del", ns, check=False)
        _ip("link", "del", self.bridge, check=False)

    def leftovers(self) -> List[str]:
        """Namespaces and links of this lab that still exist (for the teardown check)."""
        names = set(_ip("netns", "list", check=False).stdout.split())
        links = _ip("-o", "link", "show", check=False).stdout
        return [n for n in self.namespaces if n in names] + \
            [x for x in [self.bridge, *self.links] if f" {x}:" in links or f" {x}@" in links]
