#!/usr/bin/env bash
# SyTest's federation and other server-side groups against a fresh Hearth.
#
# Like run.sh beside it, with the federation listener SyTest needs: Hearth serves the client API
# on plain HTTP and federation on TLS (a self-signed certificate for localhost made here), its
# server name is localhost:<TLS port>, and it trusts SyTest's own federation server without
# verifying its certificate (federation_verify_tls = false, for this run only). The failures are
# compared with known-failures-federation.txt: a failure not on the list fails the run, a listed
# test that passes is reported, so the list only shrinks.
#
#   conformance/sytest/run-federation.sh [path/to/hearth]
#
# Environment: SYTEST_SHARED (default ../shared/sytest), SYTEST_OUT (default a new temporary
# directory), and what ../shared/sytest/run-federation.sh reads (SYTEST_GROUPS, ...).
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
HERE=$ROOT/conformance/sytest
SHARED=${SYTEST_SHARED:-$ROOT/../shared/sytest}
BIN=${1:-${CARGO_TARGET_DIR:-$ROOT/target}/release/hearth}
KNOWN=$HERE/known-failures-federation.txt

[ -x "$BIN" ] || { echo "sytest: no hearth binary at $BIN (cargo build --release -p hearth)" >&2; exit 2; }
[ -x "$SHARED/run-federation.sh" ] || { echo "sytest: no SyTest at $SHARED" >&2; exit 2; }

OUT=${SYTEST_OUT:-$(mktemp -d "${TMPDIR:-/tmp}/hearth-sytest-fed.XXXXXX")}
mkdir -p "$OUT"
DATA=$(mktemp -d "${TMPDIR:-/tmp}/hearth-sytest-fed-data.XXXXXX")
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
PORT=$(free_port)
FED_PORT=$(free_port)
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=localhost \
  -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
  -keyout "$DATA/tls.key" -out "$DATA/tls.crt" >/dev/null 2>&1 \
  || { echo "sytest: openssl could not make a certificate" >&2; exit 2; }

HEARTH_SERVER_NAME=localhost:$FED_PORT HEARTH_LISTEN=127.0.0.1:$PORT HEARTH_DATA_DIR=$DATA \
  HEARTH_FEDERATION_LISTEN=127.0.0.1:$FED_PORT HEARTH_TLS_CERT=$DATA/tls.crt \
  HEARTH_TLS_KEY=$DATA/tls.key HEARTH_FEDERATION_VERIFY_TLS=false \
  HEARTH_REGISTRATION=open HEARTH_RATE_LIMIT=false HEARTH_IP_RANGE_DENYLIST= \
  HEARTH_PUSH_CA_FILE="$SHARED/sytest/keys/ca.crt" \
  RUST_LOG=${RUST_LOG:-info,tantivy=warn,ruma_state_res=warn} \
  "$BIN" serve >"$OUT/hearth.log" 2>&1 &
PID=$!
cleanup() { kill "$PID" 2>/dev/null; wait "$PID" 2>/dev/null; rm -rf "$DATA"; }
trap cleanup EXIT
for _ in $(seq 1 100); do
  curl -fsS -m 2 "http://127.0.0.1:$PORT/_matrix/client/versions" >/dev/null 2>&1 \
    && curl -fsSk -m 2 "https://127.0.0.1:$FED_PORT/_matrix/key/v2/server" >/dev/null 2>&1 && break
  kill -0 "$PID" 2>/dev/null || { echo "sytest: hearth exited; see $OUT/hearth.log" >&2; exit 2; }
  sleep 0.1
done

SYTEST_OUT=$OUT "$SHARED/run-federation.sh" "http://127.0.0.1:$PORT" "localhost:$FED_PORT" \
  | tee "$OUT/summary.txt"
kill -0 "$PID" 2>/dev/null || { echo "sytest: hearth died during the run; see $OUT/hearth.log" >&2; exit 1; }

# shellcheck source=conformance/sytest/compare.sh
. "$HERE/compare.sh"
compare_with_known "$KNOWN" "$OUT"
