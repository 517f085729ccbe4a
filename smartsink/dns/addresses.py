"""Addresses for MX host names in --dns-network (and --dns-network6), and from an address back to its host.

Each name hashes (SHA-256 of the lower-case name) to a slot among the network's usable addresses. The hosts the MX
table knows take their slots first, in the order of their hashes, each moving on to the next free slot when its own
is taken: distinct while the network has room, and the same in every worker and after every restart (nothing here
depends on what was asked before). A name the table does not know (the MX of an unlisted domain, named after it)
hashes into the slots the known hosts left, so it never takes a known host's address; two such names may share one.
Pure: no sockets, no clocks.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _hash(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.lower().encode()).digest()[:16], "big")


def usable(network: Network) -> tuple[int, int]:
    """(first, count): the addresses hosts may have, as ipaddress's hosts() counts them (not an IPv4 network's
    network and broadcast addresses, nor an IPv6 network's subnet-router anycast)."""
    first, count = int(network.network_address), network.num_addresses
    if isinstance(network, ipaddress.IPv4Network) and network.prefixlen <= 30:
        return first + 1, count - 2
    if isinstance(network, ipaddress.IPv6Network) and network.prefixlen <= 126:
        return first + 1, count - 1
    return first, count


@dataclass(frozen=True)
class Addressing:
    """The addresses of MX hosts in one network."""

    network: Network
    first: int
    count: int
    slots: Mapping[str, int]  # known host -> its slot
    owners: Mapping[int, str]  # slot -> the known host there

    @classmethod
    def of(cls, network: Network, hosts: Iterable[str]) -> Addressing:
        first, count = usable(network)
        slots: dict[str, int] = {}
        owners: dict[int, str] = {}
        for name in sorted({h.lower() for h in hosts}, key=lambda n: (_hash(n), n)):
            slot = _hash(name) % count
            if len(owners) < count:
                while slot in owners:
                    slot = (slot + 1) % count
                owners[slot] = name
            slots[name] = slot
        return cls(network, first, count, slots, owners)

    def _slot(self, name: str) -> int:
        known = self.slots.get(name)
        if known is not None:
            return known
        slot = _hash(name) % self.count
        if len(self.owners) >= self.count:
            return slot  # the network is full: share
        while slot in self.owners:
            slot = (slot + 1) % self.count
        return slot

    def address(self, host: str) -> Address:
        """The address of an MX host name (lower case, without the suffix)."""
        return ipaddress.ip_address(self.first + self._slot(host.lower()))

    def host_at(self, address: str) -> str | None:
        """The known host whose address this is; None for any other address (in the network or not)."""
        slot = self.slot_of(address)
        return None if slot is None else self.owners.get(slot)

    def slot_of(self, address: str) -> int | None:
        """The slot of an address of this network, None when it is not one."""
        try:
            parsed = ipaddress.ip_address(address)
        except ValueError:
            return None
        if parsed.version != self.network.version:
            return None
        slot = int(parsed) - self.first
        return slot if 0 <= slot < self.count else None
