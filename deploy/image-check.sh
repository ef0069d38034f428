#!/usr/bin/env bash
# Checks the Dockerfile's two stages without a Docker engine:
#  1. the builder stage's command, as written there: `connector` built for
#     <arch>-unknown-linux-musl with musl-gcc, release, no debug info;
#  2. that the result is statically linked and runs the way the final image
#     runs it: in a root file system holding only the binary, /etc/passwd with
#     `nonroot` (65532) and /tmp, as uid/gid 65532, no shell. There it runs
#     `--version` and `demo` (server, agent, QUIC, TLS, dials, checks).
# Installs the musl target with rustup and musl-tools with apt-get when
# missing. Step 2 needs root (chroot); without it, it is skipped and says so.
# Not part of `make test` (one more release build); run it when the
# Dockerfile, the dependencies or the toolchain change.
#
#   deploy/image-check.sh
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
target="$(uname -m)-unknown-linux-musl"
build_dir="${CARGO_TARGET_DIR:-$root/target}"

if ! rustup target list --installed | grep -qx "$target"; then
    rustup target add "$target"
fi
if ! command -v musl-gcc >/dev/null; then
    apt-get install -y --no-install-recommends musl-tools
fi

echo "== builder stage: cargo build --release --locked -p connector-cli --target $target"
(
    cd "$root"
    export "CC_$(echo "$target" | tr - _)=musl-gcc"
    CARGO_PROFILE_RELEASE_DEBUG=false cargo build --release --locked -p connector-cli --target "$target"
)
binary="$build_dir/$target/release/connector"
"$binary" --version

echo "== statically linked"
if ! file "$binary" | grep -Eq 'static(-pie)? linked|statically linked'; then
    file "$binary"
    echo "image-check: $binary is not statically linked" >&2
    exit 1
fi
echo "$(basename "$binary"): $(du -h "$binary" | cut -f1), $(file -b "$binary" | cut -d, -f1-4)"

if [[ $(id -u) -ne 0 ]]; then
    echo "image-check: not root, so the run as uid 65532 in an empty root was skipped"
    exit 0
fi

echo "== final stage: run as 65532:65532 in a root holding only the binary"
rootfs="$(mktemp -d -t connector-image.XXXXXX)"
trap 'rm -rf "$rootfs"' EXIT
chmod 755 "$rootfs"
mkdir -p "$rootfs/usr/local/bin" "$rootfs/etc" "$rootfs/tmp"
chmod 1777 "$rootfs/tmp"
cp "$binary" "$rootfs/usr/local/bin/connector"
echo "nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin" >"$rootfs/etc/passwd"
run() { unshare --fork chroot --userspec=65532:65532 "$rootfs" /usr/local/bin/connector "$@"; }
run --version
run demo | tail -n 1
echo "image-check: OK"
