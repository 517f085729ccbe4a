"""The sink's own replies: used when a policy gives no list for a case, and for the limits it enforces.

Each carries an enhanced status code (RFC 3463) whose class matches the reply code.
"""

from smartsink.policy.model import Reply

BOUNCES = (Reply(550, "5.1.1 The email account that you tried to reach does not exist"),)
DEFERS = (Reply(451, "4.3.0 Temporary local problem, please try again later"),)
THROTTLES = (Reply(451, "4.7.28 Rate limited: too many messages for this domain, please try again later"),)

UNKNOWNS = (Reply(550, "5.1.1 <{recipient}>: Recipient address rejected: User unknown"),)
BLOCKS = (Reply(550, "5.7.1 Messages from {client_ip} are refused: the sending address is on the block list"),)

GREYLISTED = Reply(451, "4.7.1 Greylisted: the recipient's server asks you to try again later")
TOO_MANY_CONNECTIONS = Reply(421, "4.7.0 Too many connections, please try again later")
TOO_MANY_TRANSACTIONS = Reply(421, "4.7.0 Too many concurrent transactions for this domain, closing connection")
TOO_MANY_MESSAGES = Reply(421, "4.7.0 Maximum number of messages per connection reached, closing connection")
SIZE_EXCEEDED = Reply(552, "5.3.4 Message size exceeds fixed maximum message size")
TLS_REQUIRED = Reply(530, "5.7.0 Must issue a STARTTLS command first")


def missing_header(name: str) -> Reply:
    """What a provider answers a message without a header it requires (Gmail's bulk-sender rules)."""
    return Reply(550, f"5.7.1 Messages missing a valid {name} header are not accepted")
