# Shell helpers shared by benches/compare.sh and benches/wan-ip.sh (sourced,
# not run, with $ROOT set to the repository). The functions expect $WORK (a
# scratch directory) to be set.

# Knobs both scripts take from the environment.
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
PEERS="${PEERS:-$TARGET_DIR/peers}"
RATHOLE="${RATHOLE:-$PEERS/rathole/bin/rathole}"
KONN_BIN="${KONN_BIN:-$PEERS/konn/bin}"
WAN_SECS="${WAN_SECS:-10}"
WAN_DELAY_MS="${WAN_DELAY_MS:-10}" # each way: 20 ms RTT
WAN_LOSS="${WAN_LOSS:-0.01}"       # each way
# Runs of each WAN row with the default controller (raw QUIC and connector over QUIC); runs
# after the first are labelled "#2", "#3", ...: a collapse shows as one run far below the others.
WAN_REPEAT="${WAN_REPEAT:-1}"

# repeat_label LABEL RUN: the label of the RUN-th run of a repeated row.
repeat_label() { if [ "$2" = 1 ]; then echo "$1"; else echo "$1#$2"; fi; }

# build: the release `connector` and `netbench`, as $CONNECTOR and $NB.
build() {
	(cd "$ROOT" && cargo build --release -q -p connector-cli -p connector-benches --bins)
	NB="$TARGET_DIR/release/netbench"
	CONNECTOR="$TARGET_DIR/release/connector"
}

PIDS=()

# start NAME CMD...: runs CMD in the background, logs to $WORK/NAME.log, sets
# $LAST to its PID (`ip netns exec` and `env` exec their command, so that is
# the command's own PID).
start() {
	local name="$1"
	shift
	"$@" >"$WORK/$name.log" 2>&1 &
	LAST=$!
	PIDS+=("$LAST")
}

# stop PID...: asks each process to end.
stop() { for pid in "$@"; do kill "$pid" 2>/dev/null || true; done; }

# stop_wait PID...: asks each process to end and waits until it has (at most 10 s, then
# SIGKILL), so that its ports and sockets are free again.
stop_wait() {
	stop "$@"
	local pid i
	for pid in "$@"; do
		for ((i = 0; i < 100; i++)); do
			# A child that exited stays a zombie until `wait`: it counts as ended.
			grep -qs '^State:[[:space:]]*[^Z[:space:]]' "/proc/$pid/status" || break
			sleep 0.1
		done
		kill -KILL "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
	done
}

# stop_all: ends everything `start` started (for an EXIT trap).
stop_all() {
	for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
	wait 2>/dev/null || true
}

# write_rathole_configs RATHOLE TRANSPORT SERVER_BIND SERVICE_BIND TARGET: writes
# $WORK/rathole-{server,client}-TRANSPORT.toml for one service "bench": the
# server listens for its client on SERVER_BIND and for users on SERVICE_BIND;
# the client connects to SERVER_BIND and forwards to TARGET. TRANSPORT is
# `tcp` or `noise` (a fresh key pair from `rathole --genkey`).
write_rathole_configs() {
	local rathole="$1" transport="$2" server_bind="$3" service_bind="$4" target="$5"
	local noise_server="" noise_client=""
	if [ "$transport" = noise ]; then
		local keys private public
		keys="$("$rathole" --genkey)"
		private="$(echo "$keys" | sed -n '/Private Key:/{n;p}')"
		public="$(echo "$keys" | sed -n '/Public Key:/{n;p}')"
		noise_server=$'[server.transport.noise]\nlocal_private_key = "'"$private"'"'
		noise_client=$'[client.transport.noise]\nremote_public_key = "'"$public"'"'
	fi
	cat >"$WORK/rathole-server-$transport.toml" <<TOML
[server]
bind_addr = "$server_bind"
[server.transport]
type = "$transport"
$noise_server
[server.services.bench]
token = "bench-token"
bind_addr = "$service_bind"
TOML
	cat >"$WORK/rathole-client-$transport.toml" <<TOML
[client]
remote_addr = "$server_bind"
[client.transport]
type = "$transport"
$noise_client
[client.services.bench]
token = "bench-token"
local_addr = "$target"
TOML
}
