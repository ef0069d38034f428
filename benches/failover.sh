#!/usr/bin/env bash
# Re-registration after a server replica stops (issue 17, rolling updates):
# `netbench failover` (benches/src/failover.rs) starts two release `connector
# server` replicas on loopback and 1,000 agents in its own process, each
# holding both; sends SIGTERM or SIGKILL to one replica, starts its
# replacement on the same address as soon as it has exited, and reports how
# long every agent took to hold a session with the replacement. One TSV line
# per run (signal × transport), a summary on stderr.
#
#   benches/failover.sh                                  # this checkout's server and agents
#   CONNECTOR=/path/to/older/connector NB=/path/to/older/netbench benches/failover.sh   # before/after
#   SIGNALS="term" TRANSPORTS="quic" FAILOVER_ARGS="--agents 100" benches/failover.sh
#   CONNECTOR_LOG=debug ...                              # the replicas' logs (in $WORK) at debug
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=benches/lib.sh
. "$ROOT/benches/lib.sh"
WORK="$(mktemp -d /tmp/connector-failover.XXXXXX)"
SERVER_BIN="${CONNECTOR:-}"
NB_BIN="${NB:-}"
ulimit -n 65536 2>/dev/null || true
# Every agent here comes from 127.0.0.1: lift the servers' cap on unadmitted
# connections per source address (256), which real nodes, each with its own
# address, do not share (older servers without the setting ignore it).
export CONNECTOR_MAX_UNADMITTED_PER_SOURCE="${CONNECTOR_MAX_UNADMITTED_PER_SOURCE:-100000}"
build
SERVER_BIN="${SERVER_BIN:-$CONNECTOR}"
NB="${NB_BIN:-$NB}"

"$SERVER_BIN" dev-pki --out "$WORK/pki" >/dev/null
echo "server: $SERVER_BIN; agents: $NB; logs: $WORK; $(uptime)" >&2

# UDP datagrams the kernel dropped for want of receive buffer, machine-wide.
udp_drops() { awk '/^Udp:/ && $2 ~ /^[0-9]/ { print $6 }' /proc/net/snmp; }

for signal in ${SIGNALS:-term kill}; do
	for transport in ${TRANSPORTS:-quic tcp}; do
		drops=$(udp_drops)
		# shellcheck disable=SC2086
		"$NB" failover --connector "$SERVER_BIN" --pki "$WORK/pki" --logs "$WORK/$signal-$transport" \
			--signal "$signal" --transport "$transport" --label "${LABEL:-}" ${FAILOVER_ARGS:-}
		echo "UDP receive-buffer drops during the run (machine-wide): $(($(udp_drops) - drops))" >&2
		free -m | awk '/^Mem:/ { print "memory after the run: " $3 " MiB used, " $7 " MiB available" }' >&2
	done
done
