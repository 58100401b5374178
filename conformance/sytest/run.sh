#!/usr/bin/env bash
# SyTest (matrix-org's homeserver conformance suite) against a fresh Hearth.
#
# Starts the given (or the release) binary on a free loopback port with a new data directory,
# open registration, no rate limits and loopback allowed (SyTest's servers live there), runs
# ../shared/sytest/run.sh on it, and compares the failures with known-failures.txt beside this
# script: a failure not on the list fails the run; a listed test that passes is reported, so that
# the list only shrinks.
#
#   conformance/sytest/run.sh [path/to/hearth]
#
# Environment: SYTEST_SHARED (default ../shared/sytest), SYTEST_OUT (default a new temporary
# directory), and what ../shared/sytest/run.sh reads (SYTEST_GROUPS, SYTEST_TIMEOUT, ...).
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
HERE=$ROOT/conformance/sytest
SHARED=${SYTEST_SHARED:-$ROOT/../shared/sytest}
BIN=${1:-${CARGO_TARGET_DIR:-$ROOT/target}/release/hearth}
KNOWN=$HERE/known-failures.txt

[ -x "$BIN" ] || { echo "sytest: no hearth binary at $BIN (cargo build --release -p hearth)" >&2; exit 2; }
[ -x "$SHARED/run.sh" ] || { echo "sytest: no SyTest at $SHARED" >&2; exit 2; }

OUT=${SYTEST_OUT:-$(mktemp -d "${TMPDIR:-/tmp}/hearth-sytest.XXXXXX")}
mkdir -p "$OUT"
DATA=$(mktemp -d "${TMPDIR:-/tmp}/hearth-sytest-data.XXXXXX")
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

HEARTH_SERVER_NAME=localhost:$PORT HEARTH_LISTEN=127.0.0.1:$PORT HEARTH_DATA_DIR=$DATA \
  HEARTH_REGISTRATION=open HEARTH_RATE_LIMIT=false HEARTH_IP_RANGE_DENYLIST= \
  HEARTH_PUSH_CA_FILE="$SHARED/sytest/keys/ca.crt" \
  RUST_LOG=${RUST_LOG:-info,tantivy=warn,ruma_state_res=warn} \
  "$BIN" serve >"$OUT/hearth.log" 2>&1 &
PID=$!
cleanup() { kill "$PID" 2>/dev/null; wait "$PID" 2>/dev/null; rm -rf "$DATA"; }
trap cleanup EXIT
for _ in $(seq 1 100); do
  curl -fsS -m 2 "http://127.0.0.1:$PORT/_matrix/client/versions" >/dev/null 2>&1 && break
  kill -0 "$PID" 2>/dev/null || { echo "sytest: hearth exited; see $OUT/hearth.log" >&2; exit 2; }
  sleep 0.1
done

SYTEST_OUT=$OUT "$SHARED/run.sh" "http://127.0.0.1:$PORT" "localhost:$PORT" | tee "$OUT/summary.txt"
kill -0 "$PID" 2>/dev/null || { echo "sytest: hearth died during the run; see $OUT/hearth.log" >&2; exit 1; }

# shellcheck source=conformance/sytest/compare.sh
. "$HERE/compare.sh"
compare_with_known "$KNOWN" "$OUT"
