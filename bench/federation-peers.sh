#!/usr/bin/env bash
# Starts COUNT (default 2) Hearths that federate with each other over TLS on loopback, for the
# `federation` scenario of hearth-bench (see docs/benchmark.md, "Federation").
#
# Each server i (1..COUNT) listens for clients on 127.0.0.1:$((CLIENT_PORT+i-1)) and for
# federation on 127.0.0.1:$((FED_PORT+i-1)), with server name localhost:<its federation port>,
# open registration, rate limits off and a fresh data directory under $WORK_DIR.
#
# The TLS certificate (for localhost and 127.0.0.1) is issued by the test CA in $CA_DIR, created
# if missing. Its default is the CA that ../shared/bench/start-synapse.sh uses in federation
# mode, so a Synapse started by that script and these Hearths trust one another
# (HEARTH_FEDERATION_CA_FILE is that CA).
#
# Environment:
#   HEARTH_BIN   default ./target/release/hearth
#   COUNT        default 2
#   CLIENT_PORT  default 8021
#   FED_PORT     default 8441
#   CA_DIR       default $HOME/.cache/hearth-anchors/fed-ca (ca.crt + ca.key)
#   WORK_DIR     default a new mktemp -d: certificate, data directories, logs, pids
#
# Prints one line per server: "url=... server_name=... pid=..." on stdout, and how to stop them
# on stderr: `bash $WORK_DIR/stop.sh` kills the servers and deletes $WORK_DIR.
set -euo pipefail

HEARTH_BIN=${HEARTH_BIN:-./target/release/hearth}
COUNT=${COUNT:-2}
CLIENT_PORT=${CLIENT_PORT:-8021}
FED_PORT=${FED_PORT:-8441}
CA_DIR=${CA_DIR:-$HOME/.cache/hearth-anchors/fed-ca}
WORK_DIR=${WORK_DIR:-$(mktemp -d /tmp/hearth-fed.XXXXXX)}
mkdir -p "$WORK_DIR" "$CA_DIR"
HEARTH_BIN=$(realpath "$HEARTH_BIN")

CA_CRT=$CA_DIR/ca.crt; CA_KEY=$CA_DIR/ca.key
if [ ! -f "$CA_CRT" ] || [ ! -f "$CA_KEY" ]; then
  echo "[federation-peers] generating test CA $CA_CRT" >&2
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -sha256 -days 3650 \
    -keyout "$CA_KEY" -out "$CA_CRT" -subj "/CN=hearth-anchors federation test CA" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -addext "subjectKeyIdentifier=hash" 2>/dev/null
fi
CRT=$WORK_DIR/tls.crt; KEY=$WORK_DIR/tls.key; EXT=$WORK_DIR/tls.ext
printf '%s\n' "basicConstraints=critical,CA:FALSE" \
  "keyUsage=critical,digitalSignature,keyEncipherment" \
  "extendedKeyUsage=serverAuth,clientAuth" \
  "subjectAltName=DNS:localhost,IP:127.0.0.1" \
  "subjectKeyIdentifier=hash" "authorityKeyIdentifier=keyid" >"$EXT"
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -sha256 \
  -keyout "$KEY" -out "$CRT.csr" -subj "/CN=localhost" 2>/dev/null
openssl x509 -req -in "$CRT.csr" -CA "$CA_CRT" -CAkey "$CA_KEY" -CAcreateserial \
  -days 365 -sha256 -extfile "$EXT" -out "$CRT" 2>/dev/null
rm -f "$CRT.csr" "$EXT"

{
  echo "#!/usr/bin/env bash"
  echo "# Stops the Hearths federation-peers.sh started and deletes $WORK_DIR."
} >"$WORK_DIR/stop.sh"
for i in $(seq 1 "$COUNT"); do
  cport=$((CLIENT_PORT + i - 1)); fport=$((FED_PORT + i - 1))
  data=$WORK_DIR/data$i; mkdir -p "$data"
  HEARTH_SERVER_NAME=localhost:$fport \
  HEARTH_LISTEN=127.0.0.1:$cport \
  HEARTH_FEDERATION_LISTEN=127.0.0.1:$fport \
  HEARTH_TLS_CERT=$CRT HEARTH_TLS_KEY=$KEY \
  HEARTH_FEDERATION_CA_FILE=$CA_CRT \
  HEARTH_DATA_DIR=$data HEARTH_RATE_LIMIT=false HEARTH_REGISTRATION=open \
  HEARTH_IP_RANGE_DENYLIST= \
    nohup "$HEARTH_BIN" serve >"$WORK_DIR/hearth$i.log" 2>&1 &
  pid=$!
  echo "kill $pid 2>/dev/null; while kill -0 $pid 2>/dev/null; do sleep 0.1; done" >>"$WORK_DIR/stop.sh"
  for _ in $(seq 1 100); do
    curl -fsS -m 1 "http://127.0.0.1:$cport/_matrix/client/versions" >/dev/null 2>&1 && break
    kill -0 "$pid" 2>/dev/null || { echo "[federation-peers] hearth $i exited:" >&2; tail -20 "$WORK_DIR/hearth$i.log" >&2; exit 1; }
    sleep 0.1
  done
  echo "url=http://127.0.0.1:$cport server_name=localhost:$fport pid=$pid"
done
echo "rm -rf '$WORK_DIR'" >>"$WORK_DIR/stop.sh"
echo "[federation-peers] logs in $WORK_DIR; stop with: bash $WORK_DIR/stop.sh" >&2
