#!/usr/bin/env bash
# Builds every fuzz target, then runs each for SECONDS (default 60).
#
#   fuzz/run.sh [SECONDS] [TARGET...]
#
# FUZZ_JOBS=N runs N targets at once (default 1; each target is one process).
#
# Uses cargo-fuzz (`cargo install cargo-fuzz`) on the stable toolchain via
# RUSTC_BOOTSTRAP=1 (libFuzzer needs -Z flags) and without a sanitizer
# (`-s none`): the code under test has no `unsafe`, so AddressSanitizer adds
# little, and its runtime is not shipped with stable toolchains everywhere.
# The committed seed corpus (corpus/TARGET/seed-*) is read, never written:
# inputs found during a run go to $FUZZ_WORK (default: a temporary directory)
# and a crash lands in fuzz/artifacts/TARGET/, making this script fail.
set -euo pipefail
cd "$(dirname "$0")"

seconds=${1:-60}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(frame_decoder control_handshake http_connect_head grpc_frontend config_parsers qmux_conn proxy_response)
fi

export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
work=${FUZZ_WORK:-$(mktemp -d)}

echo "== building fuzz targets"
cargo fuzz build -s none
# `cargo fuzz run` would rebuild if needed; the build above makes it a no-op,
# so parallel runs do not contend for the target directory.

# Runs one target; its output goes to $work/TARGET.log.
run_target() {
  local target=$1 status=0
  mkdir -p "$work/$target"
  cargo fuzz run -s none "$target" "$work/$target" "corpus/$target" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=70000 -print_final_stats=1 \
    >"$work/$target.log" 2>&1 || status=$?
  echo "== $target: ${seconds}s, $(grep -E '^stat::number_of_executed_units' "$work/$target.log" | awk '{print $2}') executions, exit $status"
  if [ "$status" -ne 0 ]; then
    grep -E 'panicked|SUMMARY|Test unit written' -A3 "$work/$target.log" || tail -n 40 "$work/$target.log"
    echo "== $target FAILED; reproduce with: cargo fuzz run -s none $target fuzz/artifacts/$target/<crash file>"
    return 1
  fi
}

jobs=${FUZZ_JOBS:-1}
failed=0
pids=()
for target in "${targets[@]}"; do
  run_target "$target" &
  pids+=($!)
  if [ ${#pids[@]} -ge "$jobs" ]; then
    wait "${pids[0]}" || failed=1
    pids=("${pids[@]:1}")
  fi
done
for pid in "${pids[@]}"; do
  wait "$pid" || failed=1
done
if [ "$failed" -ne 0 ]; then
  echo "== a fuzz target found a problem (see above)"
  exit 1
fi
echo "== all targets ran ${seconds}s without a finding"
