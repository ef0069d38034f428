#!/usr/bin/env bash
# WAN rows at the IP level, for every peer: direct TCP, raw QUIC (default controller, Cubic),
# connector (QUIC with its default controller, QUIC with Cubic, TCP fallback), rathole (tcp, noise) and Konnectivity
# all cross the same impaired path. Two network namespaces, "control plane"
# (A, 10.77.0.1) and "node" (B, 10.77.0.2), each hold a TUN device;
# `netbench tun-impair` copies IP packets between the two with WAN_DELAY_MS of
# delay and WAN_LOSS of loss in each direction (this kernel has no netem).
# Client, servers and tunnel entry points run in A; agents, tunnel clients
# and the target service run in B, so only the tunnel (or, for direct TCP and
# raw QUIC, the connection itself) crosses the path.
#
#   benches/wan-ip.sh                  # prints a markdown table
#   WAN_SECS=15 benches/wan-ip.sh
#   WAN_REPEAT=10 benches/wan-ip.sh    # raw QUIC and connector-quic ten times each (fresh processes)
#
# Row labels are those of compare.sh, so the table gives ratios to direct TCP
# and rathole-noise on this path. Needs root (network namespaces, TUN).
# compare.sh runs it at its end with
# the same knobs; peers as in compare.sh (RATHOLE, KONN_BIN).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=benches/lib.sh
. "$ROOT/benches/lib.sh"
WORK="$(mktemp -d /tmp/connector-wanip.XXXXXX)"
OUT="$WORK/results.tsv"
A=cnwan-a
B=cnwan-b
IP_A=10.77.0.1
IP_B=10.77.0.2

if [ "$(id -u)" -ne 0 ] || [ ! -c /dev/net/tun ]; then
	echo "# wan-ip: needs root and /dev/net/tun; IP-level WAN rows skipped" >&2
	exit 0
fi
build
cleanup() {
	stop_all
	ip netns del "$A" 2>/dev/null || true
	ip netns del "$B" 2>/dev/null || true
}
trap cleanup EXIT

inA() { ip netns exec "$A" "$@"; }
inB() { ip netns exec "$B" "$@"; }
note() { echo "# $*" >&2; }

# The path: a TUN device in each namespace, joined by the forwarder.
for ns in "$A" "$B"; do
	ip netns del "$ns" 2>/dev/null || true
	ip netns add "$ns"
	ip netns exec "$ns" ip link set lo up
	ip netns exec "$ns" ip tuntap add dev tunw mode tun
done
start tun-impair "$NB" tun-impair --a-netns "/var/run/netns/$A" --a-dev tunw --b-netns "/var/run/netns/$B" \
	--b-dev tunw --delay-ms "$WAN_DELAY_MS" --loss "$WAN_LOSS"
inA ip addr add "$IP_A/32" dev tunw
inA ip link set tunw up
inA ip route add "$IP_B/32" dev tunw
inB ip addr add "$IP_B/32" dev tunw
inB ip link set tunw up
inB ip route add "$IP_A/32" dev tunw
note "wan-ip: $IP_A ($A) <-> $IP_B ($B), +$WAN_DELAY_MS ms and $WAN_LOSS loss each way"

start target ip netns exec "$B" "$NB" serve --listen "$IP_B:17101"
TARGET_PID=$LAST
inA "$NB" probe --addr "$IP_B:17101"
"$CONNECTOR" dev-pki --out "$WORK/pki" --server-name localhost --server-name 127.0.0.1 --server-name "$IP_A" >/dev/null

row() { inA "$NB" run --secs "$WAN_SECS" --bulk-and-rtt-only --out "$OUT" --endpoint-pids "$TARGET_PID" "$@"; }

# Direct TCP and raw QUIC across the path: the limits.
row --label direct-tcp --addr "$IP_B:17101"
raw_quic_row() {
	local label="$1" port="$2"
	shift 2
	rm -f "$WORK/$label-ca.pem"
	start "$label" ip netns exec "$B" "$NB" quic-serve --listen "$IP_B:$port" --ca-out "$WORK/$label-ca.pem" "$@"
	local server=$LAST
	until [ -s "$WORK/$label-ca.pem" ]; do sleep 0.05; done # written after the bind
	inA "$NB" quic-run --label "$label" --addr "$IP_B:$port" --ca "$WORK/$label-ca.pem" --pids "$server" \
		--secs "$WAN_SECS" --bulk-and-rtt-only --out "$OUT" "$@"
	stop "$server"
	wait "$server" 2>/dev/null || true
}
for run in $(seq 1 "$WAN_REPEAT"); do raw_quic_row "$(repeat_label raw-quic "$run")" 17102; done
raw_quic_row raw-quic-cubic 17103 --congestion-control cubic

# connector: server (with its --forward entry) in A, agent in B.
connector_row() {
	local label="$1" port="$2"
	shift 2
	local server_flags=() agent_flags=()
	while [ $# -gt 0 ] && [ "$1" != -- ]; do server_flags+=("$1"); shift; done
	[ $# -gt 0 ] && shift
	agent_flags=("$@")
	start "$label-server" ip netns exec "$A" "$CONNECTOR" server --listen "$IP_A:$port" --cert "$WORK/pki/server.pem" \
		--key "$WORK/pki/server-key.pem" --tokens "$WORK/pki/tokens" \
		--forward "127.0.0.1:$((port + 1))=$IP_B:17101,agent=node-a" "${server_flags[@]}"
	local server=$LAST
	start "$label-agent" ip netns exec "$B" "$CONNECTOR" agent --server "$IP_A:$port" --server-name localhost \
		--ca "$WORK/pki/ca.pem" --agent-id node-a --token-file "$WORK/pki/node-a.token" \
		--identifiers host=node-a --allow "$IP_B/32" "${agent_flags[@]}"
	local agent=$LAST
	inA "$NB" probe --addr "127.0.0.1:$((port + 1))"
	row --label "$label" --addr "127.0.0.1:$((port + 1))" --pids "$server,$agent"
	stop "$server" "$agent"
	wait "$server" "$agent" 2>/dev/null || true
}
for run in $(seq 1 "$WAN_REPEAT"); do connector_row "$(repeat_label connector-quic "$run")" 17443 -- --transport quic; done
connector_row connector-quic-cubic 17445 --congestion-control cubic -- --transport quic --congestion-control cubic
connector_row connector-tcp 17447 -- --transport tcp

# rathole: server in A (its service port on A's loopback), client in B.
if [ -x "$RATHOLE" ]; then
	for transport in tcp noise; do
		write_rathole_configs "$RATHOLE" "$transport" "$IP_A:17120" 127.0.0.1:17121 "$IP_B:17101"
		start "rathole-server-$transport" ip netns exec "$A" env RUST_LOG=warn "$RATHOLE" --server "$WORK/rathole-server-$transport.toml"
		rserver=$LAST
		start "rathole-client-$transport" ip netns exec "$B" env RUST_LOG=warn "$RATHOLE" --client "$WORK/rathole-client-$transport.toml"
		rclient=$LAST
		inA "$NB" probe --addr 127.0.0.1:17121
		row --label "rathole-$transport" --addr 127.0.0.1:17121 --pids "$rserver,$rclient"
		stop "$rserver" "$rclient"
		wait "$rserver" "$rclient" 2>/dev/null || true
	done
else
	note "rathole: not found at $RATHOLE, rows skipped"
fi

# Konnectivity: server (HTTP CONNECT on a Unix socket) in A, agent in B.
if [ -x "$KONN_BIN/konnectivity-server" ] && [ -x "$KONN_BIN/konnectivity-agent" ]; then
	start konnectivity-server ip netns exec "$A" "$KONN_BIN/konnectivity-server" --mode http-connect --uds-name "$WORK/konn.sock" \
		--server-port 0 --agent-port 17131 --admin-port 17132 --health-port 17133 \
		--cluster-cert "$WORK/pki/server.pem" --cluster-key "$WORK/pki/server-key.pem" --server-count 1
	kserver=$LAST
	start konnectivity-agent ip netns exec "$B" "$KONN_BIN/konnectivity-agent" --proxy-server-host "$IP_A" \
		--proxy-server-port 17131 --ca-cert "$WORK/pki/ca.pem" --admin-server-port 17134 \
		--health-server-port 17135 --agent-identifiers "host=node-a,ipv4=$IP_B"
	kagent=$LAST
	inA "$NB" probe --addr "unix:$WORK/konn.sock" --connect-target "$IP_B:17101"
	row --label konnectivity --addr "unix:$WORK/konn.sock" --connect-target "$IP_B:17101" \
		--pids "$kserver,$kagent" || note "konnectivity: run failed (see $WORK)"
	stop "$kserver" "$kagent"
else
	note "konnectivity: binaries not found in $KONN_BIN, row skipped"
fi

"$NB" table --input "$OUT"
echo "raw results: $OUT" >&2
