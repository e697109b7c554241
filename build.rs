//! Compiles proto/sluice/v1/sluice.proto with protox (pure Rust: no system protoc needed) and
//! writes the descriptor set that gRPC server reflection serves.

const SKIP_NONE: &str = "#[serde(skip_serializing_if = \"Option::is_none\")]";
const SKIP_EMPTY_LIST: &str = "#[serde(skip_serializing_if = \"Vec::is_empty\")]";
const SKIP_EMPTY_TEXT: &str = "#[serde(skip_serializing_if = \"String::is_empty\")]";
const SKIP_FALSE: &str = "#[serde(skip_serializing_if = \"std::ops::Not::not\")]";

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
        // ... with the REST API's shape: what REST leaves out when absent, this leaves out too
        // (tests/it/cli_json.rs compares the two).
        .field_attribute("sluice.v1.Deployment.blocked_by", SKIP_NONE)
        .field_attribute("sluice.v1.Deployment.needs", SKIP_NONE)
        .field_attribute("sluice.v1.Deployment.dry_run", SKIP_NONE)
        .field_attribute("sluice.v1.Deployment.rollback_test", SKIP_NONE)
        .field_attribute("sluice.v1.Deployment.statements_applied", SKIP_NONE)
        .field_attribute("sluice.v1.Deployment.rejection", SKIP_NONE)
        .field_attribute("sluice.v1.Migration.previous_versions", SKIP_EMPTY_LIST)
        .field_attribute("sluice.v1.Deployment.log", SKIP_EMPTY_LIST)
        .field_attribute("sluice.v1.Deployment.reviews", SKIP_EMPTY_LIST)
        .field_attribute("sluice.v1.Deployment.review_owed", SKIP_FALSE)
        .field_attribute("sluice.v1.Finding.fix", SKIP_EMPTY_TEXT)
        // A watch event's `{"state": ...}` in snake_case, as every other field.
        .type_attribute(
            "sluice.v1.DeploymentEvent.event",
            "#[serde(rename_all = \"snake_case\")]",
        )
        .field_attribute("sluice.v1.Finding.script", SKIP_EMPTY_TEXT)
        .field_attribute("sluice.v1.Finding.ignored", SKIP_EMPTY_TEXT)
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
