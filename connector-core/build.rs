//! Generates the Konnectivity `ProxyService` server code when the `grpc`
//! feature is on, with the protoc binary vendored from crates.io (no system
//! protoc needed).

fn main() {
    #[cfg(feature = "grpc")]
    {
        let proto = "proto/konnectivity/client.proto";
        println!("cargo:rerun-if-changed={proto}");
        let mut config = prost_build::Config::new();
        config.protoc_executable(protoc_bin_vendored::protoc_bin_path().expect("vendored protoc for this platform"));
        tonic_prost_build::configure()
            .build_client(false)
            .compile_with_config(config, &[proto], &["proto/konnectivity"])
            .expect("compile the Konnectivity proto");
    }
}
