"""--state keep: what the sink learnt (smartsink.limits.state) written to a file at a clean stop and read back at
the next start, so a restart does not make a provider forget a sender.

The file is JSON with Unix times, written whole or not at all (a temporary file renamed over it). A file that
cannot be read at start is a start error naming it, never a silent fresh start.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from pathlib import Path

from smartsink.limits.state import SharedState

log = logging.getLogger("smartsink.state")


class StateFileError(Exception):
    """The state file cannot be used; one line naming it and why."""


def check_writable(path: str) -> None:
    """The file's folder takes a new file now, not only at stop when nothing can be done about it."""
    folder = Path(path).resolve().parent
    if not folder.is_dir():
        raise StateFileError(f"--state-file {path}: no such folder {folder}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise StateFileError(f"--state-file {path}: cannot write in {folder}")


def load(state: SharedState, path: str) -> int:
    """Read the file into `state`; the entries read (0 when there is no file yet)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return 0
    except (OSError, UnicodeDecodeError) as e:
        raise StateFileError(f"--state-file {path}: cannot be read: {e}") from None
    try:
        return state.restore(json.loads(text))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise StateFileError(f"--state-file {path}: not a smartsink state file ({e})") from None


def save(state: SharedState, path: str) -> None:
    """Write `state` to the file, replacing it whole; a failure is logged (the sink is stopping anyway)."""
    folder = str(Path(path).resolve().parent)
    temporary = None
    try:
        fd, temporary = tempfile.mkstemp(prefix=".smartsink-state-", dir=folder)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(state.saved(), f, separators=(",", ":"))
        os.replace(temporary, path)
    except OSError as e:
        log.error("--state-file %s: cannot write the state: %s", path, e)
        if temporary is not None:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
        return
    log.info("state written to %s", path)
