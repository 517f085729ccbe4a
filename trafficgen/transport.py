"""The faces the run loop sees: a Transport (an SMTP session or the HTTP injection API) and the Connector that
opens them.

The runner is given a Connector, holds the Transports it opens, and never asks which kind they are.
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

    @property
    def phases(self) -> tuple[float, float, float]:
        """How long its opening took, in seconds: connecting, the greeting, EHLO (with STARTTLS and AUTH)."""
        ...

    async def send(self, message: Message, following: Message | None = None) -> Outcome:
        """One message's transaction, never raising for the target's answers. `following`, when given, is the
        next message of this transport: it may be pipelined behind this one (its envelope then leaves with this
        message's content), and must be the next message sent."""
        ...

    async def quit(self) -> None:
        """Close politely and briefly."""
        ...


class Unopened(Exception):
    """A transport that could not be opened. `text`: the report's connection error; `outcome`: what the message
    that would have gone over it gets; `stops`: why the run ends without --keep-going, or None when the target
    answered (a refusal: the target is there, and refusing is what it was asked to show)."""

    def __init__(self, text: str, outcome: Outcome, stops: str | None):
        super().__init__(text)
        self.text = text
        self.outcome = outcome
        self.stops = stops


class Connector(Protocol):
    """Opens the run's transports (trafficgen.connector: SMTP sessions or the inject API's; a test's own)."""

    async def check(self) -> str | None:
        """Asked once before any connection: what makes every connection fail (a target name that does not
        resolve), in one line, or None."""
        ...

    async def open(self, source: int, progress: list[str]) -> Transport:
        """A new transport from --source-address `source` (an index), or Unopened. `progress` gets what the
        opening waits for as it goes ("the greeting", then "EHLO"...): what the run says was never answered when
        it gives up on it."""
        ...

    def sweep(self, now: float) -> None:
        """Called about once a second: fail any reply wait longer than --timeout (no timer per read)."""
        ...

    async def close(self) -> None:
        """The run is over: release what the transports share (a request pool)."""
        ...
