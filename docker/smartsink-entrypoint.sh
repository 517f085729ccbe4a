#!/bin/sh
# The image's entry point: KumoMTA's smart-sink image is configured with SINK_PORT (the SMTP port), SINK_HTTP (the
# HTTP port) and SINK_DATA (the path of responses.toml). Users who bring a compose file or a Kubernetes manifest
# written for it keep those names: each one set here wins over the image's SMARTSINK_* default. With no policy
# named (SINK_DATA, SMARTSINK_POLICY), KumoMTA's policy path is served when a file is there (its compose file mounts
# ./policy on /opt/kumomta/etc/policy), else the image's /etc/smartsink/responses.toml; the ready line names the
# file. Then smartsink runs with the arguments given to the container (a --policy among them wins).
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
KUMO_POLICY=/opt/kumomta/etc/policy/responses.toml
if [ -n "${SINK_DATA+set}" ]; then
    export SMARTSINK_POLICY="$SINK_DATA"
elif [ -z "${SMARTSINK_POLICY:-}" ]; then
    if [ -f "$KUMO_POLICY" ]; then
        export SMARTSINK_POLICY="$KUMO_POLICY"
    else
        export SMARTSINK_POLICY=/etc/smartsink/responses.toml
    fi
fi
exec smartsink "$@"
