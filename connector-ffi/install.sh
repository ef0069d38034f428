#!/usr/bin/env bash
# Builds connector's C library and installs it the way C and Go programs find
# a system library (`make install-ffi PREFIX=...` runs this):
#   PREFIX/lib/libconnector_ffi.a           static library
#   PREFIX/lib/libconnector_ffi.so          shared library
#   PREFIX/include/connector.h              header
#   PREFIX/lib/pkgconfig/connector.pc       -lconnector_ffi (the shared library
#                                           when both are there), Libs.private
#                                           for a static link
#   PREFIX/lib/pkgconfig/connector-static.pc  the static library and the system
#                                           libraries it needs (what the Go
#                                           package links: `#cgo pkg-config`)
# The system libraries are what rustc reports for this build
# (`--print native-static-libs`), not a list kept by hand.
#
# Usage: connector-ffi/install.sh PREFIX [release|debug]   (default release;
# honours CARGO_TARGET_DIR, and DESTDIR for staged installs)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
prefix="${1:?usage: connector-ffi/install.sh PREFIX [release|debug]}"
profile="${2:-release}"
case "$prefix" in
    /*) ;;
    *) echo "install-ffi: PREFIX must be an absolute path (the pkg-config files record it), not '$prefix'" >&2; exit 2 ;;
esac
case "$profile" in
    release) profile_flag=(--release); profile_dir=release ;;
    debug) profile_flag=(); profile_dir=debug ;;
    *) echo "install-ffi: the profile is release or debug, not '$profile'" >&2; exit 2 ;;
esac
target_dir="${CARGO_TARGET_DIR:-$repo/target}"
case "$target_dir" in /*) ;; *) target_dir="$repo/$target_dir" ;; esac
out="$target_dir/$profile_dir"
libs_file="$out/connector-ffi.native-static-libs"

cd "$repo"
build() {
    # Every crate type of Cargo.toml ([lib]: staticlib, cdylib, rlib), and
    # rustc's list of the system libraries the static library needs, written
    # to a file when the crate is compiled (a fresh build leaves it as it was).
    cargo rustc -p connector-ffi --lib "${profile_flag[@]}" -- --print "native-static-libs=$libs_file"
}
build
if [ ! -s "$libs_file" ]; then
    # Built before, without the list: build the crate (only it) again.
    cargo clean -p connector-ffi "${profile_flag[@]}"
    build
fi
native_libs="$(tr -s ' \n' ' ' <"$libs_file" | sed 's/ *$//')"
[ -n "$native_libs" ] || { echo "install-ffi: rustc reported no native-static-libs in $libs_file" >&2; exit 1; }
version="$(cargo pkgid -p connector-ffi | sed 's/.*[#@]//')"

dest="${DESTDIR:-}$prefix"
install -d "$dest/lib/pkgconfig" "$dest/include"
install -m 644 "$out/libconnector_ffi.a" "$dest/lib/libconnector_ffi.a"
install -m 755 "$out/libconnector_ffi.so" "$dest/lib/libconnector_ffi.so"
install -m 644 "$here/include/connector.h" "$dest/include/connector.h"

header() {
    cat <<EOF
# Written by connector-ffi/install.sh ($profile build); the system libraries
# are rustc's native-static-libs for this build.
prefix=$prefix
libdir=\${prefix}/lib
includedir=\${prefix}/include

EOF
}
{
    header
    cat <<EOF
Name: connector
Description: connector's C ABI (QUIC reverse tunnels): links libconnector_ffi.so when it is installed, else the static library
URL: https://github.com/connector-project/connector
Version: $version
Cflags: -I\${includedir}
Libs: -L\${libdir} -lconnector_ffi
Libs.private: $native_libs
EOF
} >"$dest/lib/pkgconfig/connector.pc"
{
    header
    cat <<EOF
Name: connector-static
Description: connector's C ABI (QUIC reverse tunnels), linked from the static library libconnector_ffi.a
URL: https://github.com/connector-project/connector
Version: $version
Cflags: -I\${includedir}
Libs: \${libdir}/libconnector_ffi.a $native_libs
EOF
} >"$dest/lib/pkgconfig/connector-static.pc"

echo "installed connector $version ($profile) into $dest: lib/libconnector_ffi.{a,so}, include/connector.h, lib/pkgconfig/connector{,-static}.pc"
case ":$(pkg-config --variable pc_path pkg-config 2>/dev/null):" in
    *":$prefix/lib/pkgconfig:"*) ;;
    *) echo "pkg-config finds it with PKG_CONFIG_PATH=$prefix/lib/pkgconfig" ;;
esac
