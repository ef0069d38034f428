# The whole test suite, every language in the repository. `.ci/run` installs
# what it needs and then runs exactly this.
.PHONY: test test-rust test-go-interop demo

TARGET_DIR := $(or $(CARGO_TARGET_DIR),$(CURDIR)/target)

test: test-rust test-go-interop

test-rust:
	cargo test --workspace

# kube-apiserver's egress dialers (HTTPConnect and the real konnectivity-client)
# against the `connector` binary.
test-go-interop:
	cargo build -p connector-cli
	cd connector-cli/tests/kube-apiserver && CONNECTOR_BIN=$(TARGET_DIR)/debug/connector go test -count=1 -v ./...

demo:
	cargo run --release -p connector-cli -- demo
