#!/bin/sh
# make vendor-plotly: rebuild trafficgen/stats/vendor/ from npm's plotly.js-basic-dist-min (Plotly's own partial
# bundle of the scatter, bar and pie traces: the HTML report draws lines, markers and bars only). The wheel carries
# the minified file and its licence, and each HTML report embeds it, so a report opens without a network.
# Change VERSION and INTEGRITY together (`npm view plotly.js-basic-dist-min@VERSION dist.integrity`).
set -eu
VERSION=4.1.1
INTEGRITY=sha512-1oNF8PeQx2hv/y7tqEVWKD3JGwn/MGEMQ8mL9HUwsaqG9FGy/OU5FHUHvzqbqxN4mnwZGI9abTiE775C4kkjMQ==
OUT="$(cd "$(dirname "$0")/.." && pwd)/trafficgen/stats/vendor"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
npm pack --silent "plotly.js-basic-dist-min@$VERSION" >/dev/null
TARBALL="plotly.js-basic-dist-min-$VERSION.tgz"
GOT="sha512-$(openssl dgst -sha512 -binary "$TARBALL" | base64 -w0)"
if [ "$GOT" != "$INTEGRITY" ]; then
    echo "vendor-plotly: $TARBALL has $GOT, expected $INTEGRITY" >&2
    exit 1
fi
tar xzf "$TARBALL"
cp package/plotly-basic.min.js "$OUT/plotly-basic.min.js"
cp package/LICENSE "$OUT/plotly-LICENSE"
echo "$VERSION" > "$OUT/plotly-VERSION"
echo "vendor-plotly: $OUT/plotly-basic.min.js is plotly.js-basic-dist-min $VERSION ($(wc -c < "$OUT/plotly-basic.min.js") bytes)"
