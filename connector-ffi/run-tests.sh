#!/usr/bin/env bash
# Tests of the C ABI and the Go package, from a clean machine with Rust, Go
# and a C compiler:
#   1. installs cbindgen (crates.io), valgrind and pkg-config (apt) when missing;
#   2. builds connector-ffi (debug) and installs it as `make install-ffi`
#      does, into a prefix under the target directory, and checks that
#      include/connector.h is what cbindgen generates from the source;
#   3. builds the C test programs (tests/c: the end-to-end test and the ABI
#      soundness test) against the installed header and static library
#      (`pkg-config connector-static`) and runs them under Valgrind, failing
#      on any definite or possible leak;
#   4. the sanitizer job: builds the same C programs with AddressSanitizer
#      and UndefinedBehaviorSanitizer and runs them, then runs the Rust ABI
#      tests under Miri when CONNECTOR_FFI_MIRI=1 (it installs the nightly
#      toolchain's miri component when missing, and its first build takes
#      about 12 minutes on 2 cores, so it is not part of the default run or
#      CI); see docs/ffi.md for what each one covers;
#   5. runs `go test -race ./...` for connector-ffi/go and
#      examples/go-apiserver-plugin, linked through pkg-config with that
#      prefix, then prints the round-trip measurement;
#   6. tests/quickstart.sh: docs/ffi.md's commands and programs, run as
#      written: `make install-ffi` (release) into a fresh prefix, a Go module
#      and a C program outside the repository, built and run through a tunnel.
# Usage: connector-ffi/run-tests.sh   (honours CARGO_TARGET_DIR)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
target_dir="${CARGO_TARGET_DIR:-$repo/target}"
case "$target_dir" in /*) ;; *) target_dir="$repo/$target_dir" ;; esac
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
CBINDGEN_VERSION=0.29.4

step() { printf '\n==> %s\n' "$*"; }

step "tools"
# The header must match what this exact cbindgen version generates.
cbindgen=cbindgen
if [ "$(cbindgen --version 2>/dev/null)" != "cbindgen $CBINDGEN_VERSION" ]; then
    if command -v cbindgen >/dev/null 2>&1; then
        # Another version is installed: keep it, put the pinned one aside.
        root="$target_dir/cbindgen-$CBINDGEN_VERSION"
        [ -x "$root/bin/cbindgen" ] || cargo install cbindgen --locked --version "$CBINDGEN_VERSION" --root "$root"
        cbindgen="$root/bin/cbindgen"
    else
        cargo install cbindgen --locked --version "$CBINDGEN_VERSION"
        command -v cbindgen >/dev/null 2>&1 || cbindgen="${CARGO_HOME:-$HOME/.cargo}/bin/cbindgen"
    fi
fi
for tool in valgrind pkg-config; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        if [ "$(id -u)" = 0 ]; then apt-get install -y "$tool" || { apt-get update && apt-get install -y "$tool"; }
        else sudo apt-get install -y "$tool" || { sudo apt-get update && sudo apt-get install -y "$tool"; }
        fi
    fi
done
"$cbindgen" --version

step "build the library and install it (debug) into $target_dir/ffi-prefix"
# What the C and Go tests link, through its pkg-config files, as programs
# outside the repository do (a copy: every build of the workspace rewrites
# the target directory's own).
prefix="$target_dir/ffi-prefix"
"$here/install.sh" "$prefix" debug
export PKG_CONFIG_PATH="$prefix/lib/pkgconfig"

step "header is fresh (cbindgen --verify)"
(cd "$here" && "$cbindgen" --quiet --config cbindgen.toml --verify --output include/connector.h) || {
    echo "include/connector.h is stale: run 'cd connector-ffi && cbindgen --config cbindgen.toml --output include/connector.h'" >&2
    exit 1
}

step "Rust unit tests"
(cd "$repo" && cargo test -p connector-ffi 2>&1 | tee "$work/rust.log" | grep -E '^test result|FAILED|panicked') || true
grep -q '^test result: ok' "$work/rust.log" || { cat "$work/rust.log"; exit 1; }
rust_passed=$(grep -Eo '^test result: ok\. [0-9]+ passed' "$work/rust.log" | awk '{s+=$4} END {print s+0}')

c_programs=(e2e abi)
read -ra cflags <<<"-std=c11 -D_DEFAULT_SOURCE -Wall -Wextra -Werror -g $(pkg-config --cflags connector-static)"
read -ra libs <<<"$(pkg-config --libs connector-static)"

step "C tests under Valgrind (e2e, abi)"
# Valgrind's uninitialised-value checker flags bytes decrypted by the crypto
# library's assembly (aws-lc) wherever they flow (quinn's stream reads, ours):
# false positives. This run is about leaks, so those checks are off.
for program in "${c_programs[@]}"; do
    cc "${cflags[@]}" "$here/tests/c/$program.c" "${libs[@]}" -o "$work/$program"
    valgrind --quiet --leak-check=full --show-leak-kinds=definite,possible \
        --errors-for-leak-kinds=definite,possible --undef-value-errors=no \
        --suppressions="$here/tests/c/valgrind.supp" \
        --error-exitcode=42 "$work/$program" | tee "$work/$program.log"
done
c_checks=$(grep -Eo '[0-9]+ checks passed' "$work/e2e.log" | awk '{print $1}')
abi_checks=$(grep -Eo '[0-9]+ checks passed' "$work/abi.log" | awk '{print $1}')

step "sanitizers: C tests with AddressSanitizer + UndefinedBehaviorSanitizer"
# The C side is instrumented (bounds, use after free, leaks through LSan,
# integer and pointer UB); the Rust library is linked as built, its heap
# going through the intercepted malloc. A crash anywhere, such as a wild
# jump from an out-of-range enum, is reported with its stack.
sanitize=(-O1 -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer)
for program in "${c_programs[@]}"; do
    cc "${cflags[@]}" "${sanitize[@]}" "$here/tests/c/$program.c" "${libs[@]}" -o "$work/$program-asan"
    ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:halt_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
        "$work/$program-asan" | tail -n 1
done

step "sanitizers: Rust ABI tests under Miri"
miri_passed=skipped
if [ "${CONNECTOR_FFI_MIRI:-0}" != 1 ]; then
    echo "skipped (CONNECTOR_FFI_MIRI=1 runs it; it needs the nightly toolchain)"
else
    cargo +nightly miri --version >/dev/null 2>&1 ||
        rustup component add --toolchain nightly miri rust-src ||
        rustup toolchain install nightly --profile minimal --component miri,rust-src
    # Tests that need no socket, crypto or signal mask (Miri runs none of
    # those): the ABI as C calls it, result codes, handles, the callback gate.
    # Handles are integers cast to pointers, hence permissive provenance.
    (cd "$repo" && MIRIFLAGS=-Zmiri-permissive-provenance cargo +nightly miri test -p connector-ffi --lib -- \
        abi_tests:: error:: handle:: auth:: 2>&1 | tee "$work/miri.log" | grep -E '^test result|FAILED|Undefined Behavior') || true
    grep -q '^test result: ok' "$work/miri.log" || { cat "$work/miri.log"; exit 1; }
    miri_passed=$(grep -Eo '^test result: ok\. [0-9]+ passed' "$work/miri.log" | awk '{print $4}')
fi

step "Go package and example: go test -race ./... (cgo: pkg-config connector-static)"
go_status=0
(cd "$here/go" && go vet ./... && go test -race -count=1 -timeout 5m -v ./...) >"$work/go.log" 2>&1 || go_status=$?
(cd "$repo/examples/go-apiserver-plugin" && go vet ./... && go test -race -count=1 -timeout 5m -v ./...) >>"$work/go.log" 2>&1 || go_status=$?
grep -E '^(ok|FAIL|---)[[:space:]]' "$work/go.log" | grep -v -- '--- PASS' || true
if [ "$go_status" != 0 ]; then
    # A test binary killed by a signal prints only "signal: ..." before its FAIL line.
    grep -E -B2 -A20 -- '--- FAIL|panic:|DATA RACE|^signal: |^fatal error' "$work/go.log" | head -200 >&2
    exit "$go_status"
fi
go_passed=$(grep -Ec -- '^--- PASS' "$work/go.log")
go_sub_passed=$(grep -Ec -- '^ +--- PASS' "$work/go.log")

step "round trip through the Go Conn vs the Rust API (one run, no -race)"
(cd "$here/go" && go test -count=1 -run 'TestMeasureRoundTrip$' -v . | grep -E 'round trip|µs|MiB|threads|median')

step "docs/ffi.md quick start, as written: make install-ffi (release), a Go module and a C program outside the repository"
"$here/tests/quickstart.sh" | tee "$work/quickstart.log"

printf '\nconnector-ffi: %s Rust tests, Miri %s, C e2e %s checks and abi %s checks (Valgrind: no leaks; ASan+UBSan: clean), Go %s tests + %s subtests passed (-race); docs quick start: %s Go-module and %s C builds ran\n' \
    "$rust_passed" "$miri_passed" "$c_checks" "$abi_checks" "$go_passed" "$go_sub_passed" \
    "$(grep -c '^\$ .*go build.*\./hello' "$work/quickstart.log")" "$(grep -c '^\$ cc ' "$work/quickstart.log")"
