"""The SSRF guard of the real-HTTP crawler: which addresses a model-chosen URL may reach.

A policy under RL (or a prompt-injected page) chooses the URLs we fetch, so a fetch must never reach the
machine itself, the private network, or a cloud metadata service. Rules:
  * only `http` and `https` URLs;
  * the host name is resolved here, and the fetch is refused if ANY resolved address is loopback, private,
    link-local (this covers 169.254.169.254), multicast, unspecified, reserved, shared (100.64/10), not
    globally routable, or a known cloud-metadata address (IPv4-mapped/6to4/Teredo IPv6 forms are unwrapped);
  * the connection then goes to the vetted address itself, so a second DNS answer cannot swap in another
    address between the check and the connect (DNS rebinding);
  * redirects are followed by the crawler one hop at a time, and every hop comes back through `vet`.
An allow-list lets tests and private deployments reach chosen endpoints: entries are "IP:PORT" (exactly that
address and port), "IP" or a CIDR network such as "10.1.0.0/16" (any port), or "HOST:PORT" / "HOST" (the host
name as written in the URL).
"""
from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import socket
import urllib.parse

METADATA_ADDRESSES = frozenset({
    ipaddress.ip_address("169.254.169.254"),  # AWS, GCP, Azure, OpenStack, DigitalOcean
    ipaddress.ip_address("169.254.170.2"),  # AWS ECS task metadata
    ipaddress.ip_address("100.100.100.200"),  # Alibaba Cloud
    ipaddress.ip_address("fd00:ec2::254"),  # AWS IPv6 metadata
})
_SHARED_SPACE = ipaddress.ip_network("100.64.0.0/10")


class BlockedURL(Exception):
    """The URL may not be fetched; the message says why (shown to the model as an error observation)."""


@dataclasses.dataclass(frozen=True)
class Target:
    """A vetted fetch target: connect to `ip`:`port`, but speak to `host` (Host header, TLS SNI)."""

    url: str
    scheme: str
    host: str
    port: int
    ip: str
    path: str  # path + query, as sent in the request line


def _unwrap(ip: ipaddress.IPv4Address | ipaddress.IPv6Address):
    """The IPv4 address hidden inside an IPv6 one (mapped, 6to4, Teredo), else the address itself."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip.sixtofour is not None:
            return ip.sixtofour
        if ip.teredo is not None:
            return ip.teredo[1]
    return ip


def blocked_reason(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why this address may not be fetched, or None if it is a public address."""
    for candidate in dict.fromkeys((_unwrap(ip), ip)):  # the embedded IPv4 address names the real target
        if candidate in METADATA_ADDRESSES:
            return "a cloud metadata address"
        checks = (("loopback", candidate.is_loopback), ("unspecified", candidate.is_unspecified),
                  ("link-local", candidate.is_link_local), ("multicast", candidate.is_multicast),
                  ("private", candidate.is_private), ("reserved", candidate.is_reserved))
        for name, hit in checks:
            if hit:
                return f"a {name} address"
        if isinstance(candidate, ipaddress.IPv4Address) and candidate in _SHARED_SPACE:
            return "a shared (carrier-grade NAT) address"
        if not candidate.is_global:
            return "not a globally routable address"
    return None


class Guard:
    """Vets URLs against the rules above. `allow`: allow-list entries (see the module docstring)."""

    def __init__(self, allow: tuple[str, ...] | list[str] = ()):
        self._networks: list = []
        self._ip_ports: set[tuple[str, int]] = set()
        self._host_ports: set[tuple[str, int | None]] = set()
        for entry in allow:
            self._add(entry.strip())

    def _add(self, entry: str) -> None:
        try:
            self._networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            return
        except ValueError:
            pass
        parsed = urllib.parse.urlsplit("//" + entry)
        try:
            port = parsed.port
        except ValueError:
            raise ValueError(f"SSRF allow-list entry {entry!r}: bad port; "
                             "write IP:PORT, IP, CIDR or HOST:PORT") from None
        host = (parsed.hostname or "").lower()
        if not host:
            raise ValueError(f"SSRF allow-list entry {entry!r}: no host; write IP:PORT, IP, CIDR or HOST:PORT")
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            self._host_ports.add((host, port))
            return
        if port is None:
            self._networks.append(ipaddress.ip_network(ip))
        else:
            self._ip_ports.add((str(ip), port))

    def _allowed(self, host: str, ip, port: int) -> bool:
        if (host, port) in self._host_ports or (host, None) in self._host_ports:
            return True
        if (str(ip), port) in self._ip_ports:
            return True
        return any(ip.version == net.version and ip in net for net in self._networks)

    async def vet(self, url: str) -> Target:
        """Resolve and check `url`; raises BlockedURL with the reason. Returns the address to connect to."""
        try:
            parsed = urllib.parse.urlsplit(url.strip())
            port = parsed.port
        except ValueError:
            raise BlockedURL(f"malformed URL {url!r}") from None
        scheme = parsed.scheme.lower()
        if scheme not in ("http", "https"):
            raise BlockedURL(f"scheme {scheme or '(none)'!r} is not allowed; only http and https URLs can be crawled")
        host = (parsed.hostname or "").lower()
        if not host:
            raise BlockedURL(f"URL {url!r} has no host")
        port = port or (443 if scheme == "https" else 80)
        try:
            literal = ipaddress.ip_address(host)
            addresses = [literal]
        except ValueError:
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except (socket.gaierror, UnicodeError) as error:
                raise BlockedURL(f"cannot resolve host {host!r}: {error}") from None
            addresses = []
            for info in infos:
                ip = ipaddress.ip_address(info[4][0].split("%")[0])
                if ip not in addresses:
                    addresses.append(ip)
            if not addresses:
                raise BlockedURL(f"host {host!r} has no address") from None
        # Every address must pass: the HTTP stack could otherwise pick the bad one.
        for ip in addresses:
            reason = blocked_reason(ip)
            if reason is not None and not self._allowed(host, ip, port):
                raise BlockedURL(f"refused to fetch {url}: host {host!r} resolves to {ip}, {reason}")
        path = parsed.path or "/"
        if parsed.query:
            path += "?" + parsed.query
        # Prefer IPv4 when both families pass: IPv6 routes are often missing on servers.
        chosen = sorted(addresses, key=lambda a: a.version)[0]
        return Target(url=url.strip(), scheme=scheme, host=host, port=port, ip=str(chosen), path=path)
