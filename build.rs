//! Compiles proto/sluice/v1/sluice.proto with protox (pure Rust: no system protoc needed) and
//! writes the descriptor set that gRPC server reflection serves.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(["sluice/v1/sluice.proto"], ["proto"])?;
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("sluice_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    tonic_prost_build::configure()
        // The CLI prints responses as JSON with `--output json`.
        .type_attribute(".", "#[derive(serde::Serialize)]")
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
