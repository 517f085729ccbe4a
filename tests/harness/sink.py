"""Real sinks, started as users start them (the CLI, in a subprocess), and waiting without sleeping.

`running_sink()` starts `smartsink --listen 127.0.0.1:0 --http 127.0.0.1:0 ...` and waits for its ready line
(never a sleep); the sink picks free ports and the line says which. `run_smartsink()` runs the command to its end
(--check, bad input). Neither passes the test run's own TRAFFICGEN_* or SMARTSINK_* variables on.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from harness import ROOT, child_env

READY = re.compile(r"listening on smtp://(?P<host>[^ ]+):(?P<port>\d+) .*?(?:admin http://(?P<http>[^ ,]+)|admin off)")
DNS = re.compile(r", dns (?P<host>[^ ,]+):(?P<port>\d+) ")
# GET a URL and print its status and body as JSON: for a sink inside a network namespace, run there.
FETCH = """
import json, sys, urllib.error, urllib.request
try:
    request = urllib.request.Request(sys.argv[1], method=sys.argv[3])
    with urllib.request.urlopen(request, timeout=float(sys.argv[2])) as r:
        print(json.dumps([r.status, r.read().decode()]))
except urllib.error.HTTPError as e:
    print(json.dumps([e.code, e.read().decode()]))
"""
START_TIMEOUT = 30.0
CLI_TIMEOUT = 30.0

T = TypeVar("T")


@dataclass
class SinkProcess:
    """A smartsink started by the tests; its stderr is collected while it runs."""

    process: subprocess.Popen[str]
    host: str = ""
    port: int = 0
    http: str | None = None
    dns: tuple[str, int] | None = None  # where --dns serves, when it does
    prefix: list[str] = field(default_factory=list)  # what the sink runs under (`ip netns exec NAME`)
    lines: list[str] = field(default_factory=list)
    _reader: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    @property
    def target(self) -> str:
        return f"{self.host}:{self.port}"

    def log(self) -> str:
        return "".join(self.lines)

    def get(self, path: str, timeout: float = 10.0) -> tuple[int, str]:
        return self.request("GET", path, timeout)

    def request(self, method: str, path: str, timeout: float = 10.0) -> tuple[int, str]:
        """(status, body) of `METHOD path` on the admin listener; an HTTP error status is returned, not raised."""
        assert self.http, "this sink has no admin listener"
        if self.prefix:  # the sink's admin listener is in its namespace: ask from there
            done = subprocess.run(
                [*self.prefix, sys.executable, "-c", FETCH, f"http://{self.http}{path}", str(timeout), method],
                capture_output=True,
                text=True,
                timeout=timeout + 30,
            )
            assert done.returncode == 0, done.stderr
            status, body = json.loads(done.stdout)
            return int(status), str(body)
        request = urllib.request.Request(f"http://{self.http}{path}", method=method)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def state(self, query: str = "") -> dict[str, Any]:
        """GET /state, parsed."""
        status, body = self.get(f"/state{query}")
        assert status == 200, body
        return json.loads(body)

    def health(self) -> dict[str, Any]:
        """/health's JSON: 200 while the sink serves, 503 (with the same JSON) while it does not."""
        status, body = self.get("/health")
        assert status in (200, 503), body
        return json.loads(body)

    def metrics(self) -> dict[str, float]:
        """Samples of /metrics as {'name{labels}': value} (labels as printed)."""
        status, body = self.get("/metrics")
        assert status == 200
        samples = {}
        for line in body.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                samples[name] = float(value)
        return samples

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        if self._reader is not None:
            self._reader.join(5)
        if self.process.stdout is not None:
            self.process.stdout.close()
        return self.process.returncode


def write_policy(directory: Path, text: str, name: str = "responses.toml") -> Path:
    path = directory / name
    path.write_text(text)
    return path


def start_sink(
    *args: str,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    prefix: list[str] | None = None,
    free_ports: bool = True,
    command: list[str] | None = None,
) -> SinkProcess:
    """Start smartsink with these arguments and wait until it is ready.

    With `free_ports`, --listen and --http on port 0 are added unless given; without, the sink is configured
    by `env` and args alone. `prefix` runs it under another command (`ip netns exec NAME`); `command` starts it
    another way (the container's entry point script)."""
    argv = [*(prefix or []), *(command or [sys.executable, "-m", "smartsink"])]
    if free_ports and not any(a.startswith("--listen") for a in args):
        argv += ["--listen", "127.0.0.1:0"]
    if free_ports and not any(a.startswith("--http") for a in args):
        argv += ["--http", "127.0.0.1:0"]
    argv += list(args)
    process = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=child_env(env), cwd=cwd or ROOT
    )
    sink = SinkProcess(process, prefix=list(prefix or []))
    ready = threading.Event()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            sink.lines.append(line)
            m = READY.search(line)
            if m and not ready.is_set():
                sink.host, sink.port, sink.http = m["host"], int(m["port"]), m["http"]
                dns = DNS.search(line)
                sink.dns = (dns["host"], int(dns["port"])) if dns else None
                ready.set()
        ready.set()

    sink._reader = threading.Thread(target=read, daemon=True)
    sink._reader.start()
    if not ready.wait(START_TIMEOUT) or not sink.port:
        sink.stop(signal.SIGKILL)
        raise RuntimeError(f"smartsink did not start: {argv}\n{sink.log()}")
    return sink


def start_sink_from_env(env: dict[str, str], *args: str, cwd: Path | None = None) -> SinkProcess:
    """Start smartsink configured by environment variables only (no --listen/--http added)."""
    return start_sink(*args, env=env, cwd=cwd, free_ports=False)


@contextlib.contextmanager
def running_sink(
    *args: str, policy: str | Path | None = None, tmp: Path | None = None, **kw: Any
) -> Iterator[SinkProcess]:
    """A sink for the duration of a with-block. `policy` is a file path or the text of a policy."""
    extra: list[str] = []
    if policy is not None:
        if isinstance(policy, str) and "\n" in policy:
            assert tmp is not None, "pass tmp= to write a policy text"
            policy = write_policy(tmp, policy)
        extra = ["--policy", str(policy)]
    sink = start_sink(*extra, *args, **kw)
    try:
        yield sink
    finally:
        sink.stop()


def run_smartsink(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = CLI_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """`smartsink ARGS` to completion, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "smartsink", *args],
        capture_output=True,
        text=True,
        env=child_env(env),
        cwd=cwd or ROOT,
        timeout=timeout,
    )


def one_line(stderr: str) -> str:
    """The only line of stderr; fails with all of it otherwise."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{stderr}"
    assert "Traceback" not in stderr
    return lines[0]


def wait_for(predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.05, what: str = "condition") -> T:
    """Poll `predicate` until it returns a true value (returned) or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)
