# syntax=docker/dockerfile:1
# The `connector` binary (server, agent, forward, dev-pki), statically linked
# against musl, in a distroless image without a shell, run as non-root.
#
#   docker build -t registry.example.com/connector:0.1.0 .
#   docker run --rm registry.example.com/connector:0.1.0 --help
#
# Why musl and not glibc with +crt-static: the agent resolves names (the
# server address, webhook services such as foo.ns.svc) with getaddrinfo, and a
# statically linked glibc still loads NSS modules (libnss_dns) at run time,
# which a static/distroless image does not have. musl's resolver is built in
# and reads /etc/resolv.conf (search domains included). ring, used by rustls
# and quinn, compiles its C and assembly with musl-gcc (musl-tools); the
# vendored protoc used by the gRPC frontend's build script runs on the build
# host. The image is built for the builder's own architecture (amd64 or arm64).
# Without debug info (function names stay in backtraces). deploy/image-check.sh
# runs the builder's command and the result as the final stage runs it,
# without a Docker engine.

ARG RUST_VERSION=1.95
FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS builder
RUN apt-get update \
    && apt-get install -y --no-install-recommends musl-tools \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    set -eu; \
    target="$(uname -m)-unknown-linux-musl"; \
    rustup target add "$target"; \
    export "CC_$(echo "$target" | tr - _)=musl-gcc"; \
    CARGO_PROFILE_RELEASE_DEBUG=false cargo build --release --locked -p connector-cli --target "$target"; \
    cp "target/$target/release/connector" /connector; \
    /connector --version

# distroless/static: CA certificates, /etc/passwd with `nonroot` (65532), tzdata; no shell.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=builder /connector /usr/local/bin/connector
USER 65532:65532
# QUIC (UDP) for agents, admin endpoints (TCP) — as in deploy/.
EXPOSE 8443/udp 8095/tcp
ENTRYPOINT ["/usr/local/bin/connector"]
CMD ["--help"]
