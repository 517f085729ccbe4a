"""--workload FILE.toml: a run's options in a file a team commits and reruns.

Each key is an option's name, its long flag without the dashes (`domain`, `body-size`, `fail-if`; `body_size` is
read the same), derived from the declared options of RunConfig, so the file and the command line cannot drift.
A value is written as on the command line (`throttle = "300/s"`, `duration = "10m"`), or as TOML says it better: a
number (`concurrency = 200`, `duration = 600`), a boolean for a flag, a list for a repeatable option (`fail-if =
["p99 < 2s", ...]`), a table of weights (`domain = { "gmail.com" = 67.4, "yahoo.com" = 5.9 }`, or a `[domain]`
section), a list of stages for `profile`. Each value is read by its option's kind (mailload.values), as the
command line's is. `body-file` is read relative to the workload file.

A bad key or value is one line: `FILE:LINE: KEY: what is wrong`. Nothing here knows a particular option.
"""

from __future__ import annotations

import difflib
import hashlib
import re
import tomllib
from pathlib import Path
from typing import Any

from mailload.options import Declared, OptionError, declared, values

NOT_IN_FILES = ("workload",)  # options a workload file cannot hold
RELATIVE_TO_FILE = ("body_file",)  # paths read relative to the workload file


class WorkloadError(ValueError):
    """A workload file that cannot be used; the message names FILE:LINE and the key."""


def digest(path: str) -> str:
    """The file's SHA-256 (the report names the workload by it); WorkloadError when it cannot be read."""
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except FileNotFoundError:
        raise WorkloadError(f"--workload {path}: no such file") from None
    except IsADirectoryError:
        raise WorkloadError(f"--workload {path}: is a directory") from None
    except OSError as e:
        raise WorkloadError(f"--workload {path}: cannot be read ({e.strerror})") from None


def keys(config_class: type) -> dict[str, Declared]:
    """The keys a workload file may hold, each the option it sets."""
    return {item.long_flag[2:]: item for item in declared(config_class) if item.name not in NOT_IN_FILES}


def load(path: str, config_class: type) -> dict[str, Any]:
    """The options a workload file gives, by field name, each as the command line would give it and already
    checked on its own (so a bad one is named with its line)."""
    digest(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise WorkloadError(f"{path}: not UTF-8 text") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"\(at line (\d+), column \d+\)", str(e))
        where = f"{path}:{m.group(1)}" if m else path
        problem = re.sub(r" \(at line.*", "", str(e))
        raise WorkloadError(f"{where}: not TOML: {problem}") from None
    known = keys(config_class)
    out: dict[str, Any] = {}
    for key, raw in data.items():
        where = f"{path}:{line_of(text, key)}" if line_of(text, key) else path
        item = known.get(key.replace("_", "-"))
        if item is None:
            close = difflib.get_close_matches(key.replace("_", "-"), list(known), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            if key.replace("_", "-") in NOT_IN_FILES:
                raise WorkloadError(f"{where}: {key}: a workload file cannot name another workload")
            raise WorkloadError(f"{where}: {key}: no such option{hint}")
        if isinstance(raw, dict):
            swallowed = next((k for k in raw if k.replace("_", "-") in known and k != key), None)
            if swallowed is not None:
                raise WorkloadError(
                    f"{where}: {key}: holds {swallowed!r}, an option: TOML puts every key written after a [{key}] "
                    "line into that section, so write the sections last"
                )
        value = raw
        if item.name in RELATIVE_TO_FILE and isinstance(value, str) and not Path(value).is_absolute():
            value = str(Path(path).parent / value)
        try:
            values(config_class, {item.name: value})  # read as the command line's would be, to name its line
        except OptionError as e:
            raise WorkloadError(f"{where}: {key}: {_without_flag(str(e), item)}") from None
        out[item.name] = value
    return out


def _without_flag(message: str, item: Declared) -> str:
    """ "--domain 'x:y': weight..." reads "'x:y': weight..." after "FILE:LINE: domain: "."""
    for flag in item.flags:
        for sep in (": ", " "):
            if message.startswith(flag.split("/")[0] + sep):
                return message[len(flag.split("/")[0]) + len(sep) :]
    return message


def line_of(text: str, key: str) -> int:
    """The line where a top-level key (or its [section]) is written; 0 when it cannot be found."""
    quoted = rf"(?:{re.escape(key)}|\"{re.escape(key)}\"|'{re.escape(key)}')"
    for pattern in (rf"^[ \t]*{quoted}[ \t]*=", rf"^[ \t]*\[[ \t]*{quoted}[ \t]*\]"):
        m = re.search(pattern, text, re.M)
        if m:
            return text.count("\n", 0, m.start()) + 1
    return 0
