"""The SMTP wire: reply parsing (no sockets) and the client session."""
