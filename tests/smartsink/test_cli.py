"""The `smartsink` command: bad input is one line and exit 2; --check; every option from SMARTSINK_*."""

from __future__ import annotations

import re
import smtplib
import socket
import ssl
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from harness import ROOT, child_env
from harness.net import busy_port
from harness.policies import KUMO_POLICY, SHIPPED_POLICY, needs_kumo_policy
from harness.sink import one_line, run_smartsink, running_sink, start_sink_from_env, write_policy
from harness.smtp import BODY, SENDER, close, connected, read_reply, send, transaction
from smartsink import tls
from smartsink.config import SinkConfig, build
from trafficgen.config import DEFAULT_HTTP_TARGET, DEFAULT_TARGET

FREE = ("--listen", "127.0.0.1:0", "--http", "127.0.0.1:0")
BAD_RUN_TIMEOUT = 15.0  # a bad input that starts a sink anyway would hang: fail instead


@dataclass
class Ctx:
    tmp: Path
    busy: int  # a port something already listens on

    def file(self, name: str, text: str) -> str:
        return str(write_policy(self.tmp, text, name))


# case id -> ctx -> (arguments, environment, fragment of the one stderr line)
BAD = {
    "listen-without-port": lambda c: (["--listen", "localhost", "--http", "off"], {}, "--listen"),
    "listen-port-out-of-range": lambda c: (["--listen", "127.0.0.1:99999", "--http", "off"], {}, "--listen"),
    "listen-port-not-a-number": lambda c: (["--listen", "127.0.0.1:smtp", "--http", "off"], {}, "--listen"),
    "http-without-port": lambda c: (["--listen", "127.0.0.1:0", "--http", "nowhere"], {}, "--http"),
    "smtp-port-in-use": lambda c: (
        ["--listen", f"127.0.0.1:{c.busy}", "--http", "off"],
        {},
        f"cannot listen for SMTP on 127.0.0.1:{c.busy}: address already in use",
    ),
    "smtp-port-in-use-workers": lambda c: (
        ["--listen", f"127.0.0.1:{c.busy}", "--http", "off", "--workers", "2"],
        {},
        f"cannot listen for SMTP on 127.0.0.1:{c.busy}: address already in use",
    ),
    "admin-port-in-use": lambda c: (
        ["--listen", "127.0.0.1:0", "--http", f"127.0.0.1:{c.busy}"],
        {},
        f"cannot listen for admin HTTP on 127.0.0.1:{c.busy}: address already in use",
    ),
    "missing-policy": lambda c: (
        [*FREE, "--policy", str(c.tmp / "nope.toml")],
        {},
        f"{c.tmp / 'nope.toml'}: no such file",
    ),
    "policy-is-a-directory": lambda c: ([*FREE, "--policy", str(c.tmp)], {}, f"{c.tmp}: is a directory"),
    "invalid-policy": lambda c: (
        [*FREE, "--policy", c.file("bad.toml", "[default]\nbounce = 120\n")],
        {},
        f"{c.tmp / 'bad.toml'}:2: [default] bounce: must be from 0 to 100",
    ),
    "invalid-policy-toml": lambda c: (
        [*FREE, "--policy", c.file("bad.toml", "[default\nbounce = 1\n")],
        {},
        f"{c.tmp / 'bad.toml'}:1: not valid TOML",
    ),
    "workers-zero": lambda c: ([*FREE, "--workers", "0"], {}, "--workers must be at least 1"),
    "workers-negative": lambda c: ([*FREE, "--workers", "-3"], {}, "--workers"),
    "workers-not-a-number": lambda c: ([*FREE, "--workers", "two"], {}, "--workers"),
    "tls-cert-without-key": lambda c: (
        [*FREE, "--tls-cert", c.file("cert.pem", "x")],
        {},
        "--tls-cert and --tls-key go together",
    ),
    "tls-key-without-cert": lambda c: (
        [*FREE, "--tls-key", c.file("key.pem", "x")],
        {},
        "--tls-cert and --tls-key go together",
    ),
    "tls-cert-missing-file": lambda c: (
        [*FREE, "--tls-cert", str(c.tmp / "no-cert.pem"), "--tls-key", c.file("key.pem", "x")],
        {},
        "no such file",
    ),
    "tls-cert-not-a-certificate": lambda c: (
        [*FREE, "--tls-cert", c.file("cert.pem", "not pem"), "--tls-key", c.file("key.pem", "not pem")],
        {},
        "do not load",
    ),
    "tls-cert-and-self-signed": lambda c: (
        [*FREE, "--tls-self-signed", "--tls-cert", c.file("c.pem", "x"), "--tls-key", c.file("k.pem", "x")],
        {},
        "--tls-self-signed",
    ),
    "no-tls-with-a-certificate": lambda c: (
        [*FREE, "--no-tls", "--tls-cert", c.file("c.pem", "x"), "--tls-key", c.file("k.pem", "x")],
        {},
        "--no-tls offers no STARTTLS: do not give --tls-cert with it",
    ),
    "state-unknown-mode": lambda c: ([*FREE, "--state", "forever"], {}, "--state must be one of fresh, keep"),
    "state-file-in-no-folder": lambda c: (
        [*FREE, "--state", "keep", "--state-file", str(c.tmp / "no" / "state.json")],
        {},
        f"--state-file {c.tmp / 'no' / 'state.json'}: no such folder",
    ),
    "unknown-option": lambda c: ([*FREE, "--bogus"], {}, "--bogus"),
    "size-unknown-unit": lambda c: ([*FREE, "--max-message-size", "10XB"], {}, "unknown unit"),
    "size-not-a-number": lambda c: ([*FREE, "--max-message-size", "lots"], {}, "not a number"),
    "size-below-1KiB": lambda c: ([*FREE, "--max-message-size", "100"], {}, "--max-message-size"),
    "auth-unknown-mode": lambda c: ([*FREE, "--auth", "sometimes"], {}, "--auth"),
    "seed-not-a-number": lambda c: ([*FREE, "--seed", "abc"], {}, "--seed"),
    "log-level-unknown": lambda c: ([*FREE, "--log-level", "loud"], {}, "--log-level"),
    "engine-unknown": lambda c: ([*FREE, "--engine", "turbo"], {}, "--engine"),
    "timeout-zero": lambda c: ([*FREE, "--timeout", "0"], {}, "--timeout"),
    "env-workers-bad": lambda c: (list(FREE), {"SMARTSINK_WORKERS": "0"}, "--workers must be at least 1"),
    "env-policy-missing": lambda c: (
        list(FREE),
        {"SMARTSINK_POLICY": str(c.tmp / "nope.toml")},
        f"{c.tmp / 'nope.toml'}: no such file",
    ),
    "env-size-bad": lambda c: (list(FREE), {"SMARTSINK_MAX_MESSAGE_SIZE": "1XB"}, "unknown unit"),
    "env-listen-bad": lambda c: (["--http", "off"], {"SMARTSINK_LISTEN": "nowhere"}, "--listen"),
}


@pytest.fixture
def ctx(tmp_path):
    sock, port = busy_port()
    try:
        yield Ctx(tmp_path, port)
    finally:
        sock.close()


class TestBadInput:
    @pytest.mark.parametrize("case", BAD.values(), ids=BAD.keys())
    def test_one_line_exit_2_no_traceback(self, ctx, case):
        """Bad input: one stderr line `smartsink: error: ...` naming the problem, exit 2, no traceback."""
        args, env, fragment = case(ctx)
        result = run_smartsink(*args, env=env, timeout=BAD_RUN_TIMEOUT)
        line = one_line(result.stderr)
        assert result.returncode == 2, result.stderr
        assert line.startswith("smartsink: error: "), line
        assert fragment in line, line
        assert result.stdout == ""

    def test_help_exits_0(self):
        """--help is not an error."""
        result = run_smartsink("--help")
        assert result.returncode == 0
        assert "Usage: smartsink" in result.stdout


class TestCheck:
    def test_good_file(self, tmp_path):
        """--check on a good file: exit 0, one OK line on stdout, nothing on stderr."""
        path = write_policy(tmp_path, '[default]\nbounce = 1\n[domain."gmail.com"]\ndefer = 2\n')
        result = run_smartsink("--check", "--policy", str(path))
        assert (result.returncode, result.stdout, result.stderr) == (0, f"{path}: OK, 1 domains\n", "")

    @needs_kumo_policy()
    def test_kumomta_file(self):
        """--check on KumoMTA's file: exit 0, its one warning naming file:line on stderr."""
        result = run_smartsink("--check", "--policy", str(KUMO_POLICY))
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(f"{KUMO_POLICY}: OK, ")
        warning = one_line(result.stderr)
        assert re.match(
            rf"smartsink: warning: {re.escape(str(KUMO_POLICY))}:\d+: \[\[defer\.\"yahoo\.ca\"\]\] code: ",
            warning,
        )

    def test_bad_file_names_every_problem(self, tmp_path):
        """--check on a bad file: exit 2, one `file:line: key: problem` line per problem, no traceback."""
        path = write_policy(tmp_path, '[default]\nbounce = 120\n\n[domain."gmail.com"]\ndefr = 1\n')
        result = run_smartsink("--check", "--policy", str(path))
        assert result.returncode == 2
        assert result.stderr.splitlines() == [
            f"smartsink: error: {path}:2: [default] bounce: must be from 0 to 100, got 120",
            f'smartsink: error: {path}:5: [domain."gmail.com"] defr: unknown key (known: bounce, defer, '
            "disconnect, escalate, greylist, latency, max_concurrency, max_message_size, max_messages_per_connection, "
            "per, rate, rate_start, reject_at, require_headers, require_tls, tempfail_closes, unknown)",
        ]
        assert result.stdout == ""

    def test_policy_from_environment(self, tmp_path):
        """--check reads SMARTSINK_POLICY when --policy is not given."""
        path = write_policy(tmp_path, "[default]\nbounce = 101\n")
        result = run_smartsink("--check", env={"SMARTSINK_POLICY": str(path)})
        assert result.returncode == 2
        assert one_line(result.stderr).startswith(f"smartsink: error: {path}:2: [default] bounce: ")

    def test_default_policy_in_a_checkout(self):
        """Without --policy, a checkout's policy/responses.toml is used."""
        result = run_smartsink("--check", cwd=ROOT)
        assert result.returncode == 0
        assert result.stdout.startswith("policy/responses.toml: OK, ")
        assert result.stderr == ""

    def test_default_policy_outside_a_checkout(self, tmp_path):
        """Elsewhere, the copy shipped inside the package is used, and it is good."""
        result = run_smartsink("--check", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        path = result.stdout.split(": OK")[0]
        assert Path(path).read_bytes() == SHIPPED_POLICY.read_bytes()
        assert Path(path).parent.name == "data"

    def test_default_policy_at_kumomtas_path(self, tmp_path):
        """Elsewhere, with a file at KumoMTA's policy path (where its smart sink's compose file mounts ./policy),
        that file is served, and the ready line says so. Run in a private mount namespace whose /opt is a fresh
        tmpfs: nothing is written to this machine's /opt."""
        kumo = "/opt/kumomta/etc/policy/responses.toml"
        policy = write_policy(tmp_path, '[domain."kumo.test"]\nbounce = 100\n')
        script = (
            f"mount -t tmpfs tmpfs /opt && mkdir -p {Path(kumo).parent} && cp {policy} {kumo} && "
            f"exec {sys.executable} -m smartsink --check"
        )
        result = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", script],
            capture_output=True, text=True, cwd=tmp_path, timeout=30, env=child_env(),
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert result.stdout == f"{kumo}: OK, 1 domains\n"

    def test_console_script(self, tmp_path):
        """The installed `smartsink` console script runs the same command."""
        script = Path(sys.executable).parent / "smartsink"
        assert script.is_file()
        result = subprocess.run(
            [str(script), "--check", "--policy", str(SHIPPED_POLICY)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 0
        assert result.stdout.startswith(f"{SHIPPED_POLICY}: OK")


# --- every option from its environment variable ---------------------------------------------------------


class TestDefaults:
    def test_admin_port_is_not_kumods_nor_trafficgens(self):
        """The admin listener's default port is neither kumod's HTTP port (8000) nor where `trafficgen --http` sends
        by default (KumoMTA traffic-gen's http://127.0.0.1:8000), nor an SMTP port of either tool: a sink on a kumod
        host starts, and trafficgen --http with its defaults never injects into the sink by mistake."""
        admin = SinkConfig().http
        assert admin is not None
        taken = {8000, urlsplit(DEFAULT_HTTP_TARGET).port, SinkConfig().listen[1], int(DEFAULT_TARGET.split(":")[1])}
        assert admin[1] not in taken
        assert admin == ("127.0.0.1", 8026)

    def test_starttls_offered_by_default(self):
        """With no TLS option, STARTTLS is offered with a certificate made at start (the providers all offer it)."""
        config = SinkConfig()
        assert config.tls
        assert config.self_signed
        assert not build(starttls=False).tls


class TestEnvironment:
    def test_every_option_has_an_environment_variable(self):
        """--help names SMARTSINK_<OPTION> for every option (but the --check and --help actions)."""
        text = run_smartsink("--help", env={"COLUMNS": "250"}).stdout
        # Each option's entry starts with "│ --name" and runs on over lines that start "│" and spaces.
        entries = [" ".join(e.replace("│", " ").split()) for e in re.split(r"\n(?=│ --)", text)[1:]]
        names = [entry.split()[0] for entry in entries]
        assert len(names) >= 16, names
        for name, entry in zip(names, entries, strict=True):
            if name in ("--check", "--help", "--version"):
                continue
            variable = "SMARTSINK_" + name[2:].upper().replace("-", "_")
            assert re.search(rf"\[env var: {variable}[;\]]", entry), entry


ENV_POLICY = """
[default]
bounce = 0
defer = 0

[domain."roll.test"]
bounce = 30
defer = 30

[[defer."gmail.com"]]
code = 452
msg = "4.2.2 gmail: over quota"

# a 550 in a defer list: a policy warning, logged at level warning
[[defer."odd.test"]]
code = 550
msg = "5.0.0 odd"
"""


@pytest.fixture(scope="module")
def env_policy(tmp_path_factory):
    return write_policy(tmp_path_factory.mktemp("env"), ENV_POLICY)


@pytest.fixture(scope="module")
def env_sink(env_policy):
    sink = start_sink_from_env(
        {
            "SMARTSINK_LISTEN": "127.0.0.1:0",
            "SMARTSINK_HTTP": "127.0.0.1:0",
            "SMARTSINK_POLICY": str(env_policy),
            "SMARTSINK_DOMAIN_SUFFIX": "mx.example.net",
            "SMARTSINK_MAX_MESSAGE_SIZE": "5KB",
            "SMARTSINK_TLS_SELF_SIGNED": "1",
            "SMARTSINK_AUTH": "required",
            "SMARTSINK_HOSTNAME": "sink.example",
            "SMARTSINK_SEED": "77",
            "SMARTSINK_LOG_LEVEL": "error",
            "SMARTSINK_TIMEOUT": "2",
        }
    )
    try:
        yield sink
    finally:
        sink.stop()


def logged_in(sink) -> smtplib.SMTP:
    client = smtplib.SMTP(*sink.address, timeout=10)
    client.ehlo("client.test")
    client.login("env", "test")
    return client


def rolls(client: smtplib.SMTP) -> list[int]:
    return [transaction(client, [f"user{i}@roll.test"])[0] for i in range(100)]


class TestEnvironmentSink:
    def test_listen_and_http(self, env_sink):
        """SMARTSINK_LISTEN and SMARTSINK_HTTP choose the addresses (port 0: free ones)."""
        assert env_sink.host == "127.0.0.1"
        assert env_sink.port > 0
        assert env_sink.http.startswith("127.0.0.1:")
        assert env_sink.health()["status"] == "ok"

    def test_policy(self, env_sink, env_policy):
        """SMARTSINK_POLICY names the policy file."""
        assert env_sink.health()["policy"]["path"] == str(env_policy)

    def test_domain_suffix(self, env_sink):
        """SMARTSINK_DOMAIN_SUFFIX is stripped before the lookup."""
        client = logged_in(env_sink)
        try:
            assert transaction(client, ["tempfail@gmail.com.mx.example.net"]) == (
                452,
                "4.2.2 gmail: over quota",
            )
        finally:
            close(client)

    def test_empty_domain_suffix_strips_nothing(self, env_policy):
        """SMARTSINK_DOMAIN_SUFFIX='' turns the default sink.test suffix off, as --domain-suffix '' does."""
        env = {"SMARTSINK_LISTEN": "127.0.0.1:0", "SMARTSINK_HTTP": "off", "SMARTSINK_POLICY": str(env_policy)}
        for suffix, expected in ((None, 452), ("", 451)):  # 451: the sink's own defer for an unknown domain
            sink = start_sink_from_env(env if suffix is None else {**env, "SMARTSINK_DOMAIN_SUFFIX": suffix})
            try:
                with smtplib.SMTP(*sink.address, timeout=10) as client:
                    client.ehlo()
                    client.mail(SENDER)
                    client.rcpt("tempfail@gmail.com.sink.test")
                    assert client.data(b"Subject: x\r\n\r\nhi\r\n")[0] == expected
            finally:
                sink.stop()

    def test_max_message_size(self, env_sink):
        """SMARTSINK_MAX_MESSAGE_SIZE sets the advertised and enforced limit."""
        client = logged_in(env_sink)
        try:
            assert client.esmtp_features["size"] == "5000"
            assert client.mail(SENDER, ["SIZE=5001"])[0] == 552
        finally:
            close(client)

    def test_tls_self_signed(self, env_sink):
        """SMARTSINK_TLS_SELF_SIGNED=1 offers STARTTLS."""
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        with connected(env_sink) as client:
            assert client.has_extn("starttls")
            assert client.starttls(context=context)[0] == 220

    def test_auth_required(self, env_sink):
        """SMARTSINK_AUTH=required demands AUTH before MAIL."""
        with connected(env_sink) as client:
            assert client.mail(SENDER)[0] == 530

    def test_hostname(self, env_sink):
        """SMARTSINK_HOSTNAME is the name in the greeting."""
        with socket.create_connection(env_sink.address, timeout=10) as sock:
            assert read_reply(sock) == b"220 sink.example ESMTP smartsink\r\n"
            sock.sendall(b"QUIT\r\n")
            read_reply(sock)

    def test_timeout(self, env_sink):
        """SMARTSINK_TIMEOUT=2: a silent connection is told 421 and closed."""
        with socket.create_connection(env_sink.address, timeout=10) as sock:
            read_reply(sock)
            assert read_reply(sock) == b"421 4.4.2 Error: timeout exceeded\r\n"

    def test_log_level(self, env_sink, env_policy):
        """SMARTSINK_LOG_LEVEL=error silences the policy warning a default sink logs."""
        assert "policy warning" not in env_sink.log()
        with running_sink(policy=env_policy) as default:
            assert "policy warning" in default.log()

    def test_seed(self, env_sink, env_policy):
        """SMARTSINK_SEED=77 gives the same answers as --seed 77, and not those of --seed 78."""
        client = logged_in(env_sink)
        try:
            from_env = rolls(client)
        finally:
            close(client)
        results = {}
        for seed in ("77", "78"):
            with running_sink("--seed", seed, "--auth", "required", policy=env_policy) as sink:
                client = logged_in(sink)
                try:
                    results[seed] = rolls(client)
                finally:
                    close(client)
        assert len(set(from_env)) == 3
        assert from_env == results["77"]
        assert from_env != results["78"]

    def test_workers(self, env_policy):
        """SMARTSINK_WORKERS=2 starts two workers."""
        sink = start_sink_from_env(
            {
                "SMARTSINK_LISTEN": "127.0.0.1:0",
                "SMARTSINK_HTTP": "127.0.0.1:0",
                "SMARTSINK_POLICY": str(env_policy),
                "SMARTSINK_WORKERS": "2",
            }
        )
        try:
            assert sink.health()["workers"]["configured"] == sink.health()["workers"]["alive"] == 2
            assert send(sink, ["user@example.org"])[0] == 250
        finally:
            sink.stop()

    def test_tls_cert_and_key(self, tmp_path, env_policy):
        """SMARTSINK_TLS_CERT and SMARTSINK_TLS_KEY: STARTTLS presents exactly that certificate."""
        cert, key = tls.self_signed("given.example", str(tmp_path))
        sink = start_sink_from_env(
            {
                "SMARTSINK_LISTEN": "127.0.0.1:0",
                "SMARTSINK_HTTP": "off",
                "SMARTSINK_POLICY": str(env_policy),
                "SMARTSINK_TLS_CERT": cert,
                "SMARTSINK_TLS_KEY": key,
            }
        )
        try:
            context = ssl.create_default_context(cafile=cert)
            context.check_hostname = False
            with connected(sink) as client:
                assert client.starttls(context=context)[0] == 220
                presented = client.sock.getpeercert(binary_form=True)
                client.ehlo("client.test")
                assert client.sendmail(SENDER, ["user@example.org"], BODY) == {}
            assert presented == ssl.PEM_cert_to_DER_cert(Path(cert).read_text())
        finally:
            sink.stop()
