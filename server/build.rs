//! Generates the gRPC messages, server and client from
//! `proto/missive.proto`. protox, a protobuf compiler written in Rust,
//! parses the file into descriptors at build time, so a fresh machine
//! needs no protoc (system or vendored binary).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let descriptors = protox::compile(["proto/missive.proto"], ["proto"])?;
    tonic_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)?;
    println!("cargo:rerun-if-changed=proto/missive.proto");
    Ok(())
}
