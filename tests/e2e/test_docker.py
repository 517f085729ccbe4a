"""`docker compose up smartsink`, really run: a Docker engine of the test's own builds the image and runs it.

A dockerd in a scratch folder (tests/harness/docker.py: no hand on the host's firewall, no docker0), the
Dockerfile's base `debian:bookworm-slim` built from Debian's packages (no registry can be reached here), then the
commands of docs/deployment.md from the repository root: `docker compose up -d smartsink` (which builds the image),
mail with swaks to both published SMTP ports, an edit of the mounted policy, the trafficgen service with
`--json -`, `docker compose down`. The image is built once for the module. Two things differ from a user's
machine and are set through the environment, so the commands stay the ones the docs give: published ports are
free ports on 127.0.0.1 and the policy folder is a copy (SMARTSINK_*_PUBLISH, SMARTSINK_POLICY_DIR), and an
override file in COMPOSE_FILE gives builds the host's network (the engine does no NAT) and caps open-files limits
at this machine's hard limit (harness.docker.machine_override).

Where no engine can start (not root, tools missing) the tests skip with the reason; under CI they fail instead,
since .ci/run installs everything they need.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pytest

from harness import ROOT
from harness.docker import (
    BASE_IMAGE,
    Engine,
    EngineUnavailable,
    compose_files,
    import_base,
    machine_override,
    run_logged,
    running_engine,
    why_not,
)
from harness.net import free_port_outside_ephemeral
from harness.sink import wait_for
from harness.smtp import swaks_at
from smartsink.policy.watcher import POLL_INTERVAL

pytestmark = [pytest.mark.slow, pytest.mark.docker]

IMAGE = "smartsink:latest"
# The commands the docs give (test_the_docs_give_these_commands checks that they do), as the test runs them.
UP = ("compose", "up", "-d", "smartsink")
TRAFFICGEN = ("compose", "--profile", "trafficgen", "run", "--rm", "-T", "trafficgen")
DOWN = ("compose", "down")
BUILD_TIMEOUT = 900.0  # the build takes about a minute here; pip and apt over a slow mirror may take far longer
RELOAD_TIMEOUT = 20 * POLL_INTERVAL  # the sink looks at the file every POLL_INTERVAL and promises 2 s


def unavailable(reason: str) -> NoReturn:
    """Skip with the reason; under CI (where .ci/run installs everything) that is a failure."""
    if os.environ.get("CI"):
        pytest.fail(f"the Docker engine cannot run in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    reason = why_not()
    if reason:
        unavailable(reason)
    root = tmp_path_factory.mktemp("docker")
    try:
        with running_engine(root) as engine:
            started = time.monotonic()
            import_base(engine, root)
            print(f"\n{BASE_IMAGE} from debootstrap: {time.monotonic() - started:.0f} s")
            yield engine
    except EngineUnavailable as error:
        unavailable(str(error))


@dataclass
class Stack:
    """`docker compose up -d smartsink` done: the ports it publishes, its policy folder, what the build took."""

    engine: Engine
    env: dict[str, str]
    smtp: str
    redirect: str
    admin: str
    policy: Path
    up_seconds: float

    def docker(self, *args: str, timeout: float = 120.0, **kw: Any) -> subprocess.CompletedProcess[str]:
        """A docker command with the stack's environment (its compose files, ports and policy folder)."""
        return self.engine.run(*args, env=self.env, timeout=timeout, **kw)

    def health(self) -> dict[str, Any]:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"http://{self.admin}/health", timeout=5) as response:
            return dict(json.load(response))


def health_status(engine: Engine, container: str) -> tuple[str, str]:
    state = json.loads(engine.run("inspect", "--format", "{{json .State.Health}}", container).stdout)
    log = "\n".join(f"{entry['ExitCode']}: {entry['Output'].strip()}" for entry in state.get("Log") or [])
    return state["Status"], log


def health_deadline(engine: Engine) -> float:
    """When Docker itself must have said healthy or unhealthy (start period, then retries of interval and timeout),
    doubled for a busy machine."""
    check = json.loads(engine.run("image", "inspect", "--format", "{{json .Config.Healthcheck}}", IMAGE).stdout)
    seconds = {key: check.get(key, 0) / 1e9 for key in ("StartPeriod", "Interval", "Timeout")}
    return 2 * (seconds["StartPeriod"] + (check.get("Retries", 3) + 1) * (seconds["Interval"] + seconds["Timeout"]))


@pytest.fixture(scope="module")
def stack(engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("compose")
    policy = work / "policy"
    policy.mkdir()
    shutil.copy(ROOT / "policy" / "responses.toml", policy / "responses.toml")
    smtp, redirect, admin, dns = (f"127.0.0.1:{free_port_outside_ephemeral()}" for _ in range(4))
    env = {
        "COMPOSE_FILE": compose_files("compose.yaml", machine_override(work / "machine.yaml")),
        "SMARTSINK_SMTP_PUBLISH": smtp,
        "SMARTSINK_REDIRECT_PUBLISH": redirect,
        "SMARTSINK_ADMIN_PUBLISH": admin,
        "SMARTSINK_DNS_PUBLISH": dns,
        "SMARTSINK_POLICY_DIR": str(policy),
    }
    seconds = run_logged(engine, UP, work / "up.log", env, timeout=BUILD_TIMEOUT)
    stack = Stack(engine, env, smtp, redirect, admin, policy / "responses.toml", seconds)
    engine.note_networks()
    try:
        container = stack.docker("compose", "ps", "--quiet", "smartsink").stdout.strip()
        deadline = time.monotonic() + health_deadline(engine)
        status, log = health_status(engine, container)
        while status == "starting" and time.monotonic() < deadline:
            time.sleep(0.5)
            status, log = health_status(engine, container)
        assert status == "healthy", f"{status} after {health_deadline(engine):.0f} s; its checks:\n{log}"
        yield stack
    finally:
        stack.docker(*DOWN)
    assert engine.run("ps", "--all", "--quiet").stdout.split() == []
    assert engine.run("network", "ls", "--quiet", "--filter", "type=custom").stdout.split() == []


def swaks_reply(server: str, recipient: str) -> tuple[int, str]:
    """swaks sends one message to `recipient`: the code and the lines of the reply that decided it (the last
    before QUIT's)."""
    done = swaks_at(server, "--to", recipient)
    replies: list[list[str]] = [[]]
    for m in re.finditer(r"^<[-*~]{1,2} +((\d{3})([ -]).*)$", done.stdout, re.MULTILINE):
        replies[-1].append(m.group(1))
        if m.group(3) == " ":  # the last line of a reply
            replies.append([])
    decided = [reply for reply in replies if reply and not reply[-1].startswith("221 ")]
    assert decided, done.stdout + done.stderr
    return int(decided[-1][-1][:3]), "\n".join(decided[-1])


class TestComposeUp:
    def test_up_builds_an_image_that_becomes_healthy(self, stack: Stack):
        """`docker compose up -d smartsink` built the image from nothing and Docker's own check says healthy."""
        size = int(stack.engine.run("image", "inspect", "--format", "{{.Size}}", IMAGE).stdout)
        print(f"\n{' '.join(UP)}: {stack.up_seconds:.0f} s (build and start), {IMAGE} {size / 1e6:.0f} MB")
        assert stack.health()["status"] == "ok"

    def test_mail_to_both_published_ports(self, stack: Stack):
        """Each SMTP port answers as the policy says: 250 for a forced accept, Gmail's 5xx for permfail."""
        for server in (stack.smtp, stack.redirect):
            code, text = swaks_reply(server, "250-ok@gmail.com.sink.test")
            assert code == 250, text
            code, text = swaks_reply(server, "permfail@gmail.com.sink.test")
            assert 550 <= code <= 554, text
            assert "gsmtp" in text, text  # one of gmail.com's bounce texts, not a generic refusal
            print(f"\n{server} permfail: {text}")

    def test_editing_the_mounted_policy_reloads_it(self, stack: Stack):
        """A domain added to the policy on the host answers from inside the container, without a restart."""
        before = stack.health()["policy"]["generation"]
        text = stack.policy.read_text() + (
            '\n[domain."reload.test"]\nbounce = 100\ndefer = 0\n'
            '[[bounce."reload.test"]]\ncode = 554\nmsg = "5.7.1 edited on the host"\n'
        )
        edited = stack.policy.with_name("responses.toml.new")
        edited.write_text(text)
        os.replace(edited, stack.policy)  # as editors save: the sink never reads half a file
        wait_for(
            lambda: stack.health()["policy"]["generation"] > before,
            timeout=RELOAD_TIMEOUT,
            interval=POLL_INTERVAL / 2,
            what="the policy's reload",
        )
        assert swaks_reply(stack.smtp, "someone@reload.test.sink.test") == (554, "554 5.7.1 edited on the host")
        logs = stack.docker("compose", "logs", "smartsink").stdout
        assert "policy reloaded" in logs

    def test_trafficgen_service_writes_a_json_report(self, stack: Stack, tmp_path: Path):
        """The trafficgen service against the sink: `--json -` on stdout, redirected to a file, parses."""
        report = tmp_path / "report.json"
        with report.open("w") as out:
            stack.docker(*TRAFFICGEN, "--duration", "3", "--concurrency", "5", "--json", "-", stdout=out)
        data = json.loads(report.read_text())
        assert data["target"] == "smartsink:25"
        assert data["totals"]["accepted"] > 0
        assert data["totals"]["errors"] == 0
        print(f"\ntrafficgen service: {data['totals']}")


class TestImage:
    def test_the_base_stands_in_for_the_dockerfiles(self):
        """The image the engine imports is the one the Dockerfile starts FROM."""
        bases = re.findall(r"^FROM (\S+)", (ROOT / "docker" / "Dockerfile").read_text(), re.MULTILINE)
        assert bases[0] == BASE_IMAGE

    def test_user_and_group_are_10025(self, stack: Stack):
        """The non-root user's uid and gid are the 10025 the Kubernetes manifests give as fsGroup."""
        ids = stack.engine.run("run", "--rm", "--network", "none", "--entrypoint", "id", IMAGE).stdout
        assert ids.split()[:2] == ["uid=10025(smartsink)", "gid=10025(smartsink)"]

    def test_kumomtas_policy_path_is_served_when_mounted(self, stack: Stack, tmp_path: Path):
        """A policy mounted where KumoMTA's smart-sink compose file puts it (./policy:/opt/kumomta/etc/policy), no
        policy named: the image serves that file; without the mount, its own /etc/smartsink/responses.toml."""
        kumo = tmp_path / "kumo-policy"
        kumo.mkdir(mode=0o755)
        (kumo / "responses.toml").write_text('[domain."kumo.test"]\nbounce = 100\n')
        (kumo / "responses.toml").chmod(0o644)
        run = ("run", "--rm", "--network", "none")
        mounted = stack.engine.run(*run, "-v", f"{kumo}:/opt/kumomta/etc/policy:ro", IMAGE, "--check").stdout
        assert mounted == "/opt/kumomta/etc/policy/responses.toml: OK, 1 domains\n"
        own = stack.engine.run(*run, IMAGE, "--check").stdout
        assert own.startswith("/etc/smartsink/responses.toml: OK, ")

    def test_no_layer_holds_wheels_or_pip(self, stack: Stack):
        """No layer of the image carries a wheel or pip: removing them in a later layer would not shrink it."""
        saved = subprocess.Popen(["docker", "save", IMAGE], env=stack.engine.env, stdout=subprocess.PIPE)
        assert saved.stdout is not None
        found = []
        with tarfile.open(fileobj=saved.stdout, mode="r|") as image:
            for member in image:
                if not member.name.endswith("layer.tar"):
                    continue
                layer = image.extractfile(member)
                assert layer is not None
                with tarfile.open(fileobj=layer, mode="r|") as files:
                    found += [f.name for f in files if re.search(r"\.whl$|/pip/__init__\.py$", f.name)]
        saved.stdout.close()
        assert saved.wait() == 0
        assert found == []


def compose_config(directory: Path, **env: str) -> dict[str, Any]:
    """`docker compose config` (it needs no daemon) run in `directory` with these variables, as JSON."""
    reason = why_not()
    if reason:
        unavailable(reason)
    config = ROOT / ".pytest_cache" / "docker-config"
    plugin = [sys.executable, str(ROOT / "scripts" / "compose_plugin.py"), "--config", str(config)]
    done = subprocess.run(plugin, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        unavailable(done.stderr.strip())
    variables = {k: v for k, v in os.environ.items() if not k.startswith(("DOCKER_", "COMPOSE_", "SMARTSINK_"))}
    result = subprocess.run(
        ["docker", "compose", "--profile", "trafficgen", "config", "--format", "json"],
        env={**variables, "DOCKER_CONFIG": str(config), **env},
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def published(config: dict[str, Any], target: int, protocol: str = "tcp") -> list[tuple[str, str]]:
    """(host address, host port) of each port the smartsink service publishes for `target`."""
    ports = config["services"]["smartsink"]["ports"]
    return [
        (p.get("host_ip", ""), str(p["published"]))
        for p in ports
        if p["target"] == target and p.get("protocol", "tcp") == protocol
    ]


class TestComposeConfig:
    """What compose itself makes of the files, by defaults and by the variables docs/deployment.md names."""

    def test_one_project_from_the_root_and_from_docker(self):
        """Run from the root or from docker/, it is the same project: the same containers, never two fighting."""
        assert compose_config(ROOT)["name"] == compose_config(ROOT / "docker")["name"] == "smartsink"

    def test_defaults(self):
        """SMTP on 2525 and 2026 and DNS on 2053 of every interface, the admin API on loopback's 8026 only (not
        kumod's 8000), the repository's policy."""
        config = compose_config(ROOT)
        assert published(config, 25) == [("", "2525"), ("", "2026")]
        assert published(config, 53, "udp") == published(config, 53, "tcp") == [("", "2053")]
        assert published(config, 8026) == [("127.0.0.1", "8026")]
        volume = config["services"]["smartsink"]["volumes"][0]
        assert (volume["source"], volume["target"]) == (str(ROOT / "policy"), "/etc/smartsink")
        assert volume["read_only"] is True

    def test_variables_move_ports_open_the_admin_api_and_change_the_policy(self, tmp_path: Path):
        """SMARTSINK_ADMIN_PUBLISH=8026 opens the admin API on every interface; the others move what they name."""
        config = compose_config(
            ROOT,
            SMARTSINK_SMTP_PUBLISH="127.0.0.1:2600",
            SMARTSINK_REDIRECT_PUBLISH="2601",
            SMARTSINK_ADMIN_PUBLISH="8026",
            SMARTSINK_DNS_PUBLISH="127.0.0.1:2602",
            SMARTSINK_POLICY_DIR=str(tmp_path),
        )
        assert published(config, 25) == [("127.0.0.1", "2600"), ("", "2601")]
        assert published(config, 53, "udp") == [("127.0.0.1", "2602")]
        assert published(config, 8026) == [("", "8026")]
        assert config["services"]["smartsink"]["volumes"][0]["source"] == str(tmp_path)

    def test_trafficgen_runs_the_built_image_and_never_builds(self):
        """`run trafficgen` uses the smartsink service's image and neither builds nor pulls: nothing but the
        report reaches stdout."""
        services = compose_config(ROOT)["services"]
        assert services["trafficgen"]["image"] == services["smartsink"]["image"] == IMAGE
        assert "build" not in services["trafficgen"]
        assert services["trafficgen"]["pull_policy"] == "never"


def test_the_docs_give_these_commands():
    """docs/deployment.md tells users the commands this file runs."""
    docs = (ROOT / "docs" / "deployment.md").read_text()
    for command in (UP, TRAFFICGEN, DOWN):
        assert f"docker {' '.join(command)}" in docs
