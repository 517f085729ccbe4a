"""smartsink: an SMTP sink that answers like real mailbox providers, from a KumoMTA-style responses.toml."""

__version__ = "0.1.0"
