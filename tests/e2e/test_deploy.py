"""What can be checked of the Docker files without a Docker engine: the compose file parses and says what the
docs promise, the build context holds everything the Dockerfile copies, the entry point, environment and health
check match the real CLI and endpoints (run for real against a sink)."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import smtplib
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

from harness import ROOT
from harness.net import free_port
from harness.policies import ACCEPT_ALL as ACCEPT_ALL_POLICY
from harness.sink import run_smartsink, running_sink, start_sink
from harness.trafficgen import run_trafficgen

DOCKERFILE = ROOT / "docker" / "Dockerfile"
COMPOSE = ROOT / "docker" / "compose.yaml"


def dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, rest = line.partition(" ")
            out.append((instruction.upper(), rest.strip()))
    return out


def copy_sources(args: str) -> list[str]:
    """The sources of a COPY's arguments, its --flags left out."""
    *sources, _destination = [a for a in shlex.split(args) if not a.startswith("--")]
    return sources


ENTRYPOINT = ROOT / "docker" / "smartsink-entrypoint.sh"


def ignored(path: str) -> bool:
    patterns = [
        p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines() if p.strip() and not p.startswith("#")
    ]
    return any(fnmatch.fnmatch(path, p) or fnmatch.fnmatch(path.split("/")[0], p) for p in patterns)


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


class TestCompose:
    def test_root_compose_includes_the_docker_one(self):
        """`docker compose up smartsink` works from the repository root: compose.yaml includes docker/compose.yaml."""
        root = yaml.safe_load((ROOT / "compose.yaml").read_text())
        assert "docker/compose.yaml" in root["include"]

    def test_smartsink_service(self, compose):
        """Built from this repo, ports 2525 and 2026 to 25 and 8000, policy/ mounted, restarts unless stopped."""
        service = compose["services"]["smartsink"]
        assert (COMPOSE.parent / service["build"]["context"]).resolve() == ROOT
        assert (COMPOSE.parent / service["build"]["context"] / service["build"]["dockerfile"]).resolve() == DOCKERFILE
        assert {"2525:25", "2026:25", "8000:8000"} <= {str(p).split()[0] for p in service["ports"]}
        source, target, *_ = service["volumes"][0].split(":")
        assert (COMPOSE.parent / source).resolve() == ROOT / "policy"
        assert target == "/etc/smartsink"
        assert service["restart"] == "unless-stopped"
        assert service.get("pull_policy") == "build"

    def test_trafficgen_service_is_behind_a_profile(self, compose):
        """`up smartsink` does not start trafficgen: it has a profile, and it sends to the sink service."""
        service = compose["services"]["trafficgen"]
        assert service["profiles"] == ["trafficgen"]
        assert service["entrypoint"] == ["trafficgen"]
        assert service["environment"]["TRAFFICGEN_TARGET"] == "smartsink:25"
        assert service["depends_on"]["smartsink"]["condition"] == "service_healthy"

    @pytest.mark.parametrize("service", ["smartsink", "trafficgen"])
    def test_environment_names_real_options(self, compose, service):
        """Every variable the compose file sets is one the command reads (shown in its --help)."""
        prog = "smartsink" if service == "smartsink" else "trafficgen"
        run = run_smartsink if service == "smartsink" else run_trafficgen
        help_text = run("--help", env={"COLUMNS": "300"}).stdout
        for name in compose["services"][service]["environment"]:
            assert name in help_text, f"{name} is not an environment variable of {prog}"


class TestDockerfile:
    def test_every_copied_path_is_in_the_build_context(self):
        """Each COPY source exists in the repository and is not excluded by .dockerignore."""
        for instruction, args in dockerfile():
            if instruction != "COPY" or args.startswith("--from"):
                continue
            for source in copy_sources(args):
                assert (ROOT / source).exists(), f"COPY {source}: not in the build context"
                assert not ignored(source), f"COPY {source}: excluded by .dockerignore"

    def test_package_files_are_all_copied(self):
        """The wheel build gets every package pyproject.toml names."""
        copied = {s for i, a in dockerfile() if i == "COPY" and not a.startswith("--from") for s in copy_sources(a)}
        for needed in (
            "pyproject.toml",
            "README.md",
            "mailload",
            "smartsink",
            "trafficgen",
            "policy",
        ):
            assert needed in copied

    def test_runs_as_non_root_on_port_25_and_8000(self):
        """USER is not root; the defaults listen on 25 and 8000 in the container; the policy has a fixed path."""
        instructions = dockerfile()
        user = [a for i, a in instructions if i == "USER"][-1]
        assert user not in ("root", "0")
        env = " ".join(a for i, a in instructions if i == "ENV")
        assert "SMARTSINK_LISTEN=0.0.0.0:25" in env
        assert "SMARTSINK_HTTP=0.0.0.0:8000" in env
        assert "SMARTSINK_POLICY=/etc/smartsink/responses.toml" in env
        assert next(a for i, a in instructions if i == "EXPOSE").split() == ["25", "8000"]
        assert [a for i, a in instructions if i == "ENTRYPOINT"] == ['["smartsink-entrypoint"]']
        copies = [a for i, a in instructions if i == "COPY" and "smartsink-entrypoint" in a]
        assert copies == ["--chmod=0755 docker/smartsink-entrypoint.sh /usr/local/bin/smartsink-entrypoint"]

    def test_healthcheck_passes_against_a_real_sink(self, tmp_path):
        """The HEALTHCHECK command, run as the image would, succeeds against a running sink and fails without one."""
        args = next(a for i, a in dockerfile() if i == "HEALTHCHECK")
        exec_form = re.search(r"CMD (\[.*\])$", args)
        assert exec_form, "HEALTHCHECK should use the exec form"
        command = yaml.safe_load(exec_form.group(1))  # a JSON array is YAML too
        command[0] = sys.executable
        with running_sink(policy=ROOT / "policy" / "responses.toml") as sink:
            ok = subprocess.run(command, env={**os.environ, "SMARTSINK_HTTP": sink.http}, capture_output=True)
            assert ok.returncode == 0, ok.stderr
        gone = subprocess.run(command, env={**os.environ, "SMARTSINK_HTTP": sink.http}, capture_output=True)
        assert gone.returncode != 0

    def test_image_environment_starts_the_sink(self, tmp_path):
        """smartsink started with only the image's environment (ports moved to free ones) serves the fixed policy."""
        env = dict(os.environ)
        for _, args in [x for x in dockerfile() if x[0] == "ENV"]:
            for assignment in shlex.split(args):
                name, _, value = assignment.partition("=")
                env[name] = value
        policy_dir = tmp_path / "etc-smartsink"
        policy_dir.mkdir()
        (policy_dir / "responses.toml").write_text((ROOT / "policy" / "responses.toml").read_text())
        env.update(
            SMARTSINK_LISTEN="127.0.0.1:0",
            SMARTSINK_HTTP="127.0.0.1:0",
            SMARTSINK_POLICY=str(policy_dir / "responses.toml"),
        )
        with running_sink(env=env, cwd=tmp_path) as sink:
            health = sink.health()
            assert health["status"] == "ok"
            assert health["policy"]["path"] == str(policy_dir / "responses.toml")


def image_env(**extra: str) -> dict[str, str]:
    """The image's ENV over this environment, the venv's commands first on PATH (where the image has them)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SMARTSINK_", "SINK_"))}
    for _, args in [x for x in dockerfile() if x[0] == "ENV"]:
        for assignment in shlex.split(args):
            name, _, value = assignment.partition("=")
            env[name] = value
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


class TestKumoVariables:
    """KumoMTA's smart-sink image is configured with SINK_PORT, SINK_HTTP and SINK_DATA; ours takes them too."""

    def test_sink_variables_configure_the_sink(self, tmp_path):
        smtp_port, http_port = free_port(), free_port()
        policy = tmp_path / "data.toml"
        policy.write_text(ACCEPT_ALL_POLICY)
        env = image_env(SINK_PORT=str(smtp_port), SINK_HTTP=str(http_port), SINK_DATA=str(policy))
        sink = start_sink(env=env, free_ports=False, command=["/bin/sh", str(ENTRYPOINT)])
        try:
            assert (sink.port, sink.http) == (smtp_port, f"0.0.0.0:{http_port}")
            with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/health", timeout=5) as response:
                health = json.load(response)
            assert health["policy"]["path"] == str(policy)
            with smtplib.SMTP("127.0.0.1", smtp_port, timeout=10) as client:
                assert client.sendmail("a@example.test", ["user@gmail.com.sink.test"], b"Subject: x\r\n\r\nx") == {}
            # the health check finds the sink by SINK_HTTP, whatever SMARTSINK_HTTP says
            args = next(a for i, a in dockerfile() if i == "HEALTHCHECK")
            command = yaml.safe_load(re.search(r"CMD (\[.*\])$", args).group(1))  # type: ignore[union-attr]
            command[0] = sys.executable
            check = subprocess.run(command, env={**env, "SMARTSINK_HTTP": "0.0.0.0:1"}, capture_output=True)
            assert check.returncode == 0, check.stderr
        finally:
            sink.stop()

    def test_image_defaults_hold_without_them(self, tmp_path):
        """Unset, the image's SMARTSINK_* apply: the entry point changes nothing."""
        env = image_env(SMARTSINK_LISTEN="127.0.0.1:0", SMARTSINK_HTTP="127.0.0.1:0")
        env["SMARTSINK_POLICY"] = str(ROOT / "policy" / "responses.toml")
        sink = start_sink(env=env, free_ports=False, command=["/bin/sh", str(ENTRYPOINT)])
        try:
            assert sink.host == "127.0.0.1"
            assert sink.health()["policy"]["path"] == str(ROOT / "policy" / "responses.toml")
        finally:
            sink.stop()

    @pytest.mark.parametrize(
        ("name", "value"),
        [("SINK_PORT", "smtp"), ("SINK_PORT", ""), ("SINK_HTTP", "70000"), ("SINK_HTTP", "0"), ("SINK_PORT", "-1")],
    )
    def test_a_bad_port_is_one_line(self, name, value):
        result = subprocess.run(
            ["/bin/sh", str(ENTRYPOINT)], env=image_env(**{name: value}), capture_output=True, text=True, timeout=30
        )
        assert result.returncode == 2
        assert result.stderr.splitlines() == [
            f"smartsink: {name}={value} is not a port number" + (" (1-65535)" if value.isdigit() else "")
        ]

    def test_arguments_reach_smartsink(self):
        """The container's command line is smartsink's: `docker run IMAGE --version` prints the version."""
        result = subprocess.run(
            ["/bin/sh", str(ENTRYPOINT), "--version"], env=image_env(), capture_output=True, text=True, timeout=30
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("smartsink ")


@pytest.mark.slow
def test_build_stage_makes_a_complete_wheel(tmp_path):
    """The build stage, replayed: only what the Dockerfile copies, then `pip wheel .`; the wheel has both
    commands, the shared modules and the policy that ships inside the package."""
    import shutil
    import zipfile

    context = tmp_path / "src"
    context.mkdir()
    instructions = dockerfile()
    second_from = [n for n, (instruction, _) in enumerate(instructions) if instruction == "FROM"][1]
    for instruction, args in instructions[:second_from]:  # the build stage
        if instruction == "COPY":
            for source in copy_sources(args):
                src = ROOT / source
                if src.is_dir():
                    shutil.copytree(src, context / source, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    shutil.copy2(src, context / source)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), "."],
        cwd=context,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    wheel = next(tmp_path.glob("*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for needed in (
        "mailload/units.py",
        "mailload/cli.py",
        "mailload/contract.py",
        "smartsink/cli.py",
        "trafficgen/cli.py",
        "smartsink/data/responses.toml",
    ):
        assert needed in names
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "smartsink = smartsink.cli:main" in entry_points
    assert "trafficgen = trafficgen.cli:main" in entry_points
    shipped = zipfile.ZipFile(wheel).read("smartsink/data/responses.toml")
    assert shipped == (ROOT / "policy" / "responses.toml").read_bytes()


class TestKubernetes:
    def test_indexed_job_shards_one_run(self):
        """The Job is Indexed; each pod's --shard is its index over the completions; every variable is an option."""
        job = yaml.safe_load((ROOT / "docker" / "k8s-trafficgen-job.yaml").read_text())
        spec = job["spec"]
        assert job["kind"] == "Job"
        assert spec["completionMode"] == "Indexed"
        env = {e["name"]: e for e in spec["template"]["spec"]["containers"][0]["env"]}
        assert "job-completion-index" in env["JOB_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"]
        assert env["TRAFFICGEN_SHARD"]["value"] == f"$(JOB_INDEX)/{spec['completions']}"
        help_text = run_trafficgen("--help", env={"COLUMNS": "300"}).stdout
        for name in env:
            assert name == "JOB_INDEX" or name in help_text, name

    def test_sinks_behind_one_address(self):
        """Several smartsink pods behind one SMTP Service, each named for scrapes and reconciliation."""
        documents = {
            d["metadata"]["name"] + "/" + d["kind"]: d
            for d in yaml.safe_load_all((ROOT / "docker" / "k8s-smartsink.yaml").read_text())
        }
        statefulset = documents["smartsink/StatefulSet"]
        assert statefulset["spec"]["replicas"] >= 2
        assert statefulset["spec"]["serviceName"] == "smartsink"
        assert documents["smartsink/Service"]["spec"]["clusterIP"] == "None"
        assert documents["smartsink-smtp/Service"]["spec"]["ports"][0]["port"] == 25
        container = statefulset["spec"]["template"]["spec"]["containers"][0]
        assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"
        assert container["livenessProbe"]["httpGet"]["path"] == "/health/live"
