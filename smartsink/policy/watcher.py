"""Keeping the policy current: load at start, reload when the file changes or on SIGHUP.

A broken edit never replaces a good policy: the last good one stays in force and the error is kept for
/health until a good file arrives.

A reload never holds the event loop that serves SMTP: the file is read and parsed in a thread, with what the last
load left (loader.Memory: only the pieces of the file that changed are parsed again), and the new policy is swapped
in on the loop once it is whole. While the thread runs, the interpreter hands the loop its turn every
RELOAD_SWITCH_INTERVAL seconds rather than every 5 ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator

from smartsink.policy.loader import Memory, load_policy
from smartsink.policy.model import Policy
from smartsink.policy.problems import PolicyError

log = logging.getLogger("smartsink.policy")

POLL_INTERVAL = 0.5  # seconds; edits apply within 2 s
SETTLE = 0.2  # a changed file is read once it has not changed for this long
RELOAD_SWITCH_INTERVAL = 0.0005  # seconds: how long the loop may wait for its turn while a reload parses

_switching = threading.Lock()


@contextlib.contextmanager
def _loop_first() -> Iterator[None]:
    """While a thread parses, let the loop's thread take the interpreter back sooner (sys.setswitchinterval)."""
    with _switching:
        before = sys.getswitchinterval()
        sys.setswitchinterval(min(before, RELOAD_SWITCH_INTERVAL))
        try:
            yield
        finally:
            sys.setswitchinterval(before)


def _load(path: str, memory: Memory) -> Policy:
    with _loop_first():
        return load_policy(path, memory)


def _signature(path: str) -> tuple[int, int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev)


class PolicyStore:
    """The policy in force, where it came from, and the last reload's error."""

    def __init__(self, path: str, on_reload: Callable[[str], None] | None = None, fixed: Policy | None = None):
        """`fixed`: serve this policy, read from no file and never reloaded (--accept-all); `path` names it."""
        self.path = path
        self.fixed = fixed is not None
        self.on_reload = on_reload or (lambda result: None)
        self.listeners: list[Callable[[Policy], None]] = []
        self.error: str | None = None
        self.loaded_at = 0.0
        self.generation = 0
        self._signature = None if fixed is not None else _signature(path)
        self.memory = Memory()
        # PolicyError propagates: a bad file at start is fatal
        self.policy: Policy = fixed if fixed is not None else load_policy(path, self.memory)
        self.loaded_at = time.time()
        self._reloading = asyncio.Lock()
        self._tasks: set[asyncio.Task[bool]] = set()
        for warning in self.policy.warnings:
            log.warning("policy warning: %s", warning)

    def request_reload(self, reason: str) -> None:
        """Reload soon (a signal handler's way: it cannot wait)."""
        task = asyncio.get_running_loop().create_task(self.reload(reason))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def reload(self, reason: str = "change") -> bool:
        """Load the file again, off the loop; True when a new policy is in force. Reloads run one at a time."""
        if self.fixed:
            log.info("policy reload (%s): nothing to reload, %s reads no file", reason, self.path)
            return False
        async with self._reloading:
            self._signature = _signature(self.path)
            try:
                policy = await asyncio.to_thread(_load, self.path, self.memory)
            except PolicyError as e:
                return self._refused(reason, e)
            return self._swap(reason, policy)

    def _refused(self, reason: str, e: PolicyError) -> bool:
        self.error = str(e)
        self.on_reload("error")
        for line in str(e).splitlines():
            log.error("policy reload (%s) refused, keeping the last good policy: %s", reason, line)
        return False

    def _swap(self, reason: str, policy: Policy) -> bool:
        self.policy, self.error, self.loaded_at = policy, None, time.time()
        self.generation += 1
        self.on_reload("success")
        log.info("policy reloaded (%s) from %s: %d domains", reason, self.path, len(policy.domains))
        for warning in policy.warnings:
            log.warning("policy warning: %s", warning)
        for listener in self.listeners:
            listener(policy)
        return True

    def changed(self) -> bool:
        return not self.fixed and _signature(self.path) != self._signature

    async def watch(self, interval: float = POLL_INTERVAL) -> None:
        """Poll the file's identity (mtime, size, inode) and reload on any change; runs until cancelled.

        A change is read once the file has stayed the same for SETTLE seconds, so a save that writes in place
        is not read half-written (an empty file would be a valid accept-everything policy)."""
        while True:
            await asyncio.sleep(interval)
            if not self.changed():
                continue
            seen = _signature(self.path)
            while True:
                await asyncio.sleep(SETTLE)
                now = _signature(self.path)
                if now == seen:
                    break
                seen = now
            await self.reload("file changed")

    def health(self) -> dict[str, object]:
        return {
            "path": self.path,
            "loaded_at": self.loaded_at,
            "generation": self.generation,
            "domains": len(self.policy.domains),
            "error": self.error,
        }
