#!/usr/bin/env bash
# Builds the connector Python package (an abi3 wheel, via maturin) into a
# venv under the cargo target dir, builds the `connector` binary for the
# interop test (unless CONNECTOR_BIN names one), and runs the pytest suite.
# Needs Python >= 3.9 with venv/pip, and Rust; uses $CARGO_TARGET_DIR
# (default: the workspace's target/). Extra arguments go to pytest.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
target="${CARGO_TARGET_DIR:-$root/target}"
export CARGO_TARGET_DIR="$target"
python="${PYTHON:-python3}"
venv="$target/connector-py-venv"

echo "== python environment ($venv)"
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
  "maturin==1.16.0" "pytest==9.2.0" "pytest-asyncio==1.5.0" "prometheus-client==0.26.0"

echo "== build the wheel"
wheels="$target/connector-py-wheels"
rm -rf "$wheels"
# The dev profile (dependencies optimised, see the workspace Cargo.toml) reuses
# what `cargo test` already compiled; benchmarks build with --release themselves.
(cd "$here" && "$venv/bin/maturin" build --quiet --out "$wheels")
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --force-reinstall "$wheels"/connector-*.whl

# A `connector` binary given in CONNECTOR_BIN (e.g. one `cargo test` built) is used as is.
if [ -z "${CONNECTOR_BIN:-}" ]; then
  echo "== build the connector binary (interop test)"
  (cd "$root" && cargo build --quiet -p connector-cli)
  export CONNECTOR_BIN="$target/debug/connector"
fi

echo "== pytest"
cd "$here"
"$venv/bin/python" -m pytest -p no:cacheprovider "$@"
