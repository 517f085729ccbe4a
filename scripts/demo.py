"""`make demo`: a smartsink on loopback with the shipped policy, trafficgen against it for ten seconds with
the seeds' weighted domain list, the report, then the sink stopped.

Ports are chosen by the sink (port 0) and read from its ready line, so the demo never collides with
anything already listening. The reports (demo-report.json, and the charts in demo-report.html) are written to the
repository's root, or to the folder DEMO_OUT names.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(os.environ.get("DEMO_OUT") or ROOT)
DOMAINS = [
    "gmail.com:67.4",
    "yahoo.com:5.9",
    "hotmail.com:8.8",
    "aol.com:1.5",
    "outlook.com:1.2",
    "icloud.com:1.2",
    "comcast.net:0.5",
    "orange.fr:0.4",
    "gmx.de:0.3",
    "example.com:13.6",
]
READY = re.compile(r"listening on smtp://(\S+):(\d+) .*admin http://([^ ,]+)")


def sink_counts(admin: str) -> str:
    """What the sink itself counted, from its /metrics, to set beside trafficgen's totals."""
    with urllib.request.urlopen(f"http://{admin}/metrics", timeout=10) as response:
        text = response.read().decode()
    counts = {"accepted": 0.0, "tempfailed": 0.0, "permfailed": 0.0}
    for m in re.finditer(r'^smartsink_messages_total\{domain="[^"]*",outcome="(\w+)"\} (\S+)$', text, re.M):
        counts[m.group(1)] += float(m.group(2))
    return "the sink counted " + ", ".join(f"{int(v):,} {k}" for k, v in counts.items())


def main() -> int:
    sink = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "smartsink",
            "--listen",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--seed",
            "2026",
            "--log-level",
            "warning",
            "--policy",
            str(ROOT / "policy" / "responses.toml"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    ready = threading.Event()
    address: list[str] = []

    def watch() -> None:
        assert sink.stdout is not None
        for line in sink.stdout:
            m = READY.search(line)
            if m and not ready.is_set():
                address.extend(m.groups())
                ready.set()
            elif ready.is_set():
                sys.stderr.write(f"[smartsink] {line}")
        ready.set()

    threading.Thread(target=watch, daemon=True).start()
    try:
        if not ready.wait(30) or not address:
            print("demo: smartsink did not start", file=sys.stderr)
            return 1
        host, port, admin = address
        print(f"demo: smartsink is listening on {host}:{port} (admin http://{admin}); sending for 10 seconds\n")
        command = [
            sys.executable,
            "-m",
            "trafficgen",
            "--target",
            f"{host}:{port}",
            "--duration",
            "10",
            "--concurrency",
            "200",
            "--seed",
            "2026",
            "--json",
            str(OUT / "demo-report.json"),
            "--html",
            str(OUT / "demo-report.html"),
        ]
        for domain in DOMAINS:
            command += ["--domain", domain]
        status = subprocess.call(command)
        print(
            f"\ndemo: the JSON report is in {OUT / 'demo-report.json'}, its charts in {OUT / 'demo-report.html'} "
            f"(open it in a browser); {sink_counts(admin)}"
        )
        return status
    finally:
        sink.send_signal(signal.SIGTERM)
        try:
            sink.wait(10)
        except subprocess.TimeoutExpired:
            sink.kill()


if __name__ == "__main__":
    raise SystemExit(main())
