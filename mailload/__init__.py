"""What trafficgen and smartsink share: units as people write them, the CLI runtime, and the contract between
the two tools (the trace header, the ledger's encoding, the reconciliation keys), each written once."""
