"""The iptables recipe, really done: inside a network namespace this test creates (loopback only), outgoing
port 25 is DNATed to the sink; smtplib and trafficgen mail 127.0.0.9:25 and reach the sink, which answers with its
policy and counts the connections as redirected (SO_ORIGINAL_DST)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from harness.sink import running_sink
from harness.trafficgen import run_trafficgen

pytestmark = pytest.mark.netns

POLICY = """
[default]
bounce = 0
defer = 0

[[bounce."gmail.com"]]
code = 550
msg = "5.1.1 The email account that you tried to reach does not exist."
"""


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create a network namespace (ip netns add)"
    for tool, package in (("ip", "iproute2"), ("iptables", "iptables")):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install {package})"
    return None


@pytest.fixture
def namespace():
    reason = _why_not()
    if reason:
        pytest.skip(reason)
    name = f"tgtest{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout.split()
        for pid in pids:
            subprocess.run(["kill", "-9", pid], check=False)
        subprocess.run(["ip", "netns", "del", name], check=False)


def inside(namespace: str, *command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", namespace, *command], capture_output=True, text=True, timeout=timeout)


SMTPLIB = """
import json, smtplib
message = b"Subject: x\\r\\n\\r\\nhi\\r\\n"
with smtplib.SMTP("127.0.0.9", 25, timeout=10) as client:
    accepted = client.sendmail("me@example.test", ["user@example.com"], message) == {}
    try:
        client.sendmail("me@example.test", ["permfail@gmail.com"], message)
        refused = None
    except smtplib.SMTPDataError as e:
        refused = [e.smtp_code, e.smtp_error.decode()]
print(json.dumps({"accepted": accepted, "refused": refused}))
"""

METRICS = """
import sys, urllib.request
print(urllib.request.urlopen(f"http://{sys.argv[1]}/metrics", timeout=10).read().decode())
"""


def test_port_25_redirected_to_the_sink(namespace, tmp_path):
    """With the DNAT rule, smtplib and trafficgen mail to 127.0.0.9:25 reach the sink and get its answers."""
    prefix = ["ip", "netns", "exec", namespace]
    with running_sink("--seed", "1", policy=POLICY, tmp=tmp_path, prefix=prefix) as sink:
        rule = ["-p", "tcp", "-d", "127.0.0.9", "--dport", "25", "-j", "DNAT", "--to-destination", sink.target]
        added = inside(namespace, "iptables", "-t", "nat", "-A", "OUTPUT", *rule)
        if added.returncode != 0:
            pytest.skip(f"iptables cannot add a NAT rule here: {added.stderr.strip()}")

        mailed = inside(namespace, sys.executable, "-c", SMTPLIB)
        assert mailed.returncode == 0, mailed.stderr
        answers = json.loads(mailed.stdout)
        assert answers["accepted"] is True
        assert answers["refused"] == [550, "5.1.1 The email account that you tried to reach does not exist."]

        generated = run_trafficgen(
            "--target",
            "127.0.0.9:25",
            "--message-count",
            "40",
            "--concurrency",
            "4",
            "--domain",
            "example.com",
            "--quiet",
            "--json",
            "-",
            argv0=[*prefix, sys.executable, "-m", "trafficgen"],
            timeout=60,
        )
        assert generated.returncode == 0, generated.stderr
        report = json.loads(generated.stdout)
        assert report["totals"]["accepted"] == 40
        assert report["target"] == "127.0.0.9:25"

        metrics = inside(namespace, sys.executable, "-c", METRICS, sink.http).stdout
        lines = metrics.splitlines()
        redirected = float(next(line.split()[-1] for line in lines if line.startswith("smartsink_redirected")))
        assert redirected == 1 + report["connections"]["opened"]
        assert "meant for 127.0.0.9:25" in sink.log()

        # Without the rule, nothing listens on 127.0.0.9:25 in the namespace.
        inside(namespace, "iptables", "-t", "nat", "-D", "OUTPUT", *rule)
        assert inside(namespace, sys.executable, "-c", SMTPLIB).returncode != 0
