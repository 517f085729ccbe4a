#!/usr/bin/env python3
"""The image's HEALTHCHECK: exit 0 when the sink's admin listener answers PATH with a success, 1 otherwise.

The admin address is the one the sink listens on, as the entry point sets it: SINK_HTTP (KumoMTA's port variable)
when set, else SMARTSINK_HTTP, with a wildcard host asked on loopback. The request never goes through a proxy:
Docker passes the client's http_proxy settings into every container, and urllib does not honour the 127.0.0.0/8
form of no_proxy, so a proxied check asks the proxy for the container's own loopback and fails.
"""

import os
import sys
import urllib.request

PATH = "/health/ready"  # 200 once every worker serves SMTP, 503 before and while one is stuck; change it here only
TIMEOUT = 2.0  # below the HEALTHCHECK's --timeout


def admin_address() -> str:
    port = os.environ.get("SINK_HTTP")
    if port:
        return f"127.0.0.1:{port}"
    host, _, port = os.environ.get("SMARTSINK_HTTP", "127.0.0.1:8026").rpartition(":")
    if host in ("", "0.0.0.0", "::", "[::]"):
        host = "127.0.0.1"
    return f"{host}:{port}"


def main() -> int:
    url = f"http://{admin_address()}{PATH}"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # no proxy, whatever the environment says
    try:
        with opener.open(url, timeout=TIMEOUT) as response:
            response.read()
    except (OSError, ValueError) as error:
        print(f"smartsink-healthcheck: {url}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
