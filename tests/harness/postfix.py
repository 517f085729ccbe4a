"""A private Postfix between trafficgen and smartsink: the real MTA the suite puts in the loop.

Each instance has its own configuration, queue, data directory and log under one temporary directory, listens
on a free loopback port, relays everything to the sink (`relayhost = [127.0.0.1]:PORT`, no DNS), and retries
deferred mail every second or two. It never touches the system's Postfix (port 25, /etc/postfix, /var/spool).

Without a relay port, the instance routes as a production Postfix does: MX lookups in DNS, one queue per
destination, port 25 of each MX host. It then runs inside a network namespace the test made (harness.net), whose
resolv.conf points at the sink's DNS and whose port 25 is redirected to the sink.

Postfix's commands log to syslog unless stderr is a terminal; the instance logs to its own file instead
(`maillog_file`, served by postlogd), which the tests read.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.net import Namespace, free_port

POSTFIX = shutil.which("postfix") or "/usr/sbin/postfix"
POSTQUEUE = shutil.which("postqueue") or "/usr/sbin/postqueue"
START_TIMEOUT = 30.0
PORT_TRIES = 3


def _postfix_usable() -> str | None:
    """Why a private Postfix cannot run here, or None when it can."""
    if not Path(POSTFIX).exists():
        return "Postfix is not installed (apt-get install postfix)"
    if os.geteuid() != 0:
        return "a private Postfix instance needs root (its daemons run as the postfix user)"
    try:
        import pwd

        pwd.getpwnam("postfix")
    except KeyError:
        return "the postfix user does not exist (apt-get install postfix)"
    return None


needs_postfix = pytest.mark.skipif(_postfix_usable() is not None, reason=_postfix_usable() or "")

# Not one service chrooted (the fifth column, n): Debian's own master.cf runs smtp(8) chrooted in the spool, where
# it resolves with a copy of resolv.conf made when Postfix starts. Unchrooted, the smtp client of an instance in a
# network namespace reads /etc/resolv.conf, which `ip netns exec` replaces with /etc/netns/NAME/resolv.conf: the
# sink's DNS, nothing else.
MASTER_CF = """\
{listen} inet n - n - - smtpd
pickup    unix  n - n 60 1 pickup
cleanup   unix  n - n -  0 cleanup
qmgr      unix  n - n 300 1 qmgr
rewrite   unix  - - n -  - trivial-rewrite
bounce    unix  - - n -  0 bounce
defer     unix  - - n -  0 bounce
trace     unix  - - n -  0 bounce
verify    unix  - - n -  1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n -  - proxymap
smtp      unix  - - n -  - smtp
relay     unix  - - n -  - smtp
showq     unix  n - n -  - showq
error     unix  - - n -  - error
retry     unix  - - n -  - error
discard   unix  - - n -  - discard
local     unix  - n n -  - local
anvil     unix  - - n -  1 anvil
scache    unix  - - n -  1 scache
tlsmgr    unix  - - n 1000? 1 tlsmgr
postlog   unix-dgram n - n - 1 postlogd
"""


GREETS = """
import socket, sys
with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2) as s:
    sys.exit(0 if s.recv(512).startswith(b"220") else 1)
"""
# A delivery as smtp(8) logs it: to=<user@domain>, relay=host[address]:port, ... status=sent
DELIVERY = re.compile(
    r" to=<[^@>]*@(?P<domain>[^>]+)>, relay=(?P<host>[^\[, ]+)\[(?P<address>[^\]]+)\]:\d+, .* status=(?P<status>\w+) "
)


class Postfix:
    """One private Postfix instance relaying all mail to a sink on loopback (`relay_port`), or, with None, routing
    by MX like a production one, inside `namespace`."""

    def __init__(self, relay_port: int | None, namespace: Namespace | None = None, **settings: str):
        self.relay_port = relay_port
        self.namespace = namespace
        self.port = free_port()
        # Postfix's daemons run as the postfix user and must reach their directories: not under pytest's
        # private (0700) tmp tree.
        self.root = Path(tempfile.mkdtemp(prefix="tg-postfix-"))
        self.root.chmod(0o755)
        self.etc = self.root / "etc"
        self.queue = self.root / "queue"
        self.data = self.root / "data"
        self.maillog = self.root / "maillog"
        self.settings = settings

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _main_cf(self) -> str:
        settings = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.queue),
            "data_directory": str(self.data),
            "config_directory": str(self.etc),
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "myhostname": "mta.test",
            "mydomain": "mta.test",
            "myorigin": "mta.test",
            "mydestination": "",
            "relay_domains": "",
            "local_recipient_maps": "",
            "alias_maps": "",
            "alias_database": "",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "smtpd_relay_restrictions": "permit_mynetworks, reject",
            "relayhost": f"[127.0.0.1]:{self.relay_port}",
            "smtp_host_lookup": "native",
            "smtp_dns_support_level": "disabled",
            **self._routing(),
            "smtp_tls_security_level": "none",
            "smtpd_tls_security_level": "none",
            "smtputf8_enable": "no",
            "biff": "no",
            "maillog_file": str(self.maillog),
            "maillog_file_prefixes": str(self.root),
            # Retry deferred mail quickly, so a greylisted message is delivered within seconds.
            "queue_run_delay": "1s",
            "minimal_backoff_time": "1s",
            "maximal_backoff_time": "2s",
            **self.settings,
        }
        return "".join(f"{key} = {value}\n" for key, value in settings.items())

    def _routing(self) -> dict[str, str]:
        """Its own routing (no relay port): no relayhost, no transport map, MX and A lookups in DNS."""
        if self.relay_port is not None:
            return {}
        return {"relayhost": "", "smtp_host_lookup": "dns", "smtp_dns_support_level": "enabled"}

    def _postfix(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        # `script` gives the command a terminal, the only way its own errors reach us rather than syslog.
        prefix = self.namespace.prefix if self.namespace is not None else []
        command = " ".join([*prefix, POSTFIX, "-c", str(self.etc), *args])
        done = subprocess.run(
            ["script", "-qec", command, "/dev/null"], capture_output=True, text=True, timeout=START_TIMEOUT
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"postfix {' '.join(args)} failed: {done.stdout.strip()} {self.log()[-2000:]}")
        return done

    def start(self) -> Postfix:
        for directory in (self.etc, self.queue, self.data):
            directory.mkdir(mode=0o755)
        shutil.chown(self.data, "postfix")
        (self.etc / "main.cf").write_text(self._main_cf())
        for attempt in range(PORT_TRIES):
            (self.etc / "master.cf").write_text(MASTER_CF.format(listen=self.target))
            logged = len(self.log())
            done = self._postfix("start", check=False)
            if done.returncode == 0:
                break
            if attempt == PORT_TRIES - 1 or "Address already in use" not in self.log()[logged:]:
                raise RuntimeError(f"postfix start failed: {done.stdout.strip()} {self.log()[-2000:]}")
            # Another test bound the port between free_port() and Postfix's bind (the suite shares the machine).
            self.port = free_port()
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._greets():
                return self
            time.sleep(0.05)  # polling for the listener, not standing in for it: the loop checks for the 220
        raise RuntimeError(f"Postfix did not answer on {self.target}: {self.log()[-2000:]}")

    def _greets(self) -> bool:
        """Its smtpd answers 220 (asked from inside its namespace, when it has one)."""
        if self.namespace is not None:
            asked = self.namespace.run(sys.executable, "-c", GREETS, str(self.port), timeout=START_TIMEOUT)
            return asked.returncode == 0
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
            return s.recv(512).startswith(b"220 mta.test ")  # this instance, not whoever else took the port
        return False

    def stop(self) -> None:
        self._postfix("stop", check=False)
        shutil.rmtree(self.root, ignore_errors=True)

    def log(self) -> str:
        try:
            return self.maillog.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def queue_listing(self) -> str:
        """`postqueue -p` of this instance: each queued message with the reason it is deferred."""
        done = subprocess.run(
            [POSTQUEUE, "-c", str(self.etc), "-p"], capture_output=True, text=True, timeout=START_TIMEOUT
        )
        return done.stdout

    @property
    def queue_command(self) -> str:
        """The command that prints this instance's queue as JSON lines (`postqueue -j`): trafficgen --mta-queue."""
        return f"{POSTQUEUE} -c {self.etc} -j"

    def queued_recipients(self) -> list[str]:
        """The address of every recipient in this instance's queue now (`postqueue -j`), in any queue."""
        done = subprocess.run(
            [POSTQUEUE, "-c", str(self.etc), "-j"], capture_output=True, text=True, timeout=START_TIMEOUT
        )
        return [r["address"] for line in done.stdout.splitlines() for r in json.loads(line)["recipients"]]

    def hold_deferred(self, timeout: float) -> None:
        """From now on deferred mail waits an hour for its retry, so the queue holds still while a test reads it
        (retried every 1-2 s, a message spends moments in the active queue without its deferral's reason); returns
        once every queued message is deferred with its reason (within `timeout`: an attempt under way ends first)."""
        self.settings = {
            **self.settings,
            "queue_run_delay": "3600s",
            "minimal_backoff_time": "3600s",
            "maximal_backoff_time": "3600s",
        }
        (self.etc / "main.cf").write_text(self._main_cf())
        self._postfix("reload")
        self.wait_for(self.deferred_with_reasons, timeout=timeout, what="the queue to hold still")

    def deferred_with_reasons(self) -> bool:
        """Every message in the queue is in the deferred queue, and each of its recipients has its reason."""
        done = subprocess.run(
            [POSTQUEUE, "-c", str(self.etc), "-j"], capture_output=True, text=True, timeout=START_TIMEOUT
        )
        messages = [json.loads(line) for line in done.stdout.splitlines()]
        return all(
            m["queue_name"] == "deferred" and all(r.get("delay_reason") for r in m["recipients"]) for m in messages
        )

    def queued(self) -> int:
        """Messages in the queue now (0 when empty)."""
        listing = self.queue_listing()
        if "Mail queue is empty" in listing:
            return 0
        m = re.search(r"in (\d+) Requests?\.", listing)
        return int(m.group(1)) if m else 0

    def deliveries(self, status: str) -> list[str]:
        """Log lines of deliveries with status=sent|deferred|bounced."""
        return [line for line in self.log().splitlines() if f" status={status} " in line]

    def relays(self, status: str = "sent") -> list[tuple[str, str, str]]:
        """(recipient domain, relay host, relay address) of each delivery with this status, as smtp(8) logged it."""
        found = (DELIVERY.search(line) for line in self.deliveries(status))
        return [(m["domain"], m["host"], m["address"]) for m in found if m]

    def wait_for(self, condition: object, timeout: float = 60.0, what: str = "the condition") -> None:
        """Poll `condition()` (a callable) every 100 ms until it holds."""
        assert callable(condition)
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"Postfix: {what} did not happen in {timeout:g} s; queue:\n{self.queue_listing()}")
            time.sleep(0.1)


@contextlib.contextmanager
def running_postfix(relay_port: int | None, namespace: Namespace | None = None, **settings: str) -> Iterator[Postfix]:
    instance = Postfix(relay_port, namespace, **settings)
    try:
        yield instance.start()
    finally:
        instance.stop()
