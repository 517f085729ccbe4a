"""Wheels and `make install` compile the hot modules (mailload/native.py's list) with mypyc, where they can.

Everything else about the package is in pyproject.toml. MAILLOAD_PURE=1 builds pure Python; without mypyc, a C
compiler or Python's headers the build says so and is pure Python too (the same code runs, more slowly)."""

import os
import sys
import sysconfig

from setuptools import setup
from setuptools.command.build_ext import build_ext

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mailload.native import COMPILED, source


class OptionalBuildExt(build_ext):
    """A failed compile leaves pure Python (the compiled modules are an optimisation, never a requirement)."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:
            print(f"mailload: compiling failed ({exc}); pure Python", file=sys.stderr)
            # all or nothing: the modules' shims need the shared library, so none of a half build is kept
            for ext in self.extensions:
                for path in (self.get_ext_fullpath(ext.name), self.get_ext_filename(ext.name)):
                    if os.path.exists(path):
                        os.remove(path)
            self.extensions = []


def extensions() -> list:
    if os.environ.get("MAILLOAD_PURE") == "1":
        return []
    if not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")):
        print("mailload: no Python headers (Python.h); pure Python", file=sys.stderr)
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        print("mailload: mypyc is not installed; pure Python", file=sys.stderr)
        return []
    return mypycify([source(name) for name in COMPILED], opt_level="3", group_name="mailload._native")


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
