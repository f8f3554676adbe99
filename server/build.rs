//! Generates the gRPC messages, server and client from
//! `proto/missive.proto` with the protoc that `protoc-bin-vendored` ships,
//! so a fresh machine needs no system protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = tonic_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_protos_with_config(config, &["proto/missive.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto/missive.proto");
    Ok(())
}
