#!/usr/bin/env bash
# A copy of the team's shared/bench/start-synapse.sh, kept in the repository so that the
# Synapse interop tests run on a clone with nothing beside it. Its PostgreSQL mode needs the
# team's start-postgres.sh beside it; the tests use SQLite.
# Start Synapse (the reference Matrix homeserver) locally as a performance anchor.
#
# Idempotent: creates the venv + installs matrix-synapse if missing, generates a config
# if missing, (re)writes the benchmark overrides, starts Synapse in the background unless
# it is already running, prints the PID and waits until /_matrix/client/versions answers.
#
# Env knobs (all optional):
#   ANCHOR_DIR        default $HOME/.cache/hearth-anchors
#   SYNAPSE_VENV      default $ANCHOR_DIR/synapse-venv
#   SYNAPSE_DATA      default $ANCHOR_DIR/synapse-data
#   SYNAPSE_VERSION   pip spec suffix, e.g. "==1.163.2" (default: latest on PyPI)
#   SYNAPSE_PORT      default 8008 (plain HTTP, client API only, bound to 127.0.0.1)
#   SYNAPSE_SERVER_NAME default localhost:$SYNAPSE_PORT (localhost:$SYNAPSE_FED_PORT in federation mode)
#   SYNAPSE_LOG_LEVEL default WARNING (the generated default is INFO, which logs every request)
#   PYTHON            default python3 (needs >= 3.10)
#
# Database (opt-in; unset = SQLite in $SYNAPSE_DATA/homeserver.db, as always):
#   SYNAPSE_DB        sqlite (default) | postgres: Synapse on the private PostgreSQL cluster of
#                     start-postgres.sh (started if not running; PG_DIR, PG_PORT etc. pass through),
#                     connected over its unix socket, psycopg2 installed into the venv if missing.
#                     Use a SYNAPSE_DATA of its own: the data dir and the database belong together.
#   SYNAPSE_PG_DB     default synapse: database and login role (created if missing, UTF8 + C
#                     collation); every Synapse-on-Postgres instance needs its own.
#   Example:
#     SYNAPSE_DB=postgres SYNAPSE_PORT=8010 SYNAPSE_DATA=$HOME/.cache/hearth-anchors/synapse-pg ./start-synapse.sh
#   Stop: kill Synapse (below), then Postgres: kill -INT "$(head -n1 $ANCHOR_DIR/pg/data/postmaster.pid)"
#
# Federation mode (opt-in; unset = the single-server benchmark setup above, federation off):
#   SYNAPSE_FED_PORT  e.g. 8448: adds a TLS listener with the `federation` and `keys` resources
#                     on 127.0.0.1:$SYNAPSE_FED_PORT, server_name defaults to
#                     localhost:$SYNAPSE_FED_PORT (explicit port: peers connect straight to it,
#                     no .well-known or SRV), outbound federation to loopback is allowed and
#                     certificates of peers are not verified (federation_verify_certificates: false).
#                     The client listener stays plain HTTP on $SYNAPSE_PORT.
#   SYNAPSE_FED_CA_DIR default $ANCHOR_DIR/fed-ca: a small test CA (ca.crt, ca.key) shared by all
#                     peers; each server's certificate ($SYNAPSE_DATA/fed-tls.{crt,key}) is issued by
#                     it for DNS:localhost, IP:127.0.0.1, IP:::1. A peer that cannot switch off
#                     verification can trust $SYNAPSE_FED_CA_DIR/ca.crt instead.
#   SYNAPSE_FED_VERIFY default 0; 1 = verify peers' certificates against $SYNAPSE_FED_CA_DIR/ca.crt
#                     (federation_custom_ca_list) instead of switching verification off.
#   Example (two peers):
#     SYNAPSE_PORT=8011 SYNAPSE_FED_PORT=8448 SYNAPSE_DATA=$HOME/.cache/hearth-anchors/fedA ./start-synapse.sh
#     SYNAPSE_PORT=8012 SYNAPSE_FED_PORT=8449 SYNAPSE_DATA=$HOME/.cache/hearth-anchors/fedB ./start-synapse.sh
#
# Stop it with:  kill "$(cat $SYNAPSE_DATA/synapse.pid)"
set -euo pipefail

ANCHOR_DIR=${ANCHOR_DIR:-$HOME/.cache/hearth-anchors}
SYNAPSE_VENV=${SYNAPSE_VENV:-$ANCHOR_DIR/synapse-venv}
SYNAPSE_DATA=${SYNAPSE_DATA:-$ANCHOR_DIR/synapse-data}
SYNAPSE_VERSION=${SYNAPSE_VERSION:-}
SYNAPSE_PORT=${SYNAPSE_PORT:-8008}
SYNAPSE_FED_PORT=${SYNAPSE_FED_PORT:-}
SYNAPSE_FED_CA_DIR=${SYNAPSE_FED_CA_DIR:-$ANCHOR_DIR/fed-ca}
SYNAPSE_FED_VERIFY=${SYNAPSE_FED_VERIFY:-0}
if [ -n "$SYNAPSE_FED_PORT" ]; then
  SYNAPSE_SERVER_NAME=${SYNAPSE_SERVER_NAME:-localhost:$SYNAPSE_FED_PORT}
else
  SYNAPSE_SERVER_NAME=${SYNAPSE_SERVER_NAME:-localhost:$SYNAPSE_PORT}
fi
SYNAPSE_LOG_LEVEL=${SYNAPSE_LOG_LEVEL:-WARNING}
SYNAPSE_DB=${SYNAPSE_DB:-sqlite}
SYNAPSE_PG_DB=${SYNAPSE_PG_DB:-synapse}
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
case "$SYNAPSE_DB" in
  sqlite|sqlite3|postgres) ;;
  *) echo "[start-synapse] SYNAPSE_DB must be sqlite or postgres, not '$SYNAPSE_DB'" >&2; exit 1 ;;
esac
PYTHON=${PYTHON:-python3}
URL="http://127.0.0.1:$SYNAPSE_PORT"
PIDFILE="$SYNAPSE_DATA/synapse.pid"

mkdir -p "$ANCHOR_DIR" "$SYNAPSE_DATA"

# 1. venv + install
if [ ! -x "$SYNAPSE_VENV/bin/python" ]; then
  echo "[start-synapse] creating venv $SYNAPSE_VENV" >&2
  "$PYTHON" -m venv "$SYNAPSE_VENV"
fi
if ! "$SYNAPSE_VENV/bin/python" -c 'import synapse' 2>/dev/null; then
  echo "[start-synapse] pip install matrix-synapse$SYNAPSE_VERSION" >&2
  "$SYNAPSE_VENV/bin/pip" install -q "matrix-synapse$SYNAPSE_VERSION"
fi
# the benchmark harness needs aiohttp; it is a synapse dependency anyway, make sure it is there
"$SYNAPSE_VENV/bin/python" -c 'import aiohttp' 2>/dev/null || "$SYNAPSE_VENV/bin/pip" install -q aiohttp
# the acceptance suite (tools/acceptance/accept.py) drives the server with matrix-nio; it only adds
# packages Synapse does not use (checked with pip --dry-run), so it shares this venv
"$SYNAPSE_VENV/bin/python" -c 'import nio' 2>/dev/null || "$SYNAPSE_VENV/bin/pip" install -q matrix-nio
# Synapse's PostgreSQL driver (the matrix-synapse[postgres] extra)
if [ "$SYNAPSE_DB" = postgres ]; then
  "$SYNAPSE_VENV/bin/python" -c 'import psycopg2' 2>/dev/null || "$SYNAPSE_VENV/bin/pip" install -q psycopg2-binary
fi
VERSION=$("$SYNAPSE_VENV/bin/python" -c 'import synapse; print(synapse.__version__)')
echo "[start-synapse] matrix-synapse $VERSION" >&2

# 2. generate base config (once)
CFG="$SYNAPSE_DATA/homeserver.yaml"
if [ ! -f "$CFG" ]; then
  echo "[start-synapse] generating config $CFG (server_name $SYNAPSE_SERVER_NAME)" >&2
  (cd "$SYNAPSE_DATA" && "$SYNAPSE_VENV/bin/python" -m synapse.app.homeserver \
      --server-name "$SYNAPSE_SERVER_NAME" \
      --config-path "$CFG" \
      --data-directory "$SYNAPSE_DATA" \
      --generate-config --report-stats=no)
fi

# 3. log level (the generated log config logs every request at INFO)
LOGCFG=$(ls "$SYNAPSE_DATA"/*.log.config 2>/dev/null | head -n1 || true)
if [ -n "$LOGCFG" ]; then
  sed -i -E "/^(root|    synapse\.storage\.SQL):/,/level:/ s/level: [A-Z]+/level: $SYNAPSE_LOG_LEVEL/" "$LOGCFG"
  sed -i -E "/^root:/,/level:/ s/level: [A-Z]+/level: $SYNAPSE_LOG_LEVEL/" "$LOGCFG"
fi

# 3b. federation mode: test CA (shared) + a certificate for "localhost" issued by it (once)
FED_LISTENER=""
FED_CONFIG=""
if [ -n "$SYNAPSE_FED_PORT" ]; then
  CA_CRT="$SYNAPSE_FED_CA_DIR/ca.crt"; CA_KEY="$SYNAPSE_FED_CA_DIR/ca.key"
  TLS_CRT="$SYNAPSE_DATA/fed-tls.crt"; TLS_KEY="$SYNAPSE_DATA/fed-tls.key"
  if [ ! -f "$CA_CRT" ] || [ ! -f "$CA_KEY" ]; then
    echo "[start-synapse] generating test CA $CA_CRT" >&2
    mkdir -p "$SYNAPSE_FED_CA_DIR"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -sha256 -days 3650 \
      -keyout "$CA_KEY" -out "$CA_CRT" -subj "/CN=hearth-anchors federation test CA" \
      -addext "basicConstraints=critical,CA:TRUE" \
      -addext "keyUsage=critical,keyCertSign,cRLSign" \
      -addext "subjectKeyIdentifier=hash" 2>/dev/null
  fi
  if [ ! -f "$TLS_CRT" ] || [ ! -f "$TLS_KEY" ] || \
     ! openssl verify -CAfile "$CA_CRT" "$TLS_CRT" >/dev/null 2>&1; then
    echo "[start-synapse] generating TLS certificate $TLS_CRT (localhost, issued by the test CA)" >&2
    EXT=$(mktemp)
    printf '%s\n' "basicConstraints=critical,CA:FALSE" \
      "keyUsage=critical,digitalSignature,keyEncipherment" \
      "extendedKeyUsage=serverAuth,clientAuth" \
      "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1" \
      "subjectKeyIdentifier=hash" "authorityKeyIdentifier=keyid" >"$EXT"
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -sha256 \
      -keyout "$TLS_KEY" -out "$TLS_CRT.csr" -subj "/CN=localhost" 2>/dev/null
    openssl x509 -req -in "$TLS_CRT.csr" -CA "$CA_CRT" -CAkey "$CA_KEY" -CAcreateserial \
      -days 3650 -sha256 -extfile "$EXT" -out "$TLS_CRT" 2>/dev/null
    rm -f "$TLS_CRT.csr" "$EXT"
  fi
  FED_LISTENER="
  - port: $SYNAPSE_FED_PORT
    tls: true
    type: http
    x_forwarded: false
    bind_addresses: ['127.0.0.1']
    resources:
      - names: [federation, keys]
        compress: false"
  if [ "$SYNAPSE_FED_VERIFY" = 1 ]; then
    VERIFY="federation_verify_certificates: true
federation_custom_ca_list: ['$CA_CRT']"
  else
    VERIFY="federation_verify_certificates: false"
  fi
  FED_CONFIG="# federation mode (SYNAPSE_FED_PORT=$SYNAPSE_FED_PORT): TLS federation listener above, peers
# are other loopback servers named localhost:PORT with certificates from the test CA
server_name: '$SYNAPSE_SERVER_NAME'
tls_certificate_path: '$TLS_CRT'
tls_private_key_path: '$TLS_KEY'
$VERIFY
# no notary: fetch each peer's signing keys from the peer itself
trusted_key_servers: []
suppress_key_server_warning: true
# outbound federation to loopback: ip_range_whitelist (above) lets 127.0.0.1 and ::1 through
# ip_range_blacklist; federation_ip_range_blacklist is deliberately NOT set, so federation uses
# ip_range_blacklist + ip_range_whitelist (setting it would drop the whitelist for federation).
# federation_domain_whitelist is not set either: any peer may federate.
allow_public_rooms_over_federation: true
# retry a peer quickly after a failure (the defaults back off for minutes)
federation:
  client_timeout: 20s
  max_short_retry_delay: 2s
  max_long_retry_delay: 10s
  destination_min_retry_interval: 1s
  destination_retry_multiplier: 2
  destination_max_retry_interval: 10s"
else
  FED_CONFIG="# no outbound traffic: no key servers, no federation
trusted_key_servers: []
suppress_key_server_warning: true
federation_domain_whitelist: []"
fi

# 3c. database: SQLite file (default) or the private PostgreSQL cluster (started here if needed)
if [ "$SYNAPSE_DB" = postgres ]; then
  PG_PID=$("$SCRIPT_DIR/start-postgres.sh" "$SYNAPSE_PG_DB")
  PG_DIR_REAL=$(cd -P "${PG_DIR:-$ANCHOR_DIR/pg}" && pwd)
  echo "[start-synapse] PostgreSQL (pid $PG_PID): database $SYNAPSE_PG_DB" >&2
  DB_CONFIG="database:
  name: psycopg2
  args:
    user: $SYNAPSE_PG_DB
    dbname: $SYNAPSE_PG_DB
    host: '$PG_DIR_REAL/run'
    port: ${PG_PORT:-5433}
    # Synapse's documented defaults, stated explicitly
    cp_min: 5
    cp_max: 10"
else
  DB_CONFIG="database:
  name: sqlite3
  args:
    database: $SYNAPSE_DATA/homeserver.db"
fi

# 4. benchmark overrides (re-written every time; later -c files win per top-level key)
OVR="$SYNAPSE_DATA/bench-overrides.yaml"
BIG='{per_second: 1000000, burst_count: 1000000}'
cat > "$OVR" <<EOF
# Written by start-synapse.sh: benchmark overrides on top of the generated homeserver.yaml.
listeners:
  - port: $SYNAPSE_PORT
    tls: false
    type: http
    x_forwarded: false
    bind_addresses: ['127.0.0.1']
    resources:
      - names: [client]
        compress: false$FED_LISTENER
$DB_CONFIG
enable_registration: true
enable_registration_without_verification: true
report_stats: false
# features the acceptance suite (tools/acceptance/accept.py) checks, explicit so that they do
# not depend on Synapse's shipped defaults:
#  - the push gateway of the pusher test listens on 127.0.0.1, which Synapse's default
#    ip_range_blacklist blocks for outbound requests: allow loopback only
ip_range_whitelist: ['127.0.0.1/32', '::1/128']
#  - Synapse's default room_list_publication_rules is empty = nobody may publish a room to the
#    public room directory (createRoom visibility=public silently stays unlisted): allow it
room_list_publication_rules:
  - action: allow
#  - 100 MB uploads (Synapse default is 50M)
max_upload_size: 100M
#  - presence and server-side search (both default on in Synapse; stated for clarity)
presence:
  enabled: true
enable_search: true
$FED_CONFIG
# effectively disable rate limiting so the benchmark measures the server, not the limiter
rc_message: $BIG
rc_registration: $BIG
rc_registration_token_validity: $BIG
rc_login:
  address: $BIG
  account: $BIG
  failed_attempts: $BIG
rc_joins:
  local: $BIG
  remote: $BIG
rc_joins_per_room: $BIG
rc_invites:
  per_room: $BIG
  per_user: $BIG
  per_issuer: $BIG
rc_third_party_invite: $BIG
rc_3pid_validation: $BIG
rc_admin_redaction: $BIG
rc_key_requests: $BIG
rc_presence:
  per_user: $BIG
rc_delayed_event_mgmt: $BIG
rc_room_creation: $BIG
rc_reports: $BIG
rc_user_directory: $BIG
rc_profile: $BIG
rc_media_create: $BIG
rc_federation:
  window_size: 1000
  sleep_limit: 1000000
  sleep_delay: 1
  reject_limit: 1000000
  concurrent: 1000000
EOF

# 5. start (unless already running)
if [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
  echo "[start-synapse] already running" >&2
else
  if curl -fsS -m 2 "$URL/_matrix/client/versions" >/dev/null 2>&1; then
    echo "[start-synapse] something else already answers on $URL; not starting" >&2
    exit 1
  fi
  if [ -n "$SYNAPSE_FED_PORT" ] && curl -ksS -m 2 -o /dev/null "https://127.0.0.1:$SYNAPSE_FED_PORT/" 2>/dev/null; then
    echo "[start-synapse] something else already listens on 127.0.0.1:$SYNAPSE_FED_PORT; not starting" >&2
    exit 1
  fi
  echo "[start-synapse] starting Synapse on $URL (log $SYNAPSE_DATA/stdout.log)" >&2
  cd "$SYNAPSE_DATA"
  nohup "$SYNAPSE_VENV/bin/python" -m synapse.app.homeserver -c "$CFG" -c "$OVR" \
      >"$SYNAPSE_DATA/stdout.log" 2>&1 </dev/null &
  echo $! >"$PIDFILE"
fi
PID=$(cat "$PIDFILE")

# 6. wait for readiness
for i in $(seq 1 240); do
  if curl -fsS -m 2 "$URL/_matrix/client/versions" >/dev/null 2>&1 && { [ -z "$SYNAPSE_FED_PORT" ] ||
     curl -kfsS -m 2 "https://127.0.0.1:$SYNAPSE_FED_PORT/_matrix/key/v2/server" >/dev/null 2>&1; }; then
    [ -n "$SYNAPSE_FED_PORT" ] && echo "[start-synapse] federation: $SYNAPSE_SERVER_NAME (TLS on 127.0.0.1:$SYNAPSE_FED_PORT)" >&2
    echo "[start-synapse] ready after ~$((i / 4))s: $URL" >&2
    echo "$PID"
    exit 0
  fi
  if ! kill -0 "$PID" 2>/dev/null; then
    echo "[start-synapse] Synapse (pid $PID) exited; last log lines:" >&2
    tail -n 40 "$SYNAPSE_DATA/stdout.log" >&2 || true
    exit 1
  fi
  sleep 0.25
done
echo "[start-synapse] timed out waiting for $URL (pid $PID)" >&2
exit 1
