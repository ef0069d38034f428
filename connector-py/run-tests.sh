#!/usr/bin/env bash
# Installs the connector Python package (an abi3 wheel, built by maturin
# through `pip install ./connector-py`) into a venv under the cargo target
# dir, type-checks it (mypy --strict, stubtest), builds the `connector` binary for the
# interop test (unless CONNECTOR_BIN names one), and runs the pytest suite.
# Needs Python >= 3.10 (the pinned pytest; the wheel itself runs on >= 3.9) with venv/pip, and Rust; uses $CARGO_TARGET_DIR
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
  "maturin==1.16.0" "pytest==9.2.0" "pytest-asyncio==1.5.0" "prometheus-client==0.26.0" "mypy==2.4.1" \
  "httpx==0.29.0"
# The build backend runs `maturin` from PATH.
export PATH="$venv/bin:$PATH"

echo "== pip install ./connector-py (PEP 517, maturin backend)"
# The path the README advertises. `--profile dev` (dependencies optimised, see
# the workspace Cargo.toml) reuses what `cargo test` already compiled; the
# backend's default is --release (benchmarks want that: see bench/bulk.py).
# No build isolation: the pinned maturin above is the backend.
MATURIN_PEP517_ARGS="--profile dev" "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
  --no-build-isolation --no-deps --force-reinstall "$here"

echo "== mypy --strict and stubtest"
# The installed package (as users get it), the tests and the benchmark; then
# the stub of the compiled module against the module itself.
mypy=("$venv/bin/python" -m mypy --strict --cache-dir "$target/connector-py-mypy-cache")
(cd "$here" && "${mypy[@]}" -p connector && "${mypy[@]}" tests bench)
(cd "$target" && "$venv/bin/python" -m mypy.stubtest connector._connector)

# A `connector` binary given in CONNECTOR_BIN (e.g. one `cargo test` built) is used as is.
if [ -z "${CONNECTOR_BIN:-}" ]; then
  echo "== build the connector binary (interop test)"
  (cd "$root" && cargo build --quiet -p connector-cli)
  export CONNECTOR_BIN="$target/debug/connector"
fi

echo "== pytest"
cd "$here"
"$venv/bin/python" -m pytest -p no:cacheprovider "$@"
