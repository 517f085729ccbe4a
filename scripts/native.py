"""Compile the hot modules in place with mypyc, or remove them: `make install`, `make pure`, `make clean` use it.

    python scripts/native.py build [--require]   compile where a C compiler and Python's headers exist, else say
                                                 why and leave pure Python (--require: exit 1 instead)
    python scripts/native.py pure                remove the compiled modules (they shadow the .py files)
    python scripts/native.py status [--require]  which build this interpreter runs (--require: exit 1 unless compiled)

Nothing is compiled again when every compiled module is newer than its source. MAILLOAD_PURE=1 means pure."""

from __future__ import annotations

import glob
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from mailload import native  # noqa: E402

LOG = os.path.join(ROOT, "build", "native.log")


def built_objects() -> list[str]:
    found = []
    for package in ("mailload", "smartsink", "trafficgen"):
        found += glob.glob(os.path.join(ROOT, package, "**", "*.so"), recursive=True)
        found += glob.glob(os.path.join(ROOT, package, "**", "*.pyd"), recursive=True)
    return sorted(found)


def pure() -> None:
    for path in built_objects():
        os.remove(path)


def why_not() -> str | None:
    """Why this machine cannot compile, or None."""
    if os.environ.get("MAILLOAD_PURE") == "1":
        return "MAILLOAD_PURE=1"
    compiler = shlex.split(sysconfig.get_config_var("CC") or "cc")[0]
    if shutil.which(compiler) is None:
        return f"no C compiler ({compiler})"
    if not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")):
        return "no Python headers (Python.h: apt-get install python3-dev)"
    try:
        import mypyc  # noqa: F401
    except ImportError:
        return "mypyc is not installed (it comes with mypy, in the [test] extra)"
    return None


def build(require: bool) -> int:
    reason = why_not()
    if reason is None:
        now = native.build()
        if now.kind == "compiled" and not now.stale:
            print(f"build: {now.describe()}, up to date")
            return 0
        os.makedirs(os.path.dirname(LOG), exist_ok=True)
        print(f"build: compiling {len(native.COMPILED)} hot modules with mypyc (a minute or two; log {LOG})")
        with open(LOG, "w") as log:
            done = subprocess.run(
                [sys.executable, "setup.py", "build_ext", "--inplace"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
            )
        if done.returncode != 0:
            reason = f"mypyc failed (exit {done.returncode}, see {LOG})"
        for path in built_objects():
            os.utime(path)  # from the sources as they are now (setuptools copies an unchanged one with its old time)
    if reason is not None:
        pure()
        print(f"build: pure Python: {reason}")
        return 1 if require else 0
    # Said by a fresh process: this one imported some modules before they were compiled, and keeps those.
    return subprocess.run([sys.executable, __file__, "status", *(["--require"] if require else [])]).returncode


def main(argv: list[str]) -> int:
    if argv[:1] == ["build"]:
        return build(require="--require" in argv[1:])
    if argv[:1] == ["pure"]:
        pure()
        print("build: pure Python (compiled modules removed)")
        return 0
    if argv[:1] == ["status"]:
        result = native.build()
        print(f"build: {result.describe()}")
        return 1 if "--require" in argv[1:] and result.kind != "compiled" else 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
