"""The sink's DNS (--dns): the MX topology of the providers, served under the test suffixes.

- table:     which MX hosts serve which mail domain (the shipped smartsink/data/mx.toml, a policy's `mx` over it)
- addresses: a stable address for each MX host name in --dns-network, and back from an address to its host
- zone:      the answer to one query, a pure function of the query and the zone
- ratelimit: queries a second per client address (token buckets with an injected clock)
- server:    the UDP and TCP listeners: hostile input counted and dropped, answers from the zone
"""
