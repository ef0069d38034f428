# The whole test suite, every language in the repository. `.ci/run` installs
# what it needs and then runs exactly this.
.PHONY: test demo

test:
	cargo test --workspace

demo:
	cargo run --release -p connector-cli -- demo
