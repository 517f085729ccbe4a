"""What can be checked of the Docker files without a Docker engine: the compose file parses and says what the
docs promise, the build context holds everything the Dockerfile copies, the entry point, environment and health
check match the real CLI and endpoints (run for real against a sink)."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import smtplib
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

from harness import ROOT
from harness.net import free_port, refusing_port
from harness.policies import ACCEPT_ALL as ACCEPT_ALL_POLICY
from harness.sink import run_smartsink, running_sink, start_sink
from harness.trafficgen import run_trafficgen

DOCKERFILE = ROOT / "docker" / "Dockerfile"
COMPOSE = ROOT / "docker" / "compose.yaml"


def healthcheck() -> list[str]:
    """The HEALTHCHECK's command as this machine runs it: the script the image copies to the command's name."""
    args = next(a for i, a in dockerfile() if i == "HEALTHCHECK")
    exec_form = re.search(r"CMD (\[.*\])$", args)
    assert exec_form, "HEALTHCHECK should use the exec form"
    command = yaml.safe_load(exec_form.group(1))  # a JSON array is YAML too
    copies = {shlex.split(a)[-1]: shlex.split(a)[0] for i, a in dockerfile() if i == "COPY" and "--from" not in a}
    return [sys.executable, str(ROOT / copies[f"/usr/local/bin/{command[0]}"]), *command[1:]]


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


def defaults(value: str) -> str:
    """A compose value with each ${VARIABLE:-default} replaced by its default."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


class TestCompose:
    def test_root_compose_includes_the_docker_one(self):
        """`docker compose up smartsink` works from the repository root: compose.yaml includes docker/compose.yaml."""
        root = yaml.safe_load((ROOT / "compose.yaml").read_text())
        assert "docker/compose.yaml" in root["include"]

    def test_smartsink_service(self, compose):
        """Built from this repo, ports 2525 and 2026 to 25, loopback's 8026 to 8026 (not kumod's 8000), 2053 to the
        DNS by default, policy/ mounted, restarts unless stopped, never pulled (test_docker.py has compose itself read
        the file)."""
        service = compose["services"]["smartsink"]
        assert (COMPOSE.parent / service["build"]["context"]).resolve() == ROOT
        assert (COMPOSE.parent / service["build"]["context"] / service["build"]["dockerfile"]).resolve() == DOCKERFILE
        ports = [defaults(p) for p in service["ports"]]
        assert ports == ["2525:25", "2026:25", "127.0.0.1:8026:8026", "2053:53/udp", "2053:53/tcp"]
        source, target, *_ = defaults(service["volumes"][0]).split(":")
        assert (COMPOSE.parent / source).resolve() == ROOT / "policy"
        assert target == "/etc/smartsink"
        assert service["restart"] == "unless-stopped"
        assert service.get("pull_policy") == "never"

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

    def test_runs_as_non_root_on_port_25_and_8026(self):
        """USER is not root; the defaults listen on 25 and 8026 (not kumod's 8000) in the container; the policy is
        the entry point's choice (KumoMTA's path when a file is there, else the image's fixed one)."""
        instructions = dockerfile()
        user = [a for i, a in instructions if i == "USER"][-1]
        assert user not in ("root", "0")
        env = " ".join(a for i, a in instructions if i == "ENV")
        assert "SMARTSINK_LISTEN=0.0.0.0:25" in env
        assert "SMARTSINK_HTTP=0.0.0.0:8026" in env
        assert "SMARTSINK_POLICY" not in env
        assert next(a for i, a in instructions if i == "EXPOSE").split() == ["25", "8026"]
        assert [a for i, a in instructions if i == "ENTRYPOINT"] == ['["smartsink-entrypoint"]']
        copies = [a for i, a in instructions if i == "COPY" and "smartsink-entrypoint" in a]
        assert copies == ["docker/smartsink-entrypoint.sh /usr/local/bin/smartsink-entrypoint"]

    def test_scripts_are_committed_executable(self):
        """A plain COPY keeps the mode git gave the scripts the image runs: they must be committed 100755."""
        scripts = [s for i, a in dockerfile() if i == "COPY" for s in copy_sources(a) if s.startswith("docker/")]
        assert scripts == ["docker/smartsink-entrypoint.sh", "docker/smartsink-healthcheck.py"]
        staged = subprocess.run(["git", "ls-files", "--stage", *scripts], cwd=ROOT, capture_output=True, text=True)
        assert [line.split()[0] for line in staged.stdout.splitlines()] == ["100755", "100755"], staged.stdout

    def test_any_builder_can_build_it(self):
        """Nothing only BuildKit knows (the classic builder stops at it), and no syntax directive (BuildKit would
        fetch a frontend image from a registry before step 1). test_docker.py builds it with BuildKit for real."""
        text = DOCKERFILE.read_text()
        assert not re.search(r"^#\s*syntax\s*=", text, re.MULTILINE | re.IGNORECASE)
        for instruction, args in dockerfile():
            assert not re.search(r"--(chmod|chown|link|mount|parents|exclude|checksum|keep-git-dir)\b", args), args
            assert "<<" not in args, f"{instruction} {args}: a heredoc"

    def test_healthcheck_passes_against_a_real_sink(self, tmp_path):
        """The HEALTHCHECK command, run as the image would, succeeds against a running sink and fails without one."""
        command = healthcheck()
        with running_sink(policy=ROOT / "policy" / "responses.toml") as sink:
            ok = subprocess.run(command, env={**os.environ, "SMARTSINK_HTTP": sink.http}, capture_output=True)
            assert ok.returncode == 0, ok.stderr
        gone = subprocess.run(command, env={**os.environ, "SMARTSINK_HTTP": sink.http}, capture_output=True)
        assert gone.returncode == 1
        assert gone.stderr.decode().startswith("smartsink-healthcheck: http://127.0.0.1:")

    def test_healthcheck_goes_through_no_proxy(self):
        """Docker hands the client's proxy settings to every container; the check still asks the sink itself."""
        refusing = refusing_port()
        proxy = f"http://127.0.0.1:{refusing.getsockname()[1]}"
        proxies = {name: proxy for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY")}
        try:
            with running_sink(policy=ROOT / "policy" / "responses.toml") as sink:
                env = {**os.environ, **proxies, "no_proxy": "127.0.0.0/8", "SMARTSINK_HTTP": sink.http}
                check = subprocess.run(healthcheck(), env=env, capture_output=True, text=True)
                assert check.returncode == 0, check.stderr
        finally:
            refusing.close()

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
            check = subprocess.run(healthcheck(), env={**env, "SMARTSINK_HTTP": "0.0.0.0:1"}, capture_output=True)
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

    def test_kumomta_policy_path_is_served_when_mounted(self, tmp_path):
        """KumoMTA's smart-sink compose file mounts ./policy on /opt/kumomta/etc/policy and names no policy: the
        entry point serves that file (the ready line and /health name it), not the image's own. Run in a private
        mount namespace whose /opt is a fresh tmpfs, so nothing is written to this machine's /opt."""
        kumo = "/opt/kumomta/etc/policy/responses.toml"
        policy = tmp_path / "kumo.toml"
        policy.write_text('[domain."kumo.test"]\nbounce = 100\n')
        script = (
            f"mount -t tmpfs tmpfs /opt && mkdir -p {os.path.dirname(kumo)} && cp {policy} {kumo} "
            f"&& exec /bin/sh {ENTRYPOINT}"
        )
        env = image_env(SMARTSINK_LISTEN="127.0.0.1:0", SMARTSINK_HTTP="127.0.0.1:0")
        command = ["unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", script]
        sink = start_sink(env=env, free_ports=False, command=command)
        try:
            assert f"policy {kumo} (1 domains)" in sink.log()
            assert sink.health()["policy"]["path"] == kumo
            with smtplib.SMTP(sink.host, sink.port, timeout=10) as client, pytest.raises(smtplib.SMTPDataError) as e:
                client.sendmail("a@example.test", ["x@kumo.test"], b"Subject: x\r\n\r\nx")
            assert e.value.smtp_code == 550  # kumo.test's bounce = 100, from the mounted file
        finally:
            sink.stop()

    def test_without_a_kumomta_policy_the_images_own_is_named(self):
        """No file at KumoMTA's path and no policy named: the entry point names the image's
        /etc/smartsink/responses.toml (absent outside the image, so the sink says so in one line)."""
        env = image_env(SMARTSINK_LISTEN="127.0.0.1:0", SMARTSINK_HTTP="127.0.0.1:0")
        assert not Path("/opt/kumomta/etc/policy/responses.toml").exists()
        result = subprocess.run(["/bin/sh", str(ENTRYPOINT)], env=env, capture_output=True, text=True, timeout=30)
        assert result.returncode == 2
        assert result.stderr.strip() == "smartsink: error: /etc/smartsink/responses.toml: no such file"

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
    stages = [n for n, (instruction, _) in enumerate(instructions) if instruction == "FROM"] + [len(instructions)]
    build = next(k for k, n in enumerate(stages[:-1]) if instructions[n][1].endswith(" AS build"))
    for instruction, args in instructions[stages[build] : stages[build + 1]]:  # the build stage
        if instruction == "COPY":
            for source in copy_sources(args):
                src = ROOT / source
                if src.is_dir():
                    ignored = shutil.ignore_patterns("__pycache__", "*.so")  # .dockerignore's
                    shutil.copytree(src, context / source, symlinks=True, ignore=ignored)
                else:
                    shutil.copy2(src, context / source)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), "."],
        cwd=context,
        capture_output=True,
        text=True,
        env={**os.environ, "MAILLOAD_PURE": "1"},  # as the Dockerfile's build stage: no compiler in the image
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
    assert not [name for name in names if name.endswith(".so")]  # pure Python, as the image builds it
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "smartsink = smartsink.cli:main" in entry_points
    assert "trafficgen = trafficgen.cli:main" in entry_points
    shipped = zipfile.ZipFile(wheel).read("smartsink/data/responses.toml")
    assert shipped == (ROOT / "policy" / "responses.toml").read_bytes()


def kubernetes_validate(*manifests: Path) -> subprocess.CompletedProcess[str]:
    """kubernetes-validate --strict (a test dependency) on the files: the API's schemas, offline."""
    command = [str(Path(sys.executable).parent / "kubernetes-validate"), "--strict", "--quiet", *map(str, manifests)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


class TestKubernetes:
    def test_indexed_job_shards_one_run(self):
        """The Job is Indexed; each pod's --shard is its index over the completions; every variable is an option."""
        documents = yaml.safe_load_all((ROOT / "docker" / "k8s-trafficgen-job.yaml").read_text())
        job = next(d for d in documents if d["kind"] == "Job")
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

    def test_manifests_validate_strictly(self):
        """Every document of both manifests passes kubernetes-validate --strict (the API's schemas, offline: no
        field unknown to Kubernetes, none missing)."""
        manifests = [ROOT / "docker" / "k8s-smartsink.yaml", ROOT / "docker" / "k8s-trafficgen-job.yaml"]
        result = kubernetes_validate(*manifests)
        assert result.returncode == 0, result.stdout + result.stderr

    def test_every_claim_the_job_mounts_is_defined(self):
        """The Job's pods mount claims its file defines, so they do not stay Pending; pods that may run on several
        nodes write to it at once, so it is ReadWriteMany."""
        documents = list(yaml.safe_load_all((ROOT / "docker" / "k8s-trafficgen-job.yaml").read_text()))
        claims = {d["metadata"]["name"]: d for d in documents if d["kind"] == "PersistentVolumeClaim"}
        job = next(d for d in documents if d["kind"] == "Job")
        mounted = [v["persistentVolumeClaim"]["claimName"] for v in job["spec"]["template"]["spec"]["volumes"]]
        assert mounted == ["trafficgen-reports"]
        for name in mounted:
            assert name in claims, f"the Job mounts claim {name}, which no document defines"
            if job["spec"]["parallelism"] > 1:
                assert "ReadWriteMany" in claims[name]["spec"]["accessModes"]

    def test_the_documented_configmap_is_what_the_sinks_mount(self, tmp_path):
        """The manifest's own `kubectl create configmap` command, dry-run (no cluster needed), makes a ConfigMap
        that validates and holds the policy where the image looks for it."""
        kubectl = shutil.which("kubectl")
        if kubectl is None:
            pytest.skip("kubectl is not installed (apt-get install kubernetes-client)")
        text = (ROOT / "docker" / "k8s-smartsink.yaml").read_text()
        command = shlex.split(re.search(r"^#\s+(kubectl create configmap .*)$", text, re.MULTILINE).group(1))  # type: ignore[union-attr]
        made = subprocess.run(
            [kubectl, *command[1:], "--dry-run=client", "-o", "yaml"], cwd=ROOT, capture_output=True, text=True
        )
        assert made.returncode == 0, made.stderr
        (tmp_path / "configmap.yaml").write_text(made.stdout)
        validated = kubernetes_validate(tmp_path / "configmap.yaml")
        assert validated.returncode == 0, validated.stdout + validated.stderr
        configmap = yaml.safe_load(made.stdout)
        statefulset = next(d for d in yaml.safe_load_all(text) if d["kind"] == "StatefulSet")
        pod = statefulset["spec"]["template"]["spec"]
        volume = next(v for v in pod["volumes"] if "configMap" in v)
        mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == volume["name"])
        assert volume["configMap"]["name"] == configmap["metadata"]["name"]
        # where the image reads the policy: the entry point's own, when none is named or mounted at KumoMTA's path
        policy = re.search(r"export SMARTSINK_POLICY=(/\S+)$", ENTRYPOINT.read_text(), re.MULTILINE).group(1)  # type: ignore[union-attr]
        assert f"{mount['mountPath']}/{next(iter(configmap['data']))}" == policy
        assert configmap["data"]["responses.toml"] == (ROOT / "policy" / "responses.toml").read_text()
