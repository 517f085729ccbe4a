"""Where a client meant its connection to go: the original destination netfilter kept when an iptables REDIRECT or
DNAT sent it to the sink (SO_ORIGINAL_DST), else the local address it reached (the sink listening on the MX
addresses itself). The sink maps that address back to the MX host it stands for (smartsink.dns.addresses).
"""

from __future__ import annotations

import socket
import struct
from typing import Any

SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h (and IP6T_SO_ORIGINAL_DST)


def original_destination(sock: socket.socket | None) -> tuple[str, int] | None:
    """Where the client meant to connect, when netfilter rewrote it (an iptables DNAT/REDIRECT)."""
    if sock is None:
        return None
    try:
        if sock.family == socket.AF_INET:
            raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
            port = struct.unpack_from("!H", raw, 2)[0]
            return socket.inet_ntop(socket.AF_INET, raw[4:8]), port
        if sock.family == socket.AF_INET6:
            raw = sock.getsockopt(socket.IPPROTO_IPV6, SO_ORIGINAL_DST, 28)
            port = struct.unpack_from("!H", raw, 2)[0]
            return socket.inet_ntop(socket.AF_INET6, raw[8:24]), port
    except OSError:
        return None  # no conntrack entry: not a NATed connection
    return None


def of_transport(transport: Any) -> tuple[tuple[str, int] | None, bool]:
    """(the address and port the client dialled, True when netfilter rewrote it to reach us)."""
    local = transport.get_extra_info("sockname")
    local = (local[0], local[1]) if isinstance(local, tuple) else None
    original = original_destination(transport.get_extra_info("socket"))
    if original is not None and original != local:
        return original, True
    return local, False
