#!/usr/bin/env bash
# The server's agent port under anonymous attack (issue 16): a release
# `connector server` on loopback (QUIC and the TCP fallback listener), then
# `netbench attack` (benches/src/attack.rs): half-open QUIC handshakes, idle
# TCP connections and garbage datagrams from 16 attacker addresses while 100
# agents register one after another; then 1,000 unauthenticated connections
# that try to park data. Prints one line per phase.
#
#   benches/attack.sh                                  # this checkout's server
#   CONNECTOR=/path/to/older/connector benches/attack.sh   # another build's server (before/after)
#   ATTACK_ARGS="--agents 20 --parkers 0" benches/attack.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=benches/lib.sh
. "$ROOT/benches/lib.sh"
WORK="$(mktemp -d /tmp/connector-attack.XXXXXX)"
SERVER_BIN="${CONNECTOR:-}"
ulimit -n 65536 2>/dev/null || true
build
SERVER_BIN="${SERVER_BIN:-$CONNECTOR}"
trap stop_all EXIT

"$CONNECTOR" dev-pki --out "$WORK/pki" >/dev/null
echo "server: $SERVER_BIN" >&2

# run_phase PHASE: a fresh server (so that its RSS is measured from idle), then that phase.
run_phase() {
	start "server-$1" "$SERVER_BIN" server --listen 127.0.0.1:18443 --tcp-listen 127.0.0.1:18444 \
		--cert "$WORK/pki/server.pem" --key "$WORK/pki/server-key.pem" --tokens "$WORK/pki/tokens"
	local server=$LAST
	until grep -q "accepting agents" "$WORK/server-$1.log" 2>/dev/null; do sleep 0.05; done
	sleep 1 # the idle RSS settles
	# shellcheck disable=SC2086
	"$NB" attack --phase "$1" --quic 127.0.0.1:18443 --tcp 127.0.0.1:18444 --ca "$WORK/pki/ca.pem" \
		--token-file "$WORK/pki/node-a.token" --server-pid "$server" ${ATTACK_ARGS:-}
	stop "$server"
	wait "$server" 2>/dev/null || true
}
run_phase attack
run_phase park
