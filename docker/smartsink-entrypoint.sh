#!/bin/sh
# The image's entry point: KumoMTA's smart-sink image is configured with SINK_PORT (the SMTP port), SINK_HTTP (the
# HTTP port) and SINK_DATA (the path of responses.toml). Users who bring a compose file or a Kubernetes manifest
# written for it keep those names: each one set here wins over the image's SMARTSINK_* default. Then smartsink
# runs with the arguments given to the container.
set -eu

port() {
    case "$2" in
        '' | *[!0-9]*) echo "smartsink: $1=$2 is not a port number" >&2; exit 2 ;;
    esac
    if [ "$2" -lt 1 ] || [ "$2" -gt 65535 ]; then
        echo "smartsink: $1=$2 is not a port number (1-65535)" >&2
        exit 2
    fi
}

if [ -n "${SINK_PORT+set}" ]; then
    port SINK_PORT "$SINK_PORT"
    export SMARTSINK_LISTEN="0.0.0.0:$SINK_PORT"
fi
if [ -n "${SINK_HTTP+set}" ]; then
    port SINK_HTTP "$SINK_HTTP"
    export SMARTSINK_HTTP="0.0.0.0:$SINK_HTTP"
fi
if [ -n "${SINK_DATA+set}" ]; then
    export SMARTSINK_POLICY="$SINK_DATA"
fi
exec smartsink "$@"
