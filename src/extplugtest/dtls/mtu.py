"""The MTU of the interface a DTLS socket is bound to, as Californium detects it (inventory
§6.3 "MTU"): the interface of the bound address; for a wildcard bind the smallest MTU of the
interfaces that are up. Linux only (ioctl, /proc); None where it cannot be found, and the
caller uses its defaults (IPv4 576, IPv6 1280).
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import socket
import struct

SIOCGIFFLAGS = 0x8913
SIOCGIFADDR = 0x8915
SIOCGIFMTU = 0x8921
IFF_UP = 0x1
IFF_LOOPBACK = 0x8
IF_INET6 = "/proc/net/if_inet6"
MAX_INTERFACES = 4096  # bounds the loops over the interfaces


def _ifreq(sock: socket.socket, request: int, name: str) -> bytes:
    """struct ifreq: the interface name (16 bytes), then the union the request fills."""
    return fcntl.ioctl(sock.fileno(), request, struct.pack("16s24x", name.encode()[:15]))


def _interfaces() -> list[tuple[str, int, int, str | None]]:
    """(name, flags, MTU, IPv4 address or None) of every interface."""
    found = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _, name in socket.if_nameindex()[:MAX_INTERFACES]:
            try:
                flags = struct.unpack_from("H", _ifreq(sock, SIOCGIFFLAGS, name), 16)[0]
                mtu = struct.unpack_from("i", _ifreq(sock, SIOCGIFMTU, name), 16)[0]
            except OSError:
                continue
            ipv4 = None
            with contextlib.suppress(OSError):  # (no IPv4 address)
                ipv4 = socket.inet_ntoa(_ifreq(sock, SIOCGIFADDR, name)[20:24])
            found.append((name, flags, mtu, ipv4))
    return found


def _ipv6_interfaces(address: ipaddress.IPv6Address) -> set[str]:
    """Names of the interfaces that hold *address* (from /proc/net/if_inet6)."""
    names = set()
    with contextlib.suppress(OSError), open(IF_INET6) as lines:
        for _, line in zip(range(MAX_INTERFACES), lines, strict=False):
            fields = line.split()
            if len(fields) == 6 and int(fields[0], 16) == int(address):
                names.add(fields[5])
    return names


def detect_mtu(host: str) -> int | None:
    """The MTU of the interface of the bound address *host*; for a wildcard address the
    smallest of the interfaces that are up; None if unknown."""
    try:
        address = ipaddress.ip_address(host.split("%")[0])
        interfaces = _interfaces()
    except (ValueError, OSError):
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_unspecified:
        mtus = [mtu for _, flags, mtu, _ in interfaces if flags & IFF_UP and mtu > 0]
    elif address.is_loopback:  # (all of 127/8 is the loopback interface's)
        mtus = [mtu for _, flags, mtu, _ in interfaces if flags & IFF_LOOPBACK and mtu > 0]
    elif isinstance(address, ipaddress.IPv4Address):
        mtus = [mtu for _, _, mtu, ipv4 in interfaces if ipv4 == str(address) and mtu > 0]
    else:
        names = _ipv6_interfaces(address)
        mtus = [mtu for name, _, mtu, _ in interfaces if name in names and mtu > 0]
    return min(mtus) if mtus else None
