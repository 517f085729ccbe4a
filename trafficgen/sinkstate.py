"""--reset-sink: before a run, each sink forgets what it learnt from earlier runs (`DELETE /state` on its admin
listener), so identical runs start equal and `report compare` compares the target, not the sink's memory."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from trafficgen.readers import without_credentials

if TYPE_CHECKING:  # aiohttp (a quarter of a second to import) only when a sink is reset
    import aiohttp


class ResetError(Exception):
    """A sink could not be reset; one line naming it and why."""


async def reset(urls: tuple[str, ...], timeout_s: float) -> dict[str, dict[str, int]]:
    """DELETE /state on each sink in turn; what each forgot, by URL (ResetError at the first that fails)."""
    import aiohttp

    forgotten = {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as client:
        for url in urls:
            forgotten[url] = await _reset_one(client, url)
    return forgotten


async def _reset_one(client: aiohttp.ClientSession, url: str) -> dict[str, int]:
    """DELETE /state, with the admin token when the URL holds one (`http://:TOKEN@host`: basic authentication)."""
    import aiohttp

    address = f"{url}/state"
    url = without_credentials(url)
    try:
        async with client.delete(address) as response:
            text = await response.text()
            if response.status != 200:
                hint = " (is it a smartsink's admin URL?)" if response.status in (404, 405, 501) else ""
                if response.status == 401:
                    hint = " (the sink has an admin token: give it in the URL, http://:TOKEN@host:port)"
                raise ResetError(f"--reset-sink {url}: DELETE /state answered HTTP {response.status}{hint}")
            body: Any = json.loads(text)
    except (aiohttp.ClientError, TimeoutError, ValueError) as e:
        raise ResetError(f"--reset-sink {url}: cannot reset the sink: {e or type(e).__name__}") from None
    try:
        return {str(k): int(v) for k, v in body["removed"].items()}
    except (KeyError, TypeError, ValueError, AttributeError):
        raise ResetError(f"--reset-sink {url}: DELETE /state did not answer as a smartsink does") from None


def describe(forgotten: dict[str, dict[str, int]]) -> list[str]:
    """One line a sink, for the terminal."""
    return [
        f"trafficgen: reset the sink at {without_credentials(url)}: forgot "
        + ", ".join(f"{n:,} {kind.replace('_', ' ')}" for kind, n in removed.items())
        for url, removed in forgotten.items()
    ]
