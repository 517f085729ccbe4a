"""The face every way of submitting mail shows the run loop: an SMTP session or the HTTP injection API.

The runner holds Transports and never asks which kind it has.
"""

from __future__ import annotations

from typing import Protocol

from trafficgen.messages import Message
from trafficgen.outcome import Outcome


class Transport(Protocol):
    """One open way to the target that messages can be sent over."""

    @property
    def usable(self) -> bool:
        """False once the far end closed it or it failed: the next message needs a new one."""
        ...

    @property
    def holds_connection(self) -> bool:
        """True when it is a connection of its own (counted in the report's connections), False for a request
        pool shared by the process."""
        ...

    async def send(self, message: Message, following: Message | None = None) -> Outcome:
        """One message's transaction, never raising for the target's answers. `following`, when given, is the
        next message of this transport: it may be pipelined behind this one (its envelope then leaves with this
        message's content), and must be the next message sent."""
        ...

    async def quit(self) -> None:
        """Close politely and briefly."""
        ...
