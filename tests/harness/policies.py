"""Policies the tests share: texts several test files use, and the policy files of the repository.

A text here is what a test passes as `running_sink(policy=TEXT, tmp=...)`, or parses with
smartsink.policy.parse_policy for the responder in process; a test that needs its own keeps it beside itself.
"""

from __future__ import annotations

import pytest

from harness import ROOT

SHARED = ROOT.parent / "shared"
KUMO_POLICY = SHARED / "reference" / "kumomta-responses.toml"  # KumoMTA's own responses.toml, unchanged
SHIPPED_POLICY = ROOT / "policy" / "responses.toml"

# Every message accepted.
ACCEPT_ALL = "[default]\nbounce = 0\ndefer = 0\n"

# Providers with replies of their own: gmail.com and yahoo.com answer forced users (tempfail@, permfail@) from
# their lists, bounceall.test bounces everyone else too; other domains accept, with the sink's fallback replies.
PROVIDERS = """
[default]
bounce = 0
defer = 0

[domain."bounceall.test"]
bounce = 100

[[bounce."gmail.com"]]
code = 550
msg = "5.1.1 gmail: no such user"

[[defer."gmail.com"]]
code = 452
msg = "4.2.2 gmail: over quota"

[[bounce."yahoo.com"]]
code = 554
msg = "5.7.9 yahoo: policy"

[[defer."yahoo.com"]]
code = 451
msg = "4.7.0 yahoo: deferred"
"""

# One transaction in ten cut without a reply, at RCPT, DATA or the end of DATA.
DISCONNECT_10 = ACCEPT_ALL + "disconnect = 10\n"

# Five messages a connection, then 421 and a close.
FIVE_PER_CONNECTION = ACCEPT_ALL + "max_messages_per_connection = 5\n"


def greylisting(delay: str) -> str:
    """greylist.test greylists every new (client, sender, recipient) for `delay`; everything else is accepted."""
    return f'{ACCEPT_ALL}\n[domain."greylist.test"]\ngreylist = "{delay}"\n'


def needs_kumo_policy() -> pytest.MarkDecorator:
    return pytest.mark.skipif(
        not KUMO_POLICY.is_file(), reason=f"KumoMTA's policy is not at {KUMO_POLICY} (../shared is absent)"
    )
