//! Generates the gRPC code of the chat API from `services/proto`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = "../proto";
    let protos = [
        "chatcluster/chat/v1/messages.proto",
        "chatcluster/auth/v1/auth.proto",
        "chatcluster/groups/v1/groups.proto",
        "chatcluster/dms/v1/dms.proto",
        "chatcluster/servers/v1/servers.proto",
        "chatcluster/gateway/v1/gateway.proto",
        "chatcluster/internal/v1/hint.proto",
    ]
    .map(|p| format!("{root}/{p}"));
    let descriptors = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("chatcluster.bin");
    tonic_prost_build::configure()
        .file_descriptor_set_path(&descriptors)
        .compile_protos(&protos, &[root.to_string()])?;
    println!("cargo:rerun-if-changed={root}");
    Ok(())
}
