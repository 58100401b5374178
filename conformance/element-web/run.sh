#!/usr/bin/env bash
# Element Web, a real client in a real browser, against a fresh Hearth.
#
# Installs what is missing (Debian's chromium; playwright-core from package-lock.json into
# node_modules/ here; no browser download), then runs test.mjs: it starts the given (or the
# release) binary on a free loopback port with a new data directory and open registration, serves
# Element's files with a config.json pointing at it, and in headless Chromium signs up through
# the UI, creates a room, sends a message and sees it again after a reload. A 5xx from the
# homeserver, an uncaught page error or an error dialog fails the run; the failing step is named,
# with a screenshot and the logs in the output directory.
#
#   conformance/element-web/run.sh [path/to/hearth]
#
# Environment: ELEMENT_WEB (the built webapp folder, default ../shared/element-web/webapp),
# ELEMENT_WEB_OUT (default a new temporary directory), CHROMIUM (default /usr/bin/chromium),
# ELEMENT_HEADED=1 to watch it in a window.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
HERE=$ROOT/conformance/element-web
WEBAPP=${ELEMENT_WEB:-$ROOT/../shared/element-web/webapp}
BIN=${1:-${CARGO_TARGET_DIR:-$ROOT/target}/release/hearth}

[ -x "$BIN" ] || { echo "element-web: no hearth binary at $BIN (cargo build --release -p hearth)" >&2; exit 2; }
[ -f "$WEBAPP/index.html" ] || { echo "element-web: no Element Web build at $WEBAPP (set ELEMENT_WEB)" >&2; exit 2; }
command -v node >/dev/null || { echo "element-web: needs node (20 or later) and npm" >&2; exit 2; }

export CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
if [ ! -x "$CHROMIUM" ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq chromium >/dev/null
fi
# playwright-core drives the browser above and downloads none of its own.
if ! (cd "$HERE" && npm ls playwright-core >/dev/null 2>&1); then
  (cd "$HERE" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error)
fi

OUT=${ELEMENT_WEB_OUT:-$(mktemp -d "${TMPDIR:-/tmp}/hearth-element-web.XXXXXX")}
mkdir -p "$OUT"
echo "element-web: output in $OUT"
exec node "$HERE/test.mjs" "$BIN" "$WEBAPP" "$OUT"
