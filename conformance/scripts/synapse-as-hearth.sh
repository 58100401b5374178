#!/bin/bash
# Reference check: runs Synapse behind the Hearth env-var interface, so the
# suite can be run against it to tell test bugs from server bugs:
#   python3 -m venv /tmp/synvenv && /tmp/synvenv/bin/pip install matrix-synapse
#   SYNAPSE_PYTHON=/tmp/synvenv/bin/python \
#   HEARTH_BIN=$PWD/conformance/scripts/synapse-as-hearth.sh cargo test -p hearth-conformance --no-fail-fast
# Expected differences: HEARTH_MAX_REQUEST_BYTES is not honoured (no 413) and
# Synapse answers M_UNKNOWN instead of M_BAD_JSON for wrongly typed fields.
set -e
D="$HEARTH_DATA_DIR"; PORT="${HEARTH_LISTEN##*:}"
if [ "$HEARTH_RATE_LIMIT" = "true" ]; then PS="${HEARTH_RATE_LIMIT_PER_SECOND:-1}"; B="${HEARTH_RATE_LIMIT_BURST:-3}"; else PS=100000; B=100000; fi
RL="{per_second: $PS, burst_count: $B}"
cat > "$D/homeserver.yaml" <<YAML
server_name: ${HEARTH_SERVER_NAME:-localhost}
pid_file: $D/hs.pid
listeners:
  - port: $PORT
    bind_addresses: ['127.0.0.1']
    type: http
    x_forwarded: false
    resources: [{names: [client], compress: false}]
database: {name: sqlite3, args: {database: $D/homeserver.db}}
media_store_path: $D/media
signing_key_path: $D/signing.key
report_stats: false
enable_registration: true
enable_registration_without_verification: true
macaroon_secret_key: "test-macaroon-secret"
form_secret: "test-form-secret"
registration_shared_secret: "test-shared-secret"
trusted_key_servers: []
suppress_key_server_warning: true
rc_message: $RL
rc_registration: $RL
rc_login: {address: $RL, account: $RL, failed_attempts: $RL}
rc_joins: {local: $RL, remote: $RL}
rc_invites: {per_room: $RL, per_user: $RL, per_issuer: $RL}
rc_3pid_validation: $RL
rc_admin_redaction: $RL
rc_joins_per_room: $RL
YAML
cd "$D"
"${SYNAPSE_PYTHON:-python3}" -m synapse.app.homeserver -c "$D/homeserver.yaml" --generate-keys >/dev/null 2>&1 || true
exec "${SYNAPSE_PYTHON:-python3}" -m synapse.app.homeserver -c "$D/homeserver.yaml"
