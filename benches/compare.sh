#!/usr/bin/env bash
# Side-by-side comparison of connector with direct TCP, raw QUIC, rathole
# (tcp and noise) and Konnectivity (HTTP CONNECT frontend), one after another
# on this machine, plus connector and raw QUIC over an emulated WAN path (a
# UDP proxy), and every peer over an IP-level one (benches/wan-ip.sh).
#
#   benches/compare.sh                 # everything; prints a markdown table
#   SECS=3 benches/compare.sh          # shorter bulk phases
#   WAN_REPEAT=10 benches/compare.sh   # each QUIC WAN row (default controller) ten times
#
# Every row is measured by the same client (`netbench run`, benches/src/bin/netbench.rs)
# against the same target service (`netbench serve`):
#   up/down    one connection, SECS seconds of bulk each way (end to end: the
#              sink acknowledges the byte count; the download is counted at the client)
#   RTT        64-byte ping-pong on one open connection (p50 / p99)
#   dial       connect (+ CONNECT handshake where there is one) until the first echoed
#              byte: p50 of a sequential loop; dials/s with 8 loops in parallel
#   HOL        download throughput next to a connection whose reader stopped,
#              as a fraction of the same download alone
#   CPU        user+system seconds per GiB moved (up+down phases): "tunnel" = the
#              tunnel's two processes (raw QUIC: both QUIC endpoints), "all" = also
#              the client and the target service
#   RSS        peak RSS (VmHWM) of the tunnel's processes, summed
#
# Then the isolation rows (issue 15, `netbench isolation`): a healthy bulk transfer and
# 20 new dials beside k stalled tunnels, k in ISOLATION_KS, in each direction ("down":
# clients that stopped reading; "up": targets that never read), with the server's and
# agent's RSS, for connector (QUIC and TCP transport, HTTP CONNECT on a Unix socket) and
# Konnectivity. Knobs: ISOLATION_KS (default 1,4,16,64,256); ISOLATION_ONLY=1 runs only
# these rows; CONNECTOR_EXTRA_SERVER_ARGS / CONNECTOR_EXTRA_AGENT_ARGS (split at spaces)
# are appended to the connector server / agent of these rows.
#
#   ISOLATION_ONLY=1 SECS=3 benches/compare.sh
#
# Needs: release builds (built here), rathole (RATHOLE=..., `cargo install rathole`),
# konnectivity-server/-agent (KONN_BIN=dir, see docs/benchmarks.md). Peers' binaries
# default to $CARGO_TARGET_DIR/peers. A row that fails, or whose peer is missing, is
# noted and the run ends with exit status 1 once every other row has run
# (ALLOW_MISSING_PEERS=1: a missing peer is a note only).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=benches/lib.sh
. "$ROOT/benches/lib.sh"
SECS="${SECS:-5}"
IDLE_N="${IDLE_N:-10000}"
AGENTS_N="${AGENTS_N:-2000}"
ISOLATION_KS="${ISOLATION_KS:-1,4,16,64,256}"
ISOLATION_ONLY="${ISOLATION_ONLY:-0}"
WORK="$(mktemp -d /tmp/connector-compare.XXXXXX)"
OUT="$WORK/results.tsv"
ISO_OUT="$WORK/isolation.tsv"

# Many idle connections (and up to 256 stalled tunnels next to new ones) need many
# descriptors in every process started below.
ulimit -n 65536 2>/dev/null || true
build
trap stop_all EXIT

note() { echo "# $*" | tee -a "$WORK/notes.txt" >&2; }
# fail WHAT: a row that failed or could not run. The run goes on (the other rows are
# still worth having) but ends with a non-zero exit: no row is lost silently.
# ALLOW_MISSING_PEERS=1 turns a missing rathole or Konnectivity into a note only.
FAILED=0
fail() {
	note "FAILED: $*"
	FAILED=$((FAILED + 1))
}
missing_peer() {
	if [ "${ALLOW_MISSING_PEERS:-0}" = 1 ]; then note "$*"; else fail "$*"; fi
}

echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), kernel $(uname -r)" | tee "$WORK/notes.txt" >&2
echo "work dir: $WORK" >&2

# The target service everything ends at.
start target "$NB" serve --listen 127.0.0.1:17001
TARGET_PID=$LAST
"$NB" probe --addr 127.0.0.1:17001
# Certificates and tokens of every connector and Konnectivity row.
"$CONNECTOR" dev-pki --out "$WORK/pki" >/dev/null
# Konnectivity is built from the Go module proxy by a tiny module of ours (benches/konnectivity).
if [ ! -x "$KONN_BIN/konnectivity-server" ] && command -v go >/dev/null; then
	(cd "$ROOT/benches/konnectivity" && go build -o "$KONN_BIN/konnectivity-server" ./server &&
		go build -o "$KONN_BIN/konnectivity-agent" ./agent) || missing_peer "konnectivity: build failed"
fi

# measure CMD...: one measurement (a row, or the probe before it). If it fails, the failure is
# noted and the run goes on to the next rows, ending with a non-zero exit.
measure() { "$@" || fail "exit status $? from: $*"; }
run() { measure "$NB" run --secs "$SECS" --out "$OUT" --endpoint-pids "$TARGET_PID" "$@"; }

if [ "$ISOLATION_ONLY" = 1 ]; then
	note "ISOLATION_ONLY=1: the comparison rows are skipped"
else
	# 1. Direct TCP on loopback.
	run --label direct-tcp --addr 127.0.0.1:17001

	# 2. Raw QUIC: one quinn connection, a stream per "connection".
	start rawquic "$NB" quic-serve --listen 127.0.0.1:17002 --ca-out "$WORK/rawquic-ca.pem"
	RAWQUIC_PID=$LAST
	until [ -s "$WORK/rawquic-ca.pem" ]; do sleep 0.05; done # written after the bind
	measure "$NB" quic-run --label raw-quic --addr 127.0.0.1:17002 --ca "$WORK/rawquic-ca.pem" --pids "$RAWQUIC_PID" \
		--secs "$SECS" --out "$OUT"

	# 3. connector over QUIC: in-process --forward (like a rathole port), and the
	#    HTTP CONNECT frontend on a Unix socket (like Konnectivity's).
	start connector-server "$CONNECTOR" server --listen 127.0.0.1:17443 --cert "$WORK/pki/server.pem" \
		--key "$WORK/pki/server-key.pem" --tokens "$WORK/pki/tokens" \
		--forward "127.0.0.1:17010=127.0.0.1:17001,agent=node-a" --connect-uds "$WORK/connector.sock" \
		--max-streams-per-agent 20000 --frontend-max-connections 20000
	CSERVER=$LAST
	start connector-agent "$CONNECTOR" agent --server 127.0.0.1:17443 --ca "$WORK/pki/ca.pem" --agent-id node-a \
		--token-file "$WORK/pki/node-a.token" --identifiers host=node-a,ipv4=127.0.0.1 --allow 127.0.0.1/32 \
		--max-connections 20000
	CAGENT=$LAST
	measure "$NB" probe --addr 127.0.0.1:17010
	run --label connector-quic --addr 127.0.0.1:17010 --pids "$CSERVER,$CAGENT"
	measure "$NB" probe --addr "unix:$WORK/connector.sock" --connect-target 127.0.0.1:17001
	run --label connector-quic-connect --addr "unix:$WORK/connector.sock" --connect-target 127.0.0.1:17001 \
		--pids "$CSERVER,$CAGENT"

	# Idle connections through one agent: RSS growth of server + agent per connection.
	if [ "$(ulimit -n)" -gt $((IDLE_N + 1000)) ]; then
		"$NB" idle --addr 127.0.0.1:17010 --n "$IDLE_N" --pids "$CSERVER,$CAGENT" | tee "$WORK/idle.txt" >&2 ||
			fail "idle connections (see above)"
	else
		fail "idle connections: open-file limit $(ulimit -n) too low for $IDLE_N"
	fi
	# Idle agents on one server: the server's RSS growth per agent (agents in one netbench process).
	"$NB" agents --server 127.0.0.1:17443 --ca "$WORK/pki/ca.pem" --token-file "$WORK/pki/node-a.token" \
		--n "$AGENTS_N" --server-pid "$CSERVER" | tee "$WORK/agents.txt" >&2 || fail "idle agents (see above)"
	# 3b. connector over its TCP fallback transport (TLS + QMux) to the same server.
	stop "$CAGENT"
	start connector-agent-tcp "$CONNECTOR" agent --server 127.0.0.1:17443 --ca "$WORK/pki/ca.pem" --agent-id node-a \
		--token-file "$WORK/pki/node-a.token" --identifiers host=node-a,ipv4=127.0.0.1 --allow 127.0.0.1/32 \
		--max-connections 20000 --transport tcp
	CAGENT=$LAST
	measure "$NB" probe --addr 127.0.0.1:17010
	run --label connector-tcp --addr 127.0.0.1:17010 --pids "$CSERVER,$CAGENT"
	stop "$CSERVER" "$CAGENT"

	# 4. rathole, plain tcp and noise.
	if [ -x "$RATHOLE" ]; then
		for transport in tcp noise; do
			write_rathole_configs "$RATHOLE" "$transport" 127.0.0.1:17020 127.0.0.1:17021 127.0.0.1:17001
			start "rathole-server-$transport" env RUST_LOG=warn "$RATHOLE" --server "$WORK/rathole-server-$transport.toml"
			RSERVER=$LAST
			start "rathole-client-$transport" env RUST_LOG=warn "$RATHOLE" --client "$WORK/rathole-client-$transport.toml"
			RCLIENT=$LAST
			measure "$NB" probe --addr 127.0.0.1:17021
			run --label "rathole-$transport" --addr 127.0.0.1:17021 --pids "$RSERVER,$RCLIENT"
			stop "$RSERVER" "$RCLIENT"
			wait "$RSERVER" "$RCLIENT" 2>/dev/null || true
		done
	else
		missing_peer "rathole: not found at $RATHOLE, rows skipped"
	fi

	# 5. Konnectivity, HTTP CONNECT frontend on a Unix socket (as kube-apiserver uses it).
	if [ -x "$KONN_BIN/konnectivity-server" ] && [ -x "$KONN_BIN/konnectivity-agent" ]; then
		start konnectivity-server "$KONN_BIN/konnectivity-server" --mode http-connect --uds-name "$WORK/konn.sock" \
			--server-port 0 --agent-port 17031 --admin-port 17032 --health-port 17033 \
			--cluster-cert "$WORK/pki/server.pem" --cluster-key "$WORK/pki/server-key.pem" --server-count 1
		KSERVER=$LAST
		start konnectivity-agent "$KONN_BIN/konnectivity-agent" --proxy-server-host 127.0.0.1 \
			--proxy-server-port 17031 --ca-cert "$WORK/pki/ca.pem" --admin-server-port 17034 \
			--health-server-port 17035 --agent-identifiers host=node-a,ipv4=127.0.0.1
		KAGENT=$LAST
		measure "$NB" probe --addr "unix:$WORK/konn.sock" --connect-target 127.0.0.1:17001
		run --label konnectivity --addr "unix:$WORK/konn.sock" --connect-target 127.0.0.1:17001 --pids "$KSERVER,$KAGENT"
		stop "$KSERVER" "$KAGENT"
	else
		missing_peer "konnectivity: binaries not found in $KONN_BIN, row skipped"
	fi

	# 6. WAN: 20 ms RTT, 1 % loss each way, between agent and server (QUIC rows only).
	start impair-quic "$NB" impair --listen 127.0.0.1:17051 --upstream 127.0.0.1:17002 --delay-ms "$WAN_DELAY_MS" \
		--loss "$WAN_LOSS"
	IMPAIR1=$LAST
	start impair-connector "$NB" impair --listen 127.0.0.1:17052 --upstream 127.0.0.1:17444 --delay-ms "$WAN_DELAY_MS" \
		--loss "$WAN_LOSS"
	IMPAIR2=$LAST
	start connector-server-wan "$CONNECTOR" server --listen 127.0.0.1:17444 --cert "$WORK/pki/server.pem" \
		--key "$WORK/pki/server-key.pem" --tokens "$WORK/pki/tokens" \
		--forward "127.0.0.1:17011=127.0.0.1:17001,agent=node-a"
	CSERVER=$LAST
	start connector-agent-wan "$CONNECTOR" agent --server 127.0.0.1:17052 --ca "$WORK/pki/ca.pem" --agent-id node-a \
		--token-file "$WORK/pki/node-a.token" --identifiers host=node-a,ipv4=127.0.0.1 --allow 127.0.0.1/32
	CAGENT=$LAST
	measure "$NB" probe --addr 127.0.0.1:17011
	for run in $(seq 1 "$WAN_REPEAT"); do
		measure "$NB" quic-run --label "$(repeat_label wan-raw-quic "$run")" --addr 127.0.0.1:17051 --ca "$WORK/rawquic-ca.pem" \
			--pids "$RAWQUIC_PID" --secs "$WAN_SECS" --bulk-and-rtt-only --out "$OUT"
		measure "$NB" run --label "$(repeat_label wan-connector-quic "$run")" --addr 127.0.0.1:17011 --pids "$CSERVER,$CAGENT" \
			--endpoint-pids "$TARGET_PID" --secs "$WAN_SECS" --bulk-and-rtt-only --out "$OUT"
	done
	# Raw QUIC and connector with Cubic instead of the default (BBR on a path this long): what
	# the congestion controller is worth.
	start rawquic-cubic "$NB" quic-serve --listen 127.0.0.1:17003 --ca-out "$WORK/rawquic-cubic-ca.pem" --congestion-control cubic
	RAWQUIC_CUBIC=$LAST
	start impair-quic-cubic "$NB" impair --listen 127.0.0.1:17053 --upstream 127.0.0.1:17003 --delay-ms "$WAN_DELAY_MS" \
		--loss "$WAN_LOSS"
	IMPAIR3=$LAST
	until [ -s "$WORK/rawquic-cubic-ca.pem" ]; do sleep 0.05; done
	measure "$NB" quic-run --label wan-raw-quic-cubic --congestion-control cubic --addr 127.0.0.1:17053 --ca "$WORK/rawquic-cubic-ca.pem" \
		--pids "$RAWQUIC_CUBIC" --secs "$WAN_SECS" --bulk-and-rtt-only --out "$OUT"
	stop "$RAWQUIC_CUBIC" "$IMPAIR3"
	# connector with Cubic on both ends (--congestion-control cubic), same impaired path.
	start impair-connector-cubic "$NB" impair --listen 127.0.0.1:17054 --upstream 127.0.0.1:17445 --delay-ms "$WAN_DELAY_MS" \
		--loss "$WAN_LOSS"
	IMPAIR4=$LAST
	start connector-server-wan-cubic "$CONNECTOR" server --listen 127.0.0.1:17445 --cert "$WORK/pki/server.pem" \
		--key "$WORK/pki/server-key.pem" --tokens "$WORK/pki/tokens" --congestion-control cubic \
		--forward "127.0.0.1:17012=127.0.0.1:17001,agent=node-a"
	CSERVER_CUBIC=$LAST
	start connector-agent-wan-cubic "$CONNECTOR" agent --server 127.0.0.1:17054 --ca "$WORK/pki/ca.pem" --agent-id node-a \
		--token-file "$WORK/pki/node-a.token" --identifiers host=node-a,ipv4=127.0.0.1 --allow 127.0.0.1/32 \
		--congestion-control cubic
	CAGENT_CUBIC=$LAST
	measure "$NB" probe --addr 127.0.0.1:17012
	measure "$NB" run --label wan-connector-quic-cubic --addr 127.0.0.1:17012 --pids "$CSERVER_CUBIC,$CAGENT_CUBIC" \
		--endpoint-pids "$TARGET_PID" --secs "$WAN_SECS" --bulk-and-rtt-only --out "$OUT"
	stop "$CSERVER_CUBIC" "$CAGENT_CUBIC" "$IMPAIR4"
	stop "$CSERVER" "$CAGENT" "$IMPAIR1" "$IMPAIR2"

	# 7. The same WAN path at the IP level, for every peer including the TCP-based
	#    ones: network namespaces joined by a TUN forwarder (benches/wan-ip.sh; root only).
	WAN_SECS="$WAN_SECS" WAN_DELAY_MS="$WAN_DELAY_MS" WAN_LOSS="$WAN_LOSS" WAN_REPEAT="$WAN_REPEAT" RATHOLE="$RATHOLE" \
		KONN_BIN="$KONN_BIN" "$ROOT/benches/wan-ip.sh" >"$WORK/wan-ip.txt" 2>"$WORK/wan-ip.log" || fail "wan-ip (see $WORK/wan-ip.log)"
fi

# 8. Isolation beside stalled tunnels (issue 15). A fresh server and agent for each path and
#    direction, so that a wedge left by one cannot spoil the other; netbench closes the
#    stalled tunnels (and releases the target's never-reading sinks) after each k and
#    reports whether a dial works again.
read -r -a EXTRA_SERVER_ARGS <<<"${CONNECTOR_EXTRA_SERVER_ARGS:-}"
read -r -a EXTRA_AGENT_ARGS <<<"${CONNECTOR_EXTRA_AGENT_ARGS:-}"
# Each run's own table goes to stderr: every row is printed at the end.
isolation() {
	measure "$NB" isolation --secs "$SECS" --ks "$ISOLATION_KS" --target-direct 127.0.0.1:17001 --out "$ISO_OUT" "$@" >&2
}
port=17460
for transport in quic tcp; do
	for direction in down up; do
		port=$((port + 1))
		sock="$WORK/connector-iso-$transport-$direction.sock"
		start "connector-server-iso-$transport-$direction" "$CONNECTOR" server --listen "127.0.0.1:$port" \
			--cert "$WORK/pki/server.pem" --key "$WORK/pki/server-key.pem" --tokens "$WORK/pki/tokens" \
			--connect-uds "$sock" --max-streams-per-agent 20000 --frontend-max-connections 20000 \
			--drain-grace 1s "${EXTRA_SERVER_ARGS[@]}"
		CSERVER=$LAST
		start "connector-agent-iso-$transport-$direction" "$CONNECTOR" agent --server "127.0.0.1:$port" \
			--ca "$WORK/pki/ca.pem" --agent-id node-a --token-file "$WORK/pki/node-a.token" \
			--identifiers host=node-a,ipv4=127.0.0.1 --allow 127.0.0.1/32 --max-connections 20000 \
			--transport "$transport" --drain-grace 1s "${EXTRA_AGENT_ARGS[@]}"
		CAGENT=$LAST
		measure "$NB" probe --addr "unix:$sock" --connect-target 127.0.0.1:17001
		isolation --label "connector-$transport-connect" --directions "$direction" --addr "unix:$sock" \
			--connect-target 127.0.0.1:17001 --server-pid "$CSERVER" --agent-pid "$CAGENT"
		stop_wait "$CSERVER" "$CAGENT"
	done
done
if [ -x "$KONN_BIN/konnectivity-server" ] && [ -x "$KONN_BIN/konnectivity-agent" ]; then
	for direction in down up; do
		start "konnectivity-server-iso-$direction" "$KONN_BIN/konnectivity-server" --mode http-connect \
			--uds-name "$WORK/konn-iso-$direction.sock" --server-port 0 --agent-port 17041 --admin-port 17042 \
			--health-port 17043 --cluster-cert "$WORK/pki/server.pem" --cluster-key "$WORK/pki/server-key.pem" \
			--server-count 1
		KSERVER=$LAST
		start "konnectivity-agent-iso-$direction" "$KONN_BIN/konnectivity-agent" --proxy-server-host 127.0.0.1 \
			--proxy-server-port 17041 --ca-cert "$WORK/pki/ca.pem" --admin-server-port 17044 \
			--health-server-port 17045 --agent-identifiers host=node-a,ipv4=127.0.0.1
		KAGENT=$LAST
		measure "$NB" probe --addr "unix:$WORK/konn-iso-$direction.sock" --connect-target 127.0.0.1:17001
		isolation --label konnectivity --directions "$direction" --addr "unix:$WORK/konn-iso-$direction.sock" \
			--connect-target 127.0.0.1:17001 --server-pid "$KSERVER" --agent-pid "$KAGENT"
		stop_wait "$KSERVER" "$KAGENT"
	done
else
	missing_peer "konnectivity: binaries not found in $KONN_BIN, isolation rows skipped"
fi

echo
if [ -s "$OUT" ]; then
	"$NB" table --input "$OUT"
	echo
fi
if [ -s "$ISO_OUT" ]; then
	echo "Isolation beside stalled tunnels (SECS=$SECS; \"MiB unread\": what the stalled tunnels' senders wrote and nobody read):"
	echo
	"$NB" table --input "$ISO_OUT"
	echo
fi
cat "$WORK/notes.txt"
[ -s "$WORK/idle.txt" ] && cat "$WORK/idle.txt"
[ -s "$WORK/agents.txt" ] && cat "$WORK/agents.txt"
if [ -s "$WORK/wan-ip.txt" ]; then
	echo
	echo "IP-level WAN path (benches/wan-ip.sh), every peer:"
	cat "$WORK/wan-ip.txt"
fi
echo "raw results: $OUT $ISO_OUT"
if [ "$FAILED" -gt 0 ]; then
	echo "compare.sh: $FAILED row(s) failed (see the notes above)" >&2
	exit 1
fi
