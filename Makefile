# The whole test suite, every language in the repository. `.ci/run` installs
# what it needs and then runs exactly this.
.PHONY: test test-rust connector-bin test-go-interop test-kubernetes test-python test-ffi test-deploy demo install-ffi

TARGET_DIR := $(or $(CARGO_TARGET_DIR),$(CURDIR)/target)
# Where install-ffi puts the C library (an absolute path).
PREFIX ?= /usr/local

test: test-rust test-go-interop test-kubernetes test-python test-ffi test-deploy

test-rust:
	cargo test --workspace

# The debug `connector` binary the interop suites drive.
connector-bin:
	cargo build -p connector-cli

# kube-apiserver's egress dialers (HTTPConnect and the real konnectivity-client)
# against the `connector` binary.
test-go-interop: connector-bin
	cd connector-cli/tests/kube-apiserver && CONNECTOR_BIN=$(TARGET_DIR)/debug/connector go test -count=1 -v ./...

# The real kube-apiserver, etcd and kubectl (built from the Go module proxy at
# the versions in connector-cli/tests/kubernetes/versions.env; a cold build
# takes ~16 min on 2 cores, a warm Go build cache seconds) reaching a kubelet
# stand-in through `connector server` and `connector agent`, across two
# network namespaces; connector-core/tests/kube_apiserver.rs runs against its
# kube-apiserver too (E2E_CARGO_TEST; built by test-rust). Needs root (ip
# netns). See docs/kube-apiserver.md.
test-kubernetes: connector-bin
	connector-cli/tests/kubernetes/build.sh $(TARGET_DIR)/kubernetes/bin
	cd connector-cli/tests/kubernetes && CONNECTOR_BIN=$(TARGET_DIR)/debug/connector KUBE_BIN_DIR=$(TARGET_DIR)/kubernetes/bin \
	  E2E_CARGO_TEST=1 go test -count=1 -v -timeout 40m ./...

# The Python package: builds the abi3 wheel into a venv and runs pytest
# (its interop test drives the `connector` binary).
test-python: connector-bin
	CONNECTOR_BIN=$(TARGET_DIR)/debug/connector connector-py/run-tests.sh

# The C ABI (header freshness, a C program under Valgrind), the Go package
# and example built on it (`go test -race`), and docs/ffi.md's quick start
# run as written: install-ffi (release), then a Go module and a C program
# outside the repository, built against it and run through a tunnel.
test-ffi:
	connector-ffi/run-tests.sh

# deploy/: every Kustomize overlay rendered and validated against the Kubernetes
# OpenAPI schemas, its TOML settings checked by the binary, and a smoke run.
test-deploy: connector-bin
	CONNECTOR_BIN=$(TARGET_DIR)/debug/connector deploy/validate.sh

demo:
	cargo run --release -p connector-cli -- demo

# connector's C library for C and Go programs (release build): PREFIX/lib gets
# libconnector_ffi.a and .so, PREFIX/include connector.h, PREFIX/lib/pkgconfig
# connector.pc and connector-static.pc (docs/ffi.md: using it).
install-ffi:
	DESTDIR="$(DESTDIR)" connector-ffi/install.sh "$(PREFIX)"
