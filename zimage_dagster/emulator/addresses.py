"""Is a callback host internal? The emulator's own check, independent of the client's.

Names are not resolved (the emulator never touches the network for this); numeric hosts are parsed
the way `inet_aton` does, so `2130706433`, `0x7f000001`, `0177.0.0.1` and `127.1` are all loopback.

>>> classify_host("127.0.0.1"), classify_host("0x7f.1"), classify_host("[::ffff:10.0.0.1]")
('loopback', 'loopback', 'internal')
>>> classify_host("example.com"), classify_host("93.184.216.34"), classify_host("LOCALHOST.")
('public', 'public', 'loopback')
>>> classify_host("100.64.0.1"), classify_host("169.254.169.254"), classify_host("0.0.0.0")
('internal', 'internal', 'internal')
"""

from __future__ import annotations

import ipaddress
import re
from typing import Literal

HostKind = Literal["loopback", "internal", "public", "invalid"]

LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})
INTERNAL_SUFFIXES = (".localhost", ".local", ".internal", ".localdomain", ".home.arpa", ".lan")
INTERNAL_NAMES = frozenset({"local", "internal", "broadcasthost"})
_NUMERIC_LAST_LABEL = re.compile(r"^(?:[0-9]+|0x[0-9a-f]*)$")
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_6TO4 = ipaddress.IPv6Network("2002::/16")


def _parse_ipv4_number(part: str) -> int | None:
    """One inet_aton component: decimal, 0x hex or 0-leading octal."""
    try:
        if part.startswith(("0x", "0X")):
            return int(part[2:], 16) if part[2:] else 0
        if len(part) > 1 and part.startswith("0"):
            return int(part[1:], 8)
        return int(part, 10)
    except ValueError:
        return None


def parse_ipv4_loose(host: str) -> ipaddress.IPv4Address | None:
    """Parse every IPv4 form `inet_aton` accepts (1 to 4 parts, each decimal, hex or octal).

    >>> str(parse_ipv4_loose("2130706433")), str(parse_ipv4_loose("10.1")), parse_ipv4_loose("1.2.3.4.5")
    ('127.0.0.1', '10.0.0.1', None)
    """
    parts = host.split(".")
    if not 1 <= len(parts) <= 4 or any(p == "" for p in parts):
        return None
    numbers = [_parse_ipv4_number(p) for p in parts]
    if any(n is None or n < 0 for n in numbers):
        return None
    values = [n for n in numbers if n is not None]
    *head, last = values
    if any(n > 255 for n in head) or last >= 256 ** (4 - len(head)):
        return None
    value = 0
    for n in head:
        value = value * 256 + n
    value = value * 256 ** (4 - len(head)) + last
    return ipaddress.IPv4Address(value)


def _classify_ip(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> HostKind:
    if isinstance(ip, ipaddress.IPv6Address):
        embedded: ipaddress.IPv4Address | None = ip.ipv4_mapped
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is None and ip in _6TO4:
            embedded = ip.sixtofour
        if embedded is None and int(ip) >> 32 == 0 and int(ip) > 1:  # IPv4-compatible ::a.b.c.d
            embedded = ipaddress.IPv4Address(int(ip))
        if embedded is not None:
            kind = _classify_ip(embedded)
            return "internal" if kind == "loopback" else kind
    if ip.is_loopback:
        return "loopback"
    if ip.is_multicast or not ip.is_global:
        return "internal"
    return "public"


def classify_host(host: str) -> HostKind:
    """`loopback`, `internal` (private, link-local, CGNAT, unspecified, reserved...), `public` or `invalid`."""
    name = host.strip().lower()
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    if "%" in name:  # IPv6 zone id: link-scoped by definition
        return "internal"
    name = name.rstrip(".") if name not in (".", "") else name
    if not name:
        return "invalid"
    if ":" in name:
        try:
            return _classify_ip(ipaddress.IPv6Address(name))
        except ValueError:
            return "invalid"
    if _NUMERIC_LAST_LABEL.match(name.rsplit(".", 1)[-1]):
        # Like a browser: a host whose last label is a number is an IPv4 address or nothing.
        ip4 = parse_ipv4_loose(name)
        return "invalid" if ip4 is None else _classify_ip(ip4)
    if name in LOOPBACK_NAMES or name.endswith(".localhost"):
        return "loopback"
    if name in INTERNAL_NAMES or name.endswith(INTERNAL_SUFFIXES) or "." not in name:
        return "internal"  # single-label names resolve on the local network
    if not all(_LABEL.match(label) for label in name.split(".")):
        return "invalid"
    return "public"
