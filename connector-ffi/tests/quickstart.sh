#!/usr/bin/env bash
# docs/ffi.md's "Using it from your own program", run as written: a Go module
# and a C program outside this repository, built and run with the exact
# commands and sources of the blocks marked `<!-- ffi-quickstart: ... -->`.
#
# In a temporary directory, with HOME pointing into it (so the documented
# PREFIX=$HOME/.local is a fresh prefix): `connector` stands for the reader's
# clone (a link to this repository), `hello/` is a new Go module
# (`go mod init example.com/hello`) holding the documented main.go, and
# `hello-c/` holds the documented hello.c. Each line of a command block runs
# with `sh -c` and must exit 0; every line that runs `./hello...` must print
# the documented output: the program starts a server and an agent and sends a
# line through the tunnel to an echo service only the agent may reach.
# Also checked: the Go binary and the static C one do not need
# libconnector_ffi.so, the shared C one does, and the system libraries on the
# documented cc line are the ones connector-static.pc lists.
#
# Usage: connector-ffi/tests/quickstart.sh   (honours CARGO_TARGET_DIR; the
# release build of install-ffi goes there)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
doc="$repo/docs/ffi.md"

# The fenced block after the line starting with `<!-- ffi-quickstart: NAME`.
block() {
    awk -v marker="<!-- ffi-quickstart: $1" '
        index($0, marker) == 1 { found = 1; next }
        found == 1 && /^```/ { found = 2; next }
        found == 2 && /^```/ { exit }
        found == 2 { print }
    ' "$doc"
}
for name in "go commands" "c commands" output main.go hello.c; do
    [ -n "$(block "$name")" ] || { echo "docs/ffi.md: no block after <!-- ffi-quickstart: $name" >&2; exit 1; }
done
expected="$(block output)"

# Go and cargo keep their caches and toolchains, wherever HOME points.
export CARGO_HOME="${CARGO_HOME:-$HOME/.cargo}" RUSTUP_HOME="${RUSTUP_HOME:-$HOME/.rustup}"
GOPATH="$(go env GOPATH)" GOMODCACHE="$(go env GOMODCACHE)" GOCACHE="$(go env GOCACHE)"
export GOPATH GOMODCACHE GOCACHE
CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo/target}"
case "$CARGO_TARGET_DIR" in /*) ;; *) CARGO_TARGET_DIR="$repo/$CARGO_TARGET_DIR" ;; esac
export CARGO_TARGET_DIR
unset PKG_CONFIG_PATH GOWORK GOFLAGS

work="$(mktemp -d)"
trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT
export HOME="$work/home"
mkdir -p "$HOME" "$work/hello" "$work/hello-c"
ln -s "$repo" "$work/connector"
(cd "$work/hello" && go mod init example.com/hello 2>/dev/null)
block main.go >"$work/hello/main.go"
block hello.c >"$work/hello-c/hello.c"

# Runs each line of a command block in $1; checks what ./hello* lines print.
run_block() {
    local dir="$1" name="$2" line out
    while IFS= read -r line; do
        [ -n "$line" ] || continue
        printf '$ %s\n' "$line"
        if ! out="$(cd "$dir" && timeout 3600 sh -c "$line" </dev/null 2>"$work/stderr")"; then
            printf '%s\n' "$out"
            cat "$work/stderr" >&2
            echo "docs/ffi.md ($name): this line failed: $line" >&2
            exit 1
        fi
        case "$line" in
            *./hello*)
                printf '%s\n' "$out"
                if [ "$out" != "$expected" ]; then
                    cat "$work/stderr" >&2
                    printf 'docs/ffi.md (%s): printed\n%s\ninstead of\n%s\n' "$name" "$out" "$expected" >&2
                    exit 1
                fi
                ;;
        esac
    done < <(block "$name")
}

echo "== Go module outside the repository ($work/hello)"
run_block "$work/hello" "go commands"
# Whether a program loads libconnector_ffi.so (ldd's whole output first: with
# pipefail, grep -q ending the pipe early would fail it).
loads_shared() { local deps; deps="$(ldd "$1")"; [[ "$deps" == *libconnector_ffi.so* ]]; }
if loads_shared "$work/hello/hello"; then
    echo "the Go program needs libconnector_ffi.so at run time: it should hold the static library" >&2
    exit 1
fi

echo "== C program outside the repository ($work/hello-c)"
run_block "$work/hello-c" "c commands"
if loads_shared "$work/hello-c/hello"; then echo "hello (static) needs libconnector_ffi.so" >&2; exit 1; fi
loads_shared "$work/hello-c/hello-shared" || { echo "hello-shared does not load libconnector_ffi.so" >&2; exit 1; }
documented="$(block "c commands" | head -n 1 | sed 's/.*libconnector_ffi\.a //; s/ -o .*//')"
installed="$(PKG_CONFIG_PATH="$HOME/.local/lib/pkgconfig" pkg-config --libs connector-static | sed 's/.*libconnector_ffi\.a //' | sed 's/ *$//')"
if [ "$documented" != "$installed" ]; then
    echo "docs/ffi.md's cc line links '$documented', connector-static.pc lists '$installed': update the doc" >&2
    exit 1
fi

echo "quick start: Go module and C programs (static, shared with rpath, shared with LD_LIBRARY_PATH, pkg-config) built from docs/ffi.md and run through the tunnel"
