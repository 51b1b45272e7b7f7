//! Compiles the .proto files with protox (pure Rust), so building needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(["proto/paddock.proto"], ["proto"])?;
    // The messages double as the HTTPS API's JSON bodies and OpenAPI schemas (paddockd's
    // `rest` module): one definition for both interfaces. Missing JSON fields take their
    // protobuf default, as missing protobuf fields do.
    tonic_prost_build::configure()
        .message_attribute(
            ".paddock.v1",
            "#[derive(serde::Serialize, serde::Deserialize, utoipa::ToSchema)] #[serde(default)]",
        )
        .compile_fds(descriptors)?;
    Ok(())
}
