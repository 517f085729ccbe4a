"""The sink's SMTP engines: fast (its own, the default) and reference (aiosmtpd, `--engine aiosmtpd`).

Both parse the wire and ask the connection's Responder (smartsink.responder) what to answer; tests drive the
same conversations through both and compare the replies.
"""
